// Builds one parameterized SQL query from a SearchRequest. Values only ever travel as
// parameters; identifiers come from fixed tables below.
import { rowScopeSql } from './access-filter.ts';
import type { DatePredicate, Filter, SearchRequest, SortRule } from './search-query.ts';

export interface SqlQuery {
  text: string;
  params: unknown[];
}

class Params {
  readonly values: unknown[] = [];
  add(v: unknown): string {
    this.values.push(v);
    return `$${this.values.length}`;
  }
}

const OWNER = (alias: string) => `${alias}.resource_type = c.resource_type AND ${alias}.resource_id = c.id`;

export function buildSearchSql(req: SearchRequest, mode: 'page' | 'count'): SqlQuery {
  const p = new Params();
  const where = [`c.resource_type = ${p.add(req.resourceType)}`, 'NOT c.deleted'];
  for (const f of req.filters) where.push(filterSql(f, p));
  // The caller's row scope narrows the page and the count alike: a total never counts hidden rows.
  if (req.rows && req.rows.kind !== 'all') where.push(rowScopeSql(req.rows, 'c', (v) => p.add(v)));
  if (mode === 'count')
    return { text: `SELECT count(*)::int AS n FROM resource_current c WHERE ${where.join(' AND ')}`, params: p.values };
  const tie = req.orderSalt !== undefined ? `md5(${p.add(req.orderSalt)}::text || c.id) ASC` : 'c.id ASC';
  const order = [...req.sort.map((s) => sortSql(s, p)), tie];
  if (req.sort.length === 0 && req.orderSalt === undefined) order.unshift('c.last_updated ASC');
  // One row more than asked tells whether a next page exists.
  const text = `SELECT c.id, c.version_id, c.last_updated, c.content FROM resource_current c
    WHERE ${where.join(' AND ')} ORDER BY ${order.join(', ')} LIMIT ${p.add(req.count + 1)} OFFSET ${p.add(req.offset)}`;
  return { text, params: p.values };
}

function filterSql(f: Filter, p: Params): string {
  switch (f.kind) {
    case 'id':
      return `c.id = ANY(${p.add(f.ids)}::text[])`;
    case 'lastUpdated': {
      const preds = f.preds.map((d) => datePredSql(d, 'c.last_updated', "c.last_updated + interval '1 millisecond'", p));
      return `(${preds.join(' OR ')})`;
    }
    case 'token': {
      const alts = f.values.map((v) => {
        const parts: string[] = [];
        if (v.value !== undefined) parts.push(`t.value = ${p.add(v.value)}`);
        if (v.system === null) parts.push('t.system IS NULL');
        else if (v.system !== undefined) parts.push(`t.system = ${p.add(v.system)}`);
        return `(${parts.join(' AND ')})`;
      });
      const exists =
        'EXISTS (SELECT 1 FROM search_token t ' + `WHERE ${OWNER('t')} AND t.code = ${p.add(f.code)} AND (${alts.join(' OR ')}))`;
      return f.negate ? `NOT ${exists}` : exists;
    }
    case 'string': {
      const alts = f.values.map((v) => {
        if (f.mode === 'exact') return `s.value = ${p.add(v)}`;
        const pattern = escapeLike(v);
        return `s.value LIKE ${p.add(f.mode === 'prefix' ? `${pattern}%` : `%${pattern}%`)}`;
      });
      return (
        `EXISTS (SELECT 1 FROM search_string s WHERE ${OWNER('s')} AND ${codeSql('s', f.indexCodes, p)} ` +
        `AND (${alts.join(' OR ')}))`
      );
    }
    case 'date':
      return (
        `EXISTS (SELECT 1 FROM search_date d WHERE ${OWNER('d')} AND d.code = ${p.add(f.code)} ` +
        `AND (${f.preds.map((d) => datePredSql(d, 'd.lo', 'd.hi', p)).join(' OR ')}))`
      );
    case 'reference': {
      const alts = f.targets.map((t) =>
        t.exact !== undefined ? `r.target = ${p.add(t.exact)}` : `r.target LIKE ${p.add(`%/${escapeLike(t.idOnly ?? '')}`)}`,
      );
      return (
        `EXISTS (SELECT 1 FROM search_reference r WHERE ${OWNER('r')} AND r.code = ${p.add(f.code)} ` +
        `AND (${alts.join(' OR ')}))`
      );
    }
  }
}

/** FHIR date comparison of a target range [lo, hi) with the search value's range. */
function datePredSql(d: DatePredicate, lo: string, hi: string, p: Params): string {
  // Parameters are added only when used: an unused one has no type and PostgreSQL rejects it.
  let sLoRef: string | undefined;
  let sHiRef: string | undefined;
  const lazy = {
    get lo() {
      return (sLoRef ??= `${p.add(d.range.lo.toISOString())}::timestamptz`);
    },
    get hi() {
      return (sHiRef ??= `${p.add(d.range.hi.toISOString())}::timestamptz`);
    },
  };
  switch (d.prefix) {
    case 'eq':
      return `(${lo} >= ${lazy.lo} AND ${hi} <= ${lazy.hi})`;
    case 'ne':
      return `NOT (${lo} >= ${lazy.lo} AND ${hi} <= ${lazy.hi})`;
    case 'gt':
      return `${hi} > ${lazy.hi}`;
    case 'lt':
      return `${lo} < ${lazy.lo}`;
    case 'ge':
      return `${hi} > ${lazy.lo}`;
    case 'le':
      return `${lo} < ${lazy.hi}`;
    case 'sa':
      return `${lo} >= ${lazy.hi}`;
    case 'eb':
      return `${hi} <= ${lazy.lo}`;
    case 'ap':
      return `(${lo} < ${lazy.hi} AND ${hi} > ${lazy.lo})`;
  }
}

function sortSql(s: SortRule, p: Params): string {
  const dir = s.descending ? 'DESC' : 'ASC';
  if (s.key === '_id') return `c.id ${dir}`;
  if (s.key === '_lastUpdated') return `c.last_updated ${dir}`;
  const expr =
    s.key.type === 'date'
      ? `(SELECT ${s.descending ? 'max(d.hi)' : 'min(d.lo)'} FROM search_date d ` +
        `WHERE ${OWNER('d')} AND ${codeSql('d', s.key.indexCodes, p)})`
      : `(SELECT ${s.descending ? 'max(s.value)' : 'min(s.value)'} FROM search_string s ` +
        `WHERE ${OWNER('s')} AND ${codeSql('s', s.key.indexCodes, p)})`;
  return `${expr} ${dir} NULLS LAST`;
}

/** One code as before; several (a name and its parts) as one array parameter. */
function codeSql(alias: string, codes: readonly string[], p: Params): string {
  return codes.length === 1 ? `${alias}.code = ${p.add(codes[0])}` : `${alias}.code = ANY(${p.add(codes)}::text[])`;
}

function escapeLike(s: string): string {
  return s.replace(/[\\%_]/g, (c) => `\\${c}`);
}
