// Dynamic masking: applies field transforms to a resource after the access decision.
// Transforms never throw on odd data: whatever they do not understand, they remove.
import type { Resource } from '@medplum/fhirtypes';
import type { Transform } from './policy.ts';

export const AGE_BAND_URL = 'https://medmesh.example/fhir/StructureDefinition/age-band';
export const DIVISION_SYSTEM = 'urn:medmesh:division-code';
export const PSEUDONYM_SYSTEM = 'urn:medmesh:pseudonym';
const RESIDENT_ID_SYSTEM = 'urn:oid:2.16.156.10011.1.3';

export interface MaskKeys {
  /** Keyed irreversible pseudonym (HMAC-SM3 under the project's key), hex. */
  pseudonym(value: string): string;
  now: Date;
}

type Json = Record<string, unknown>;

/** Applies `plan` (field -> transform) and returns a new resource plus the fields it changed. */
export function maskResource(
  resource: Resource,
  plan: ReadonlyMap<string, Transform>,
  keys: MaskKeys,
): { resource: Resource; changed: string[] } {
  if (plan.size === 0) return { resource, changed: [] };
  const out: Json = { ...(resource as unknown as Json) };
  const changed: string[] = [];
  for (const [field, t] of plan) {
    if (t === 'keep') continue;
    if (field === 'references') {
      const rewritten = rewriteReferences(out, keys);
      for (const k of Object.keys(out)) if (k !== 'id' && k !== 'meta') out[k] = (rewritten as Json)[k];
      changed.push(`references:${t}`);
      continue;
    }
    if (!(field in out)) continue;
    const next =
      field === 'id'
        ? t === 'pseudonym'
          ? keys.pseudonym(`${resource.resourceType}/${resource.id ?? ''}`)
          : undefined
        : apply(t, out[field], keys);
    if (next === undefined) delete out[field];
    else out[field] = next;
    const born = (resource as unknown as Json).birthDate;
    if (t === 'age-band' && typeof born === 'string') {
      const band = ageBand(born, keys.now);
      if (band) out.extension = [...((out.extension as unknown[] | undefined) ?? []), { url: AGE_BAND_URL, valueString: band }];
    }
    changed.push(`${field}:${t}`);
  }
  return { resource: out as unknown as Resource, changed };
}

function apply(t: Exclude<Transform, 'keep'>, value: unknown, keys: MaskKeys): unknown {
  switch (t) {
    case 'remove':
      return undefined;
    case 'partial-name':
      return list(value).flatMap((n) =>
        isObj(n) ? [{ ...(typeof n.use === 'string' ? { use: n.use } : {}), text: maskName(fullName(n)) }] : [],
      );
    case 'partial-id':
      return list(value).flatMap((i) =>
        isObj(i) && typeof i.value === 'string' ? [{ ...pick(i, ['use', 'system', 'type']), value: maskId(i.value) }] : [],
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

/** `440305199001011234` -> `440305********1234`; short ids keep their last two characters. */
export function maskId(id: string): string {
  const c = [...id];
  if (c.length >= 12) return `${c.slice(0, 6).join('')}${'*'.repeat(c.length - 10)}${c.slice(-4).join('')}`;
  if (c.length <= 2) return '*'.repeat(c.length);
  return `${'*'.repeat(c.length - 2)}${c.slice(-2).join('')}`;
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
      const m = /^([A-Z][A-Za-z]+)\/([^/]+)$/.exec(x);
      out[k] = m ? `${m[1]!}/${keys.pseudonym(x)}` : keys.pseudonym(x);
    } else if (k === 'display')
      continue; // a display text next to a reference usually names the person
    else out[k] = rewriteReferences(x, keys);
  }
  return out;
}

const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : v === undefined ? [] : [v]);
function pick(o: Json, keys: string[]): Json {
  const out: Json = {};
  for (const k of keys) if (o[k] !== undefined) out[k] = o[k];
  return out;
}
