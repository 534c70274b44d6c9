// Parses FHIR search parameters into a typed request. Unknown or malformed parameters
// are errors (400), never silently ignored: a clinician must not get a broader result
// than they asked for.
import type { RowScope } from './access-filter.ts';
import { parseDateRange, type DateRange } from './fhir-dates.ts';
import { fail, ok, type RecordError, type Result } from './errors.ts';
import { rowCodes, type IndexedParam } from './search-params.ts';
import { normalizeString } from './search-index.ts';

export const DATE_PREFIXES = ['eq', 'ne', 'gt', 'lt', 'ge', 'le', 'sa', 'eb', 'ap'] as const;
export type DatePrefix = (typeof DATE_PREFIXES)[number];
export interface DatePredicate {
  prefix: DatePrefix;
  range: DateRange;
}

export type Filter =
  | { kind: 'id'; ids: string[] }
  | { kind: 'lastUpdated'; preds: DatePredicate[] }
  | { kind: 'token'; code: string; negate: boolean; values: Array<{ system?: string | null; value?: string }> }
  /** `indexCodes`: the codes whose index rows answer it (search-params.ts rowCodes). */
  | { kind: 'string'; code: string; indexCodes: readonly string[]; mode: 'prefix' | 'exact' | 'contains'; values: string[] }
  | { kind: 'date'; code: string; preds: DatePredicate[] }
  | { kind: 'reference'; code: string; targets: Array<{ exact?: string; idOnly?: string }> };

export interface SortRule {
  key: '_id' | '_lastUpdated' | { code: string; indexCodes: readonly string[]; type: 'date' | 'string' };
  descending: boolean;
}

export interface SearchRequest {
  resourceType: string;
  filters: Filter[];
  count: number;
  offset: number;
  sort: SortRule[];
  total: 'none' | 'accurate';
  summaryCount: boolean;
  /** Set by the access layer, never by a query string. */
  rows?: RowScope;
  /** Set by the access layer: pages ordered by a keyed hash of the id (AccessFilter.orderSalt). */
  orderSalt?: string;
}

export const DEFAULT_COUNT = 20;
export const MAX_COUNT = 1000;
/** Most parameters one search takes (URL, form body, Bundle entry or If-None-Exist alike). */
export const MAX_SEARCH_PARAMS = 100;
export const MAX_OFFSET = 10_000;
/** Result parameters that change nothing about the result set here. */
const IGNORED = new Set(['_pretty', '_format']);

export function parseSearch(
  resourceType: string,
  query: ReadonlyArray<readonly [string, string]>,
  params: ReadonlyMap<string, IndexedParam>,
): Result<SearchRequest> {
  const req: SearchRequest = {
    resourceType,
    filters: [],
    count: DEFAULT_COUNT,
    offset: 0,
    sort: [],
    total: 'none',
    summaryCount: false,
  };
  if (query.length > MAX_SEARCH_PARAMS) return bad(`a search takes at most ${MAX_SEARCH_PARAMS} parameters`);
  for (const [rawKey, raw] of query) {
    // No database text can hold U+0000.
    if (rawKey.includes('\u0000') || raw.includes('\u0000')) return bad('search parameters may not hold U+0000 (NUL)');
    const [code = '', modifier, ...rest] = rawKey.split(':');
    if (rest.length) return bad(`malformed search parameter name ${rawKey}`);
    if (IGNORED.has(code)) {
      if (code === '_format' && !/^(json|application\/(fhir\+)?json)$/.test(raw))
        return fail('not-supported', `_format=${raw} is not supported; this server speaks JSON`, { code: 'not-supported' });
      continue;
    }
    if (modifier !== undefined && code.startsWith('_') && code !== '_id') return bad(`parameter ${code} takes no modifier`);
    switch (code) {
      case '_count': {
        const n = intParam(raw, 0, MAX_COUNT);
        if (n === undefined) return bad(`_count must be an integer from 0 to ${MAX_COUNT}`);
        req.count = n;
        break;
      }
      case '_offset': {
        const n = intParam(raw, 0, MAX_OFFSET);
        if (n === undefined)
          return bad(`_offset must be an integer from 0 to ${MAX_OFFSET}; narrow the search instead of paging this deep`);
        req.offset = n;
        break;
      }
      case '_summary':
        if (raw === 'count') req.summaryCount = true;
        else if (raw !== 'false')
          return fail('not-supported', `_summary=${raw} is not supported (count and false are)`, { code: 'not-supported' });
        break;
      case '_total':
        if (raw === 'accurate' || raw === 'estimate') req.total = 'accurate';
        else if (raw !== 'none') return bad('_total must be none, estimate or accurate');
        break;
      case '_sort': {
        const r = parseSort(raw, params);
        if (!r.ok) return r;
        req.sort = r.value;
        break;
      }
      case '_id':
        if (modifier !== undefined) return bad('_id takes no modifier');
        req.filters.push({ kind: 'id', ids: splitValues(raw) });
        break;
      case '_lastUpdated': {
        const preds = parseDatePredicates(raw, code);
        if (!preds.ok) return preds;
        req.filters.push({ kind: 'lastUpdated', preds: preds.value });
        break;
      }
      default: {
        if (code.startsWith('_'))
          return fail('not-supported', `search parameter ${code} is not supported`, { code: 'not-supported' });
        const def = params.get(code);
        if (!def) return bad(`unknown search parameter ${code} for ${resourceType}`);
        const f = parseFilter(def, modifier, raw);
        if (!f.ok) return f;
        req.filters.push(f.value);
      }
    }
  }
  return ok(req);
}

function parseFilter(def: IndexedParam, modifier: string | undefined, raw: string): Result<Filter> {
  const values = splitValues(raw);
  if (values.length === 0 || values.some((v) => v === '')) return bad(`search parameter ${def.code} has an empty value`);
  switch (def.type) {
    case 'string': {
      if (modifier !== undefined && modifier !== 'exact' && modifier !== 'contains') return badModifier(def, modifier);
      return ok({
        kind: 'string',
        code: def.code,
        indexCodes: rowCodes(def),
        mode: modifier ?? 'prefix',
        values: values.map(normalizeString),
      });
    }
    case 'token': {
      if (modifier !== undefined && modifier !== 'not') return badModifier(def, modifier);
      return ok({
        kind: 'token',
        code: def.code,
        negate: modifier === 'not',
        values: values.map((v) => {
          const bar = indexOfUnescaped(v, '|');
          if (bar < 0) return { value: unescape(v) };
          const system = unescape(v.slice(0, bar));
          const value = unescape(v.slice(bar + 1));
          return { system: system === '' ? null : system, ...(value ? { value } : {}) };
        }),
      });
    }
    case 'date': {
      if (modifier !== undefined) return badModifier(def, modifier);
      const preds = parseDatePredicates(raw, def.code);
      return preds.ok ? ok({ kind: 'date', code: def.code, preds: preds.value }) : preds;
    }
    case 'reference': {
      const typeModifier = modifier !== undefined && /^[A-Z][A-Za-z]+$/.test(modifier) ? modifier : undefined;
      if (modifier !== undefined && !typeModifier) return badModifier(def, modifier);
      return ok({
        kind: 'reference',
        code: def.code,
        targets: values.map((v) => {
          const rel = v.replace(/^https?:\/\/[^?#]*\/(?=[A-Z][A-Za-z]+\/[^/]+$)/, '');
          if (rel.includes('/')) return { exact: rel };
          if (typeModifier) return { exact: `${typeModifier}/${rel}` };
          if (def.code === 'patient') return { exact: `Patient/${rel}` };
          if (def.code === 'encounter') return { exact: `Encounter/${rel}` };
          return { idOnly: rel };
        }),
      });
    }
  }
}

export function parseDatePredicates(raw: string, code: string): Result<DatePredicate[]> {
  const preds: DatePredicate[] = [];
  for (const v of splitValues(raw)) {
    const m = /^(eq|ne|gt|lt|ge|le|sa|eb|ap)?(.*)$/.exec(v)!;
    const range = parseDateRange(m[2]!);
    if (!range)
      return bad(
        `${code}: ${v} is not a valid date (use yyyy, yyyy-mm, yyyy-mm-dd or yyyy-mm-ddThh:mm[:ss][Z|+hh:mm], ` +
          'optionally prefixed by eq, ne, gt, lt, ge, le, sa, eb, ap)',
      );
    preds.push({ prefix: (m[1] as DatePrefix | undefined) ?? 'eq', range });
  }
  return ok(preds);
}

function parseSort(raw: string, params: ReadonlyMap<string, IndexedParam>): Result<SortRule[]> {
  const rules: SortRule[] = [];
  for (const part of raw.split(',')) {
    const descending = part.startsWith('-');
    const code = descending ? part.slice(1) : part;
    if (code === '_id' || code === '_lastUpdated') rules.push({ key: code, descending });
    else {
      const def = params.get(code);
      if (!def || (def.type !== 'date' && def.type !== 'string'))
        return bad(`cannot sort by ${code}: sort by _id, _lastUpdated or a date or string parameter`);
      rules.push({ key: { code, indexCodes: rowCodes(def), type: def.type }, descending });
    }
  }
  return ok(rules);
}

function splitValues(raw: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] === '\\' && i + 1 < raw.length) cur += raw[i]! + raw[++i]!;
    else if (raw[i] === ',') {
      out.push(cur);
      cur = '';
    } else cur += raw[i];
  }
  out.push(cur);
  return out;
}

function indexOfUnescaped(s: string, ch: string): number {
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '\\') i++;
    else if (s[i] === ch) return i;
  }
  return -1;
}

function unescape(s: string): string {
  return s.replace(/\\([\\|,$])/g, '$1');
}

function intParam(raw: string, min: number, max: number): number | undefined {
  if (!/^\d+$/.test(raw)) return undefined;
  const n = Number(raw);
  return n >= min && n <= max ? n : undefined;
}

function bad(message: string): { ok: false; error: RecordError } {
  return fail('bad-request', message, { code: 'invalid' });
}

function badModifier(def: IndexedParam, modifier: string): { ok: false; error: RecordError } {
  return bad(`modifier :${modifier} is not supported for ${def.type} parameter ${def.code}`);
}
