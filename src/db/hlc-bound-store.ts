import type { HlcBoundStore } from '../clock/index.ts';
import type { Queryable } from './db.ts';

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
