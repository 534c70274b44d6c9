// The tail of an ended write epoch goes to review, not to the current state (DESIGN.md §6,
// migration 0022). When the witness passes a shard from one epoch to the next, the versions the
// old holder wrote at its epoch above the cut (how far its successor had applied them when it
// took over) were never seen by the new holder: applying them as current would silently undo
// work done at the new holder since. They stay in the version set, fenced out: never current,
// outside the conflict rules, listed here until a clinician writes what they meant on top of
// the current version. Whether a version is fenced out depends only on the versions and the
// cuts (from the replicated vote chain), so every site reaches the same state in any order.
import type { Queryable } from '../db/index.ts';
import type { RecordsContext } from './context.ts';
import { EPOCH_CUT_LOCK } from './apply-versions.ts';
import { recomputeResources, type ResourceRef } from './derived-state.ts';

/** The end of a shard's write epoch, as a transfer vote of the witness's chain records it. */
export interface EpochCut {
  shard: string;
  /** The epoch that ended. */
  epoch: bigint;
  /** The site that held it. */
  holder: string;
  /** The holder's versions of this epoch above this HLC are its unreplicated tail. */
  cutHlc: bigint;
  /** The vote that ended the epoch. */
  voteSeq: number;
}

/**
 * Records cuts (each once) and fences out the versions already held that they cover, then
 * rebuilds the derived state of the resources touched. Run it after this site's own lease of
 * the shard is withdrawn (its keeper does), so no local write of the ended epoch is in flight.
 */
export async function recordEpochCuts(
  ctx: RecordsContext,
  tx: Queryable,
  cuts: readonly EpochCut[],
): Promise<{ recorded: number; fencedOut: number; changed: ResourceRef[] }> {
  if (cuts.length === 0) return { recorded: 0, fencedOut: 0, changed: [] };
  await tx.query('SELECT pg_advisory_xact_lock($1)', [EPOCH_CUT_LOCK]);
  const added = await tx.query<{ shard: string; epoch: string; holder: string; cut_hlc: string }>(
    `INSERT INTO epoch_cut (shard, epoch, holder, cut_hlc, vote_seq)
     SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[])
     ON CONFLICT DO NOTHING RETURNING shard, epoch::text, holder, cut_hlc::text`,
    [
      cuts.map((c) => c.shard),
      cuts.map((c) => c.epoch),
      cuts.map((c) => c.holder),
      cuts.map((c) => c.cutHlc),
      cuts.map((c) => c.voteSeq),
    ],
  );
  if (added.rows.length === 0) return { recorded: 0, fencedOut: 0, changed: [] };
  const tail = await tx.query<{ resource_type: string; id: string }>(
    `UPDATE resource_history h SET fenced_out = true
       FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[]) AS c(shard, epoch, holder, cut)
      WHERE h.shard = c.shard AND h.epoch = c.epoch AND h.origin_site = c.holder AND h.hlc > c.cut AND NOT h.fenced_out
      RETURNING h.resource_type, h.id`,
    [
      added.rows.map((r) => r.shard),
      added.rows.map((r) => r.epoch),
      added.rows.map((r) => r.holder),
      added.rows.map((r) => r.cut_hlc),
    ],
  );
  const refs = new Map(tail.rows.map((r) => [`${r.resource_type}/${r.id}`, { resourceType: r.resource_type, id: r.id }]));
  const changed = await recomputeResources(ctx, tx, [...refs.values()]);
  return { recorded: added.rows.length, fencedOut: tail.rows.length, changed };
}

/** A version fenced out for review. */
export interface FencedOutVersion {
  resourceType: string;
  id: string;
  versionId: string;
  shard: string;
  epoch: string;
  originSite: string;
  deleted: boolean;
  lastUpdated: string;
  /** The resource's current version now (what the tail would have overwritten), if any. */
  currentVersion: string | null;
}

export async function listFencedOut(q: Queryable, opts: { shard?: string; limit?: number } = {}): Promise<FencedOutVersion[]> {
  const { rows } = await q.query<{
    resource_type: string;
    id: string;
    version_id: string;
    shard: string;
    epoch: string;
    origin_site: string;
    deleted: boolean;
    last_updated: Date;
    current: string | null;
  }>(
    `SELECT h.resource_type, h.id, h.version_id, h.shard, h.epoch::text AS epoch, h.origin_site, h.deleted, h.last_updated,
            c.version_id AS current
       FROM resource_history h
       LEFT JOIN resource_current c ON c.resource_type = h.resource_type AND c.id = h.id
      WHERE h.fenced_out AND ($1::text IS NULL OR h.shard = $1)
      ORDER BY h.shard, h.epoch, h.hlc LIMIT $2`,
    [opts.shard ?? null, opts.limit ?? 100],
  );
  return rows.map((r) => ({
    resourceType: r.resource_type,
    id: r.id,
    versionId: r.version_id,
    shard: r.shard,
    epoch: r.epoch,
    originSite: r.origin_site,
    deleted: r.deleted,
    lastUpdated: new Date(r.last_updated).toISOString(),
    currentVersion: r.current,
  }));
}
