// Masking judged on the whole resource a role sees, not field by field (docs/security.md,
// "What a mask must withstand"): a value masked in one field must not be readable in another
// (narrative, extensions, notes, contained resources, identifiers that embed it), and what
// research and statistics receive is derived per key (ids, version ids, tags, dates).
import { residentIdCheckChar } from '../../region/index.ts';

type Json = Record<string, unknown>;

const RESIDENT_ID_SYSTEM = 'urn:oid:2.16.156.10011.1.3';
const HOME_SHARD_TAG = 'urn:medmesh:home-shard';

/**
 * The fewest candidates a masked resident ID leaves to whoever also knows everything else the
 * role sees and the exact birth date: the 3-digit sequence number with its parity given by the
 * visible sex. A mask shows the division code and nothing of the birth date, sequence number or
 * check character, so no visible field narrows it further.
 */
export const MIN_RESIDENT_ID_CANDIDATES = 500;

/** 18-character GB 11643 IDs with a valid check character, where they stand alone in a string. */
const RESIDENT_ID_IN_TEXT = /(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])/g;
/** Mainland mobile numbers (11 digits from 13x-19x), optionally +86, where they stand alone. */
const MOBILE_IN_TEXT = /(?<!\d)(?:\+?86[\s-]?)?1[3-9]\d(?:[\s-]?\d{4}){2}(?!\d)/g;

export function isResidentId(value: string): boolean {
  if (!/^\d{17}[\dXx]$/.test(value)) return false;
  return residentIdCheckChar(value.slice(0, 17)) === value[17]!.toUpperCase();
}

/** `440305199001011234` -> `440305************`: the division code, nothing of birth date, sequence or check. */
export function maskResidentId(id: string): string {
  const c = [...id];
  return c.length <= 6 ? '*'.repeat(c.length) : `${c.slice(0, 6).join('')}${'*'.repeat(c.length - 6)}`;
}

/** The resident IDs among a resource's identifiers (by system, or any value of GB 11643 form). */
export function residentIdsOf(identifiers: unknown): string[] {
  const out: string[] = [];
  for (const i of Array.isArray(identifiers) ? identifiers : [])
    if (isObj(i) && typeof i.value === 'string' && (i.system === RESIDENT_ID_SYSTEM || isResidentId(i.value))) out.push(i.value);
  return out;
}

/**
 * Whether `value` carries part of a resident ID beyond its division code: 8 or more
 * consecutive characters of it that reach into the birth date, sequence or check character
 * (an insurance card number that is the resident ID, or embeds it, or drops its prefix).
 */
export function embedsResidentId(value: string, residentIds: readonly string[]): boolean {
  for (const rid of residentIds)
    for (let k = 0; k + 8 <= rid.length; k++) if (k + 8 > 6 && value.includes(rid.slice(k, k + 8))) return true;
  return false;
}

/** Masks an identifier that embeds a resident ID: a leading division code may stay, nothing else. */
export function maskEmbedding(value: string, residentIds: readonly string[]): string {
  const prefix = residentIds.map((r) => r.slice(0, 6)).find((d) => d.length === 6 && value.startsWith(d));
  return prefix ? `${prefix}${'*'.repeat([...value].length - 6)}` : '*'.repeat([...value].length);
}

/** Every string leaf under `v` whose key names data rather than a code (what a mask may hide). */
export function secretLeaves(v: unknown, key = ''): string[] {
  if (typeof v === 'string') return SECRET_KEYS.has(key) || key === '' ? [v] : [];
  if (Array.isArray(v)) return v.flatMap((x) => secretLeaves(x, key));
  if (!isObj(v)) return [];
  return Object.entries(v).flatMap(([k, x]) => (k === 'extension' || k === 'url' ? [] : secretLeaves(x, k)));
}
const SECRET_KEYS = new Set(['value', 'text', 'family', 'given', 'line', 'postalCode', 'district', 'city', 'div']);

/**
 * Strings worth hiding elsewhere: long enough not to blot out ordinary words, and not a code
 * (`male`, `home`: a hashed code would otherwise be scrubbed out of every other field).
 */
export function isSecret(s: string): boolean {
  const t = s.trim();
  if (/^[a-z][a-z-]*$/.test(t)) return false;
  return /\p{Script=Han}/u.test(t) ? [...t].length >= 2 : t.length >= 4;
}

/**
 * Replaces every occurrence of a secret in every string of `resource` by asterisks, except in
 * the top-level fields listed in `skip` (the transformed ones: safe by construction).
 */
export function scrubSecrets(resource: Json, secrets: readonly string[], skip: ReadonlySet<string>): Json {
  if (secrets.length === 0) return resource;
  const sorted = [...secrets].sort((a, b) => b.length - a.length);
  return mapFields(resource, skip, (s) => {
    let out = s;
    for (const secret of sorted) if (out.includes(secret)) out = out.replaceAll(secret, '*'.repeat([...secret].length));
    return out;
  });
}

/** Masks resident IDs and mobile numbers wherever they appear in a string (free text, extensions, references). */
export function scrubPatterns(resource: Json, what: { residentIds: boolean; phones: boolean }, skip: ReadonlySet<string>): Json {
  if (!what.residentIds && !what.phones) return resource;
  return mapFields(resource, skip, (s) => {
    let out = s;
    if (what.residentIds && /\d{17}/.test(out))
      out = out.replace(RESIDENT_ID_IN_TEXT, (m) => (isResidentId(m) ? maskResidentId(m) : m));
    if (what.phones && /1[3-9]/.test(out))
      out = out.replace(MOBILE_IN_TEXT, (m) => {
        const d = m.replace(/\D/g, '').replace(/^86(?=\d{11}$)/, '');
        return `${d.slice(0, 3)}****${d.slice(-4)}`;
      });
    return out;
  });
}

/** FHIR elements of type instant: generalized, they stay full instants (the first of the month). */
const INSTANT_KEYS = new Set(['issued', 'lastUpdated', 'recorded', 'timestamp', 'when']);
const DATE_TIME = /^(\d{4})-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})?)?)?$/;

/**
 * A date, dateTime or instant cut to its month (UTC for values with a time, so a search by
 * month boundaries reveals no more than the answer shows). Other strings are returned as they are.
 */
export function generalizeDate(s: string, key: string): string {
  const m = DATE_TIME.exec(s);
  if (!m) return s;
  let [y, mo] = [Number(m[1]), Number(m[2])];
  if (m[4] !== undefined && m[7] !== undefined) {
    const t = new Date(s);
    if (!Number.isNaN(t.getTime())) [y, mo] = [t.getUTCFullYear(), t.getUTCMonth() + 1];
  }
  const month = `${String(y).padStart(4, '0')}-${String(mo).padStart(2, '0')}`;
  return INSTANT_KEYS.has(key) && m[4] !== undefined ? `${month}-01T00:00:00Z` : month;
}

/** Every date under `v` generalized to its month. */
export function generalizeDates(v: unknown, key = ''): unknown {
  if (typeof v === 'string') return generalizeDate(v, key);
  if (Array.isArray(v)) return v.map((x) => generalizeDates(x, key));
  if (!isObj(v)) return v;
  const out: Json = {};
  for (const [k, x] of Object.entries(v)) out[k] = generalizeDates(x, k);
  return out;
}

/**
 * meta for research and statistics: the version id keyed like the id, lastUpdated cut to its
 * month, the home shard (a city) without the placement reason (which names the district),
 * profiles and security labels by code; no other tags, no source.
 */
export function deidentifiedMeta(meta: unknown, type: string, id: string, pseudonym: (v: string) => string): Json | undefined {
  if (!isObj(meta)) return undefined;
  const out: Json = {};
  if (typeof meta.versionId === 'string') out.versionId = pseudonym(`${type}/${id}/_history/${meta.versionId}`);
  if (typeof meta.lastUpdated === 'string') out.lastUpdated = generalizeDate(meta.lastUpdated, 'lastUpdated');
  if (Array.isArray(meta.profile)) out.profile = meta.profile.filter((p) => typeof p === 'string');
  const codes = (list: unknown, keep: (c: Json) => boolean) =>
    (Array.isArray(list) ? list : []).flatMap((c) =>
      isObj(c) && keep(c) && typeof c.code === 'string'
        ? [{ ...(typeof c.system === 'string' ? { system: c.system } : {}), code: c.code }]
        : [],
    );
  const tag = codes(meta.tag, (c) => c.system === HOME_SHARD_TAG);
  if (tag.length) out.tag = tag;
  const security = codes(meta.security, () => true);
  if (security.length) out.security = security;
  return Object.keys(out).length ? out : undefined;
}

/**
 * Attachments keep only their content type: their data, hash, size, url and title are the
 * identified document itself or point at it, and none of them can be masked.
 */
export function reduceAttachments(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(reduceAttachments);
  if (!isObj(v)) return v;
  if (typeof v.contentType === 'string' && ('data' in v || 'url' in v || 'hash' in v || 'size' in v || 'title' in v))
    return { contentType: v.contentType };
  const out: Json = {};
  for (const [k, x] of Object.entries(v)) out[k] = reduceAttachments(x);
  return out;
}

/** Replaces each real id (and version id) left in any string by its keyed form. */
export function replaceIds(v: unknown, ids: ReadonlyMap<string, string>): unknown {
  const real = [...ids.keys()].filter((id) => id.length >= 8).sort((a, b) => b.length - a.length);
  if (real.length === 0) return v;
  return mapStrings(v, (s) => {
    let out = s;
    for (const id of real) if (out.includes(id)) out = out.replaceAll(id, ids.get(id)!);
    return out;
  });
}

/** `Type/id` (or an absolute URL ending so) of every reference under `v`. */
export function referencesIn(v: unknown, out: Array<[string, string]> = []): Array<[string, string]> {
  if (Array.isArray(v)) for (const x of v) referencesIn(x, out);
  else if (isObj(v))
    for (const [k, x] of Object.entries(v)) {
      if (k === 'reference' && typeof x === 'string') {
        const m = REFERENCE.exec(x);
        if (m) out.push([m[1]!, m[2]!]);
      } else referencesIn(x, out);
    }
  return out;
}
/** `Type/id`, optionally after a base URL and before `/_history/vid`. */
export const REFERENCE = /(?:^|\/)([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[A-Za-z0-9\-.]{1,64})?$/;

function mapFields(resource: Json, skip: ReadonlySet<string>, f: (s: string) => string): Json {
  const out: Json = {};
  for (const [k, x] of Object.entries(resource)) out[k] = skip.has(k) ? x : mapStrings(x, f);
  return out;
}

export function mapStrings(v: unknown, f: (s: string) => string): unknown {
  if (typeof v === 'string') return f(v);
  if (Array.isArray(v)) return v.map((x) => mapStrings(x, f));
  if (!isObj(v)) return v;
  const out: Json = {};
  for (const [k, x] of Object.entries(v)) out[k] = mapStrings(x, f);
  return out;
}

export const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
