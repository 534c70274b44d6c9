import { open, readFile, rename } from 'node:fs/promises';
import type { HlcBoundStore } from '../clock/index.ts';
import type { Db, Queryable } from './db.ts';

/** The HLC's persisted upper bound, one row per site; only ever grows. */
export function pgBoundStore(db: Queryable, siteId: string): HlcBoundStore {
  return {
    async load() {
      const { rows } = await db.query<{ upper_ms: bigint }>('SELECT upper_ms FROM hlc_bound WHERE site_id = $1', [siteId]);
      return rows[0] ? Number(rows[0].upper_ms) : 0;
    },
    async save(upperMs) {
      await db.query(
        `INSERT INTO hlc_bound (site_id, upper_ms) VALUES ($1, $2)
         ON CONFLICT (site_id) DO UPDATE SET upper_ms = greatest(hlc_bound.upper_ms, excluded.upper_ms)`,
        [siteId, upperMs],
      );
    },
  };
}

/**
 * The bound store a site uses. On a PostgreSQL server: the table (its own pooled
 * connection). On PGlite the database has one connection, and a write's transaction may
 * need the bound extended while it runs: a query would wait for that very transaction. So
 * an embedded site keeps its bound in a file beside its data directory (written to a
 * temporary file, fsynced, renamed), which only its process can hold open; in memory, in
 * memory. Both start from the table's value, so an older database keeps its bound.
 */
export function boundStoreFor(db: Db, siteId: string): HlcBoundStore {
  // Extended from inside writers' transactions, on a connection of its own, for every writer.
  if (db.kind === 'postgres')
    return pgBoundStore(
      { query: (...a) => db.detach(() => db.query(...a)), exec: (sql) => db.detach(() => db.exec(sql)) },
      siteId,
    );
  const table = pgBoundStore(db, siteId);
  if (!db.dataDir) {
    let value = 0;
    return {
      load: async () => (value = Math.max(value, await table.load())),
      save: (upper) => {
        value = Math.max(value, upper);
        return Promise.resolve();
      },
    };
  }
  const file = `${db.dataDir}.hlc-bound`;
  let value = 0;
  return {
    async load() {
      const text = await readFile(file, 'utf8').catch(() => '0');
      value = Math.max(Number(text.trim()) || 0, await table.load());
      return value;
    },
    async save(upper) {
      value = Math.max(value, upper);
      const tmp = `${file}.tmp`;
      const h = await open(tmp, 'w');
      try {
        await h.writeFile(String(value));
        await h.sync();
      } finally {
        await h.close();
      }
      await rename(tmp, file);
    },
  };
}
