// Dynamic masking: applies field transforms to a resource after the access decision.
// Transforms never throw on odd data: whatever they do not understand, they remove.
import type { Resource } from '@medplum/fhirtypes';
import type { Transform } from './policy.ts';
import {
  deidentifiedMeta,
  embedsResidentId,
  generalizeDates,
  isObj,
  isResidentId,
  isSecret,
  maskEmbedding,
  maskResidentId,
  reduceAttachments,
  REFERENCE,
  referencesIn,
  replaceIds,
  residentIdsOf,
  scrubPatterns,
  scrubSecrets,
  secretLeaves,
} from './whole-resource.ts';

export const AGE_BAND_URL = 'https://medmesh.example/fhir/StructureDefinition/age-band';
export const DIVISION_SYSTEM = 'urn:medmesh:division-code';
export const PSEUDONYM_SYSTEM = 'urn:medmesh:pseudonym';
const RESIDENT_ID_SYSTEM = 'urn:oid:2.16.156.10011.1.3';
const HOME_SHARD_TAG = 'urn:medmesh:home-shard';

export interface MaskKeys {
  /** Keyed irreversible pseudonym (HMAC-SM3 under the project's key), hex. */
  pseudonym(value: string): string;
  now: Date;
}

type Json = Record<string, unknown>;

/** What a response needs beyond a resource's own plan (see whole-resource.ts). */
export interface MaskOptions {
  /** The plan for a contained resource of `type`; undefined: the caller may not see that type (it is removed). */
  planOf?(type: string): ReadonlyMap<string, Transform> | undefined;
  /** Masks resident IDs and mobile numbers in every string: for callers who see them masked on Patient. */
  scrub?: { residentIds: boolean; phones: boolean };
  /** research and statistics: meta, dates, attachments and every leftover real id derived per key. */
  deidentify?: boolean;
  /** A contained resource: its id and local references are keyed with their `#`. */
  contained?: boolean;
}

/**
 * Applies `plan` (field -> transform) and returns a new resource plus the fields it changed.
 * Then the whole resource is judged: a field's hidden values are blotted out wherever else
 * they appear, narrative goes once anything is masked, contained resources get their own
 * type's plan, and a resident ID's birth date is not left beside its mask (maskPlan).
 */
export function maskResource(
  resource: Resource,
  plan: ReadonlyMap<string, Transform>,
  keys: MaskKeys,
  opts: MaskOptions = {},
): { resource: Resource; changed: string[] } {
  const original = resource as unknown as Json;
  const scrub = opts.scrub ?? { residentIds: false, phones: false };
  const hasContained = Array.isArray(original.contained) && original.contained.length > 0;
  if (plan.size === 0 && !opts.deidentify && !scrub.residentIds && !scrub.phones && !hasContained)
    return { resource, changed: [] };
  const out: Json = { ...original };
  const changed: string[] = [];
  const secrets = new Set<string>();
  const residentIds = residentIdsOf(original.identifier);
  const own = (field: string) => plan.has(field) && plan.get(field) !== 'keep';
  for (const [field, t] of plan) {
    if (t === 'keep') continue;
    if (field === 'references') {
      // Contained resources follow their own plan; fields with a transform of their own keep it.
      for (const k of Object.keys(out))
        if (k !== 'id' && k !== 'meta' && k !== 'contained' && !own(k)) out[k] = rewriteReferences(out[k], keys);
      changed.push(`references:${t}`);
      continue;
    }
    if (!(field in out) && !(`_${field}` in out)) continue;
    const next =
      field === 'id'
        ? t === 'pseudonym'
          ? keys.pseudonym(opts.contained ? `#${String(original.id)}` : `${resource.resourceType}/${resource.id ?? ''}`)
          : undefined
        : apply(t, out[field], keys, residentIds);
    if (field !== 'id') for (const s of hiddenBy(field, original[field], next)) secrets.add(s);
    if (next === undefined) delete out[field];
    else out[field] = next;
    // A primitive's extensions (birthTime on birthDate, ...) go with the value they describe.
    delete out[`_${field}`];
    const born = original.birthDate;
    if (t === 'age-band' && typeof born === 'string') {
      const band = ageBand(born, keys.now);
      if (band) out.extension = [...((out.extension as unknown[] | undefined) ?? []), { url: AGE_BAND_URL, valueString: band }];
    }
    changed.push(`${field}:${t}`);
  }
  // Narrative repeats the data (names, identifiers, birth date, address) and cannot be masked;
  // so does the home shard's placement reason (the resident ID's division, the home's GeoHash).
  if (changed.length && out.text !== undefined && !plan.has('text')) {
    delete out.text;
    changed.push('text:remove');
  }
  if (changed.length && isObj(out.meta) && Array.isArray(out.meta.tag))
    out.meta = {
      ...out.meta,
      tag: out.meta.tag.map((t: unknown) => (isObj(t) && t.system === HOME_SHARD_TAG ? pick(t, ['system', 'code']) : t)),
    };
  if (hasContained) {
    const kept = (original.contained as unknown[]).flatMap((c) => {
      if (!isObj(c) || typeof c.resourceType !== 'string') return [];
      const p = opts.planOf?.(c.resourceType);
      if (!p) return [];
      return [maskResource(c as unknown as Resource, p, keys, { ...opts, contained: true }).resource];
    });
    if (kept.length) out.contained = kept;
    else delete out.contained;
    if (kept.length !== (original.contained as unknown[]).length) changed.push('contained:remove');
  }
  let masked = opts.deidentify ? deidentify(out, original, keys, opts.contained ?? false) : out;
  // What the transforms produced is safe by construction; everything else is searched for what they hid.
  const transformed = new Set(['resourceType', 'id', ...[...plan].filter(([, t]) => t !== 'keep').map(([f]) => f)]);
  transformed.delete('references');
  masked = scrubSecrets(masked, [...secrets], transformed);
  masked = scrubPatterns(masked, scrub, transformed);
  return { resource: masked as unknown as Resource, changed };
}

/** research and statistics: what the plan left of the real record's ids, versions, dates and attachments. */
function deidentify(out: Json, original: Json, keys: MaskKeys, contained: boolean): Json {
  const type = String(original.resourceType);
  const id = typeof original.id === 'string' ? original.id : '';
  const rest: Json = { ...out };
  delete rest.meta;
  let body: unknown = reduceAttachments(generalizeDates(rest));
  // Any real id still in a string (an attachment URL, an extension, a logical identifier) becomes its keyed form.
  const ids = new Map<string, string>();
  if (id) ids.set(id, contained ? keys.pseudonym(`#${id}`) : keys.pseudonym(`${type}/${id}`));
  for (const [t, ref] of referencesIn(original)) if (!ids.has(ref)) ids.set(ref, keys.pseudonym(`${t}/${ref}`));
  const meta = contained ? undefined : deidentifiedMeta(original.meta, type, id, (v) => keys.pseudonym(v));
  if (isObj(original.meta) && typeof original.meta.versionId === 'string' && typeof meta?.versionId === 'string')
    ids.set(original.meta.versionId, meta.versionId);
  body = replaceIds(body, ids);
  return { ...(body as Json), ...(meta ? { meta } : {}) };
}

/** The values a transform hid: string leaves of the input that the output does not show. */
function hiddenBy(field: string, before: unknown, after: unknown): string[] {
  const shown = new Set(secretLeaves(after));
  const out: string[] = [];
  for (const s of secretLeaves(before)) {
    if (shown.has(s)) continue;
    if (isSecret(s)) out.push(s);
    // The same value as it is often written elsewhere: a birth date without dashes, a phone by its digits.
    if (field === 'birthDate' && /^\d{4}-\d{2}-\d{2}/.test(s)) out.push(s.slice(0, 10).replaceAll('-', ''));
    const digits = s.replace(/\D/g, '');
    if (field === 'telecom' && digits.length >= 7 && digits !== s) out.push(digits);
  }
  return out;
}

function apply(t: Exclude<Transform, 'keep'>, value: unknown, keys: MaskKeys, residentIds: readonly string[]): unknown {
  switch (t) {
    case 'remove':
      return undefined;
    case 'partial-name':
      return list(value).flatMap((n) =>
        isObj(n) ? [{ ...(typeof n.use === 'string' ? { use: n.use } : {}), text: maskName(fullName(n)) }] : [],
      );
    case 'partial-id':
      return list(value).flatMap((i) =>
        isObj(i) && typeof i.value === 'string'
          ? [{ ...pick(i, ['use', 'system', 'type']), value: maskIdentifier(i.system, i.value, residentIds) }]
          : [],
      );
    case 'partial-phone':
      return list(value).flatMap((c) =>
        isObj(c) && typeof c.value === 'string'
          ? [{ ...pick(c, ['system', 'use']), value: c.system === 'email' ? maskEmail(c.value) : maskPhone(c.value) }]
          : [],
      );
    case 'partial-address':
      return list(value).flatMap((a) => (isObj(a) ? [pick(a, ['use', 'type', 'district', 'city', 'state', 'country'])] : []));
    case 'city-only':
      return list(value).flatMap((a) => (isObj(a) ? [pick(a, ['city', 'state', 'country'])] : []));
    case 'pseudonym':
      if (typeof value === 'string') return keys.pseudonym(value);
      return list(value).flatMap((i) =>
        isObj(i) && typeof i.value === 'string'
          ? [{ system: PSEUDONYM_SYSTEM, value: keys.pseudonym(`${typeof i.system === 'string' ? i.system : ''}|${i.value}`) }]
          : [],
      );
    case 'birth-year':
      return typeof value === 'string' && /^\d{4}/.test(value) ? value.slice(0, 4) : undefined;
    case 'age-band':
      return undefined;
    case 'division-4': {
      const codes = list(value).flatMap((i) =>
        isObj(i) && typeof i.value === 'string' && (i.system === RESIDENT_ID_SYSTEM || /^\d{17}[\dX]$/.test(i.value))
          ? [i.value.slice(0, 4)]
          : [],
      );
      return codes.length ? [...new Set(codes)].map((c) => ({ system: DIVISION_SYSTEM, value: c })) : undefined;
    }
  }
}

/** `张小明` -> `张*明`, `张三` -> `张*`, `John Smith` -> `J*** S****`. */
export function maskName(name: string): string {
  const chars = [...name.trim()];
  if (chars.some((c) => /\p{Script=Han}/u.test(c))) {
    if (chars.length <= 1) return '*';
    if (chars.length === 2) return `${chars[0]!}*`;
    return `${chars[0]!}${'*'.repeat(chars.length - 2)}${chars[chars.length - 1]!}`;
  }
  return name
    .trim()
    .split(/\s+/)
    .map((w) => (w ? `${[...w][0]!}${'*'.repeat([...w].length - 1)}` : w))
    .join(' ');
}

/**
 * One identifier, judged with the others of its resource: a resident ID shows its division code
 * only (its other digits are the birth date, the sequence number and a check character, which
 * the birth date and sex beside it would otherwise restore); an identifier that embeds a
 * resident ID shows no more of it; any other keeps its last 4 characters when 8 or more stay
 * hidden, its last 2 when 4 or more do, else nothing.
 */
export function maskIdentifier(system: unknown, value: string, residentIds: readonly string[]): string {
  if (system === RESIDENT_ID_SYSTEM || isResidentId(value)) return maskResidentId(value);
  if (embedsResidentId(value, residentIds)) return maskEmbedding(value, residentIds);
  return maskId(value);
}

/** `HZ2024000123` -> `********0123`; shorter ids keep their last two characters while 4 or more stay hidden. */
export function maskId(id: string): string {
  const c = [...id];
  if (c.length >= 12) return `${'*'.repeat(c.length - 4)}${c.slice(-4).join('')}`;
  if (c.length >= 6) return `${'*'.repeat(c.length - 2)}${c.slice(-2).join('')}`;
  return '*'.repeat(c.length);
}

/** `13812345678` -> `138****5678`; other numbers keep their first 3 and last 4 digits. */
export function maskPhone(phone: string): string {
  let digits = phone.replace(/\D/g, '');
  if (digits.length === 13 && digits.startsWith('86')) digits = digits.slice(2); // +86 mobile
  if (digits.length >= 8) return `${digits.slice(0, 3)}${'*'.repeat(digits.length - 7)}${digits.slice(-4)}`;
  return '*'.repeat(digits.length);
}

function maskEmail(email: string): string {
  const at = email.indexOf('@');
  return at > 0 ? `${email[0]!}***${email.slice(at)}` : '***';
}

/** Five-year bands, `60-64`; undefined for an unparseable or future date. */
export function ageBand(birthDate: string, now: Date): string | undefined {
  const m = /^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?/.exec(birthDate);
  if (!m) return undefined;
  const [y, mo = 1, d = 1] = [Number(m[1]), Number(m[2] ?? 1), Number(m[3] ?? 1)];
  let age = now.getUTCFullYear() - y;
  if (now.getUTCMonth() + 1 < mo || (now.getUTCMonth() + 1 === mo && now.getUTCDate() < d)) age -= 1;
  if (age < 0) return undefined;
  const lo = Math.floor(age / 5) * 5;
  return `${lo}-${lo + 4}`;
}

function fullName(n: Json): string {
  if (typeof n.text === 'string' && n.text) return n.text;
  const family = typeof n.family === 'string' ? n.family : '';
  const given = Array.isArray(n.given) ? n.given.filter((g): g is string => typeof g === 'string') : [];
  const cjk = /\p{Script=Han}/u.test(family + given.join(''));
  return cjk ? `${family}${given.join('')}` : [...given, family].filter(Boolean).join(' ');
}

function rewriteReferences(v: unknown, keys: MaskKeys): unknown {
  if (Array.isArray(v)) return v.map((x) => rewriteReferences(x, keys));
  if (!isObj(v)) return v;
  const out: Json = {};
  for (const [k, x] of Object.entries(v)) {
    if (k === 'reference' && typeof x === 'string') {
      // Local references to contained resources keep their `#` (the contained id is keyed alike).
      const m = REFERENCE.exec(x);
      out[k] = x.startsWith('#')
        ? `#${keys.pseudonym(x)}`
        : m
          ? `${m[1]!}/${keys.pseudonym(`${m[1]!}/${m[2]!}`)}`
          : keys.pseudonym(x);
    } else if (k === 'display')
      continue; // a display text next to a reference usually names the person
    else if (k === 'identifier' && isObj(x) && typeof x.value === 'string')
      // A logical reference by identifier (subject.identifier = the resident ID) is keyed like identifiers.
      out[k] = { system: PSEUDONYM_SYSTEM, value: keys.pseudonym(`${typeof x.system === 'string' ? x.system : ''}|${x.value}`) };
    else out[k] = rewriteReferences(x, keys);
  }
  return out;
}

const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : v === undefined ? [] : [v]);
function pick(o: Json, keys: string[]): Json {
  const out: Json = {};
  for (const k of keys) if (o[k] !== undefined) out[k] = o[k];
  return out;
}
