// Turns a resource into search index rows by evaluating each indexed parameter's FHIRPath
// (through its compiled accessor when it has one: search-paths.ts).
import { evalFhirPathTyped, toTypedValue, type TypedValue } from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';
import { parseDateRange } from './fhir-dates.ts';
import type { IndexedParam } from './search-params.ts';

export interface IndexRows {
  tokens: Array<{ code: string; system: string | null; value: string }>;
  strings: Array<{ code: string; value: string }>;
  /** lo/hi are ISO instants or +-infinity (open Period ends). */
  dates: Array<{ code: string; lo: string; hi: string }>;
  references: Array<{ code: string; target: string }>;
}

/** The index of a tombstone: nothing. */
export const EMPTY_INDEX: IndexRows = { tokens: [], strings: [], dates: [], references: [] };

/** Case- and accent-insensitive form used for string search (FHIR: "starts with, case and accent insensitive"). */
export function normalizeString(s: string): string {
  return s.normalize('NFKD').replace(/\p{M}/gu, '').toLowerCase().trim();
}

type Obj = Record<string, unknown>;
const HAN_ONLY = /^\p{Script=Han}+$/u;
const str = (v: unknown): string | undefined => (typeof v === 'string' && v.length > 0 ? v : undefined);
const strs = (v: unknown): string[] =>
  Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string' && x.length > 0) : [];

export function extractIndex(resource: Resource, params: ReadonlyMap<string, IndexedParam>): IndexRows {
  const rows: IndexRows = { tokens: [], strings: [], dates: [], references: [] };
  let root: TypedValue[] | undefined;
  for (const p of params.values()) {
    const values = p.extract ? p.extract(resource) : evalFhirPathTyped(p.atom, (root ??= [toTypedValue(resource)]));
    for (const { type, value } of values) {
      switch (p.type) {
        case 'token':
          addTokens(rows, p.code, type, value);
          break;
        case 'string':
          addStrings(rows, p.code, type, value, p.nameParts !== undefined);
          break;
        case 'date':
          addDate(rows, p.code, type, value);
          break;
        case 'reference': {
          const ref = str((value as Obj | undefined)?.reference);
          if (ref && !ref.startsWith('#')) rows.references.push({ code: p.code, target: ref });
          break;
        }
      }
    }
  }
  return dedupe(rows);
}

function addTokens(rows: IndexRows, code: string, type: string, value: unknown): void {
  const push = (system: unknown, v: unknown): void => {
    const s = typeof v === 'boolean' ? String(v) : str(v);
    if (s !== undefined) rows.tokens.push({ code, system: str(system) ?? null, value: s });
  };
  const o = value as Obj;
  switch (type) {
    case 'CodeableConcept':
      for (const c of (o.coding as Obj[] | undefined) ?? []) push(c.system, c.code);
      break;
    case 'Coding':
      push(o.system, o.code);
      break;
    case 'Identifier':
      push(o.system, o.value);
      break;
    case 'ContactPoint':
      push(o.system, o.value);
      break;
    default:
      push(null, value);
  }
}

/** `partsElsewhere`: a HumanName's family and given are indexed under their own codes (IndexedParam.nameParts). */
function addStrings(rows: IndexRows, code: string, type: string, value: unknown, partsElsewhere: boolean): void {
  const add = (s: string | undefined): void => {
    if (s) rows.strings.push({ code, value: normalizeString(s) });
  };
  const o = value as Obj;
  if (type === 'HumanName') {
    const family = str(o.family);
    const given = strs(o.given);
    [...(partsElsewhere ? [] : [family, ...given]), ...strs(o.prefix), ...strs(o.suffix), str(o.text)].forEach(add);
    // Whole-name forms: family first without a space (中文 张三) and given-first (John Smith);
    // a name written in Chinese characters is never given-first, so it has no such row.
    if (family && given.length) {
      add(family + given.join(''));
      if (!HAN_ONLY.test(family) || !given.every((g) => HAN_ONLY.test(g))) add(`${given.join(' ')} ${family}`);
    }
  } else if (type === 'Address') {
    [...strs(o.line), str(o.city), str(o.district), str(o.state), str(o.postalCode), str(o.country), str(o.text)].forEach(add);
  } else add(str(value));
}

function addDate(rows: IndexRows, code: string, type: string, value: unknown): void {
  if (type === 'Period') {
    const o = value as Obj;
    const start = str(o.start) ? parseDateRange(o.start as string) : undefined;
    const end = str(o.end) ? parseDateRange(o.end as string) : undefined;
    if (start || end)
      rows.dates.push({ code, lo: start?.lo.toISOString() ?? '-infinity', hi: end?.hi.toISOString() ?? 'infinity' });
    return;
  }
  const r = typeof value === 'string' ? parseDateRange(value) : undefined;
  if (r) rows.dates.push({ code, lo: r.lo.toISOString(), hi: r.hi.toISOString() });
}

function dedupe(rows: IndexRows): IndexRows {
  // Plain string keys, cheaper than JSON per row. Codes come from our table (no NUL), and the
  // token system carries its length, so no two different rows share a key.
  const uniq = <T>(xs: T[], key: (x: T) => string): T[] => {
    if (xs.length < 2) return xs;
    const seen = new Set<string>();
    return xs.filter((x) => {
      const k = key(x);
      return seen.has(k) ? false : (seen.add(k), true);
    });
  };
  return {
    tokens: uniq(rows.tokens, (t) => `${t.code}\0${t.system === null ? -1 : t.system.length}:${t.system ?? ''}${t.value}`),
    strings: uniq(rows.strings, (t) => `${t.code}\0${t.value}`),
    dates: uniq(rows.dates, (t) => `${t.code}\0${t.lo}\0${t.hi}`),
    references: uniq(rows.references, (t) => `${t.code}\0${t.target}`),
  };
}
