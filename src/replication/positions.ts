// Replication positions as HLCs, for the site's lease keeper (src/failover): how far this
// site has written (the holder's position it renews with) and how far it has applied a peer's
// feed (the standby's position it reports and claims with). The witness weighs a claim by the
// difference (docs/failover.md).
import type { Hlc } from '../clock/index.ts';
import type { Queryable } from '../db/index.ts';

/**
 * The newest HLC among this site's latest outbox rows: its position as a writer. The last rows
 * by (txid, pos) (the primary key, so this reads a few index entries, not the table); HLCs are
 * issued in order at one site, so the newest is among them. 0 when the site never wrote.
 */
export async function ownPositionOf(q: Queryable): Promise<Hlc> {
  const { rows } = await q.query<{ hlc: string | null }>(
    'SELECT max(hlc)::text AS hlc FROM (SELECT hlc FROM outbox ORDER BY txid DESC, pos DESC LIMIT 64) newest',
  );
  return BigInt(rows[0]?.hlc ?? '0');
}

/**
 * How far this site has applied `peer`'s feed: the newest change its cursor passed (kept with
 * the cursor, migration 0021). Changes the peer withheld from this site (data it may not hold)
 * do not move it: a standby of a shard looks behind by the holder's writes to shards it does
 * not hold, until the holder writes something it does.
 */
export async function appliedPositionOf(q: Queryable, peer: string): Promise<Hlc> {
  const { rows } = await q.query<{ hlc: string }>('SELECT hlc::text AS hlc FROM replication_cursor WHERE peer = $1', [peer]);
  return BigInt(rows[0]?.hlc ?? '0');
}
