import { mkdir } from 'node:fs/promises';
import { PGlite, types } from '@electric-sql/pglite';
import type { Db, QueryResult, Queryable } from './db.ts';
import { INT8_OID } from './db.ts';

export interface PgliteOptions {
  /** Data directory; omitted = in memory. */
  dataDir?: string;
}

export async function openPglite(opts: PgliteOptions = {}): Promise<Db> {
  if (opts.dataDir) await mkdir(opts.dataDir, { recursive: true });
  const pg = await PGlite.create({
    ...(opts.dataDir ? { dataDir: opts.dataDir } : {}),
    parsers: { [INT8_OID]: (v: string) => BigInt(v) },
    serializers: { [types.INT8]: (v: unknown) => String(v) },
  });
  const wrap = (q: Pick<PGlite, 'query' | 'exec'>): Queryable => ({
    async exec(sql: string) {
      await q.exec(sql);
    },
    async query<R>(sql: string, params?: readonly unknown[]): Promise<QueryResult<R>> {
      const r = await q.query<R>(sql, params ? [...params] : undefined);
      return { rows: r.rows, rowCount: r.affectedRows ?? r.rows.length };
    },
  });
  const base = wrap(pg);
  return {
    kind: 'pglite',
    query: (sql, params) => base.query(sql, params),
    exec: (sql) => base.exec(sql),
    transaction: (fn) => pg.transaction((tx) => fn(wrap(tx))),
    close: () => pg.close(),
  };
}
