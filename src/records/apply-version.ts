// Stores a version written at another site (DESIGN.md §4: versions are a grow-only set).
// Every version lands in history; the current one is the greatest (hlc, origin site), except
// that between two concurrent versions (neither writer saw the other) a deletion wins, so a
// deleted record is never resurrected by a concurrent edit. Concurrent pairs are recorded
// for clinical review. Nothing here writes the outbox: applied changes never re-enter it.
import { hlcToHex } from '../clock/index.ts';
import type { Queryable } from '../db/index.ts';
import type { RecordsContext } from './context.ts';
import { EMPTY_INDEX, extractIndex } from './search-index.ts';
import type { VersionRow } from './write-version.ts';
import { EMPI_TYPE, recordReplicatedEmpi } from './empi.ts';

/** A version as its origin site wrote it (the same row the local write path builds). */
export type RemoteVersion = VersionRow;

export interface ApplyResult {
  /**
   * current: it is now the current version (a directory entry, its one version, has no current
   * row); history: kept as an older version; duplicate: already here.
   */
  outcome: 'current' | 'history' | 'duplicate';
  /** The version it is concurrent with, when it is. */
  conflictWith?: string;
}

interface Current {
  version_id: string;
  hlc: bigint;
  origin_site: string;
  deleted: boolean;
  parent_hlc: bigint | null;
}

/** What a site knows of a resource's current version, to decide about an arriving one. */
export interface CurrentState {
  versionId: string;
  hlc: bigint;
  originSite: string;
  deleted: boolean;
  parentHlc: bigint | null;
}

/**
 * Whether an arriving version becomes current, and the version it is concurrent with (its
 * writer had not seen the other): the greatest (hlc, origin site) wins, except that between
 * concurrent versions a deletion wins. The one rule both apply paths use.
 */
export function decideVersion(
  cur: CurrentState | undefined,
  v: Pick<RemoteVersion, 'hlc' | 'originSite' | 'parentHlc' | 'deleted'>,
): { wins: boolean; conflictWith?: string } {
  if (!cur) return { wins: true };
  const newer = v.hlc > cur.hlc || (v.hlc === cur.hlc && v.originSite > cur.originSite);
  const concurrent = newer ? v.parentHlc === null || v.parentHlc < cur.hlc : cur.parentHlc === null || cur.parentHlc < v.hlc;
  if (!concurrent) return { wins: newer };
  return { wins: v.deleted !== cur.deleted ? v.deleted : newer, conflictWith: cur.versionId };
}

export async function applyVersion(ctx: RecordsContext, tx: Queryable, v: RemoteVersion): Promise<ApplyResult> {
  const content = v.content === null ? null : JSON.stringify(v.content);
  const inserted = await tx.query(
    `INSERT INTO resource_history (resource_type, id, version_id, hlc, parent_hlc, origin_site, epoch, shard, data_class, deleted, last_updated, content)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb) ON CONFLICT DO NOTHING RETURNING 1`,
    [
      v.resourceType,
      v.id,
      v.versionId,
      v.hlc,
      v.parentHlc,
      v.originSite,
      v.epoch,
      v.shard,
      v.dataClass,
      v.deleted,
      v.lastUpdated,
      content,
    ],
  );
  if (inserted.rows.length === 0) return { outcome: 'duplicate' };
  await recordReplicatedEmpi(tx, [v]);
  if (v.resourceType === EMPI_TYPE) return { outcome: 'current' }; // written once: no current row (empi.ts)
  const { rows } = await tx.query<Current>(
    `SELECT c.version_id, c.hlc, c.origin_site, c.deleted, h.parent_hlc FROM resource_current c
       JOIN resource_history h ON h.resource_type = c.resource_type AND h.id = c.id AND h.version_id = c.version_id
      WHERE c.resource_type = $1 AND c.id = $2 FOR UPDATE OF c`,
    [v.resourceType, v.id],
  );
  const cur = rows[0];
  const { wins, conflictWith } = decideVersion(
    cur && {
      versionId: cur.version_id,
      hlc: cur.hlc,
      originSite: cur.origin_site,
      deleted: cur.deleted,
      parentHlc: cur.parent_hlc,
    },
    v,
  );
  if (conflictWith) {
    const [a, b] = [v.versionId, conflictWith].sort();
    await tx.query(
      'INSERT INTO resource_conflict (resource_type, id, version_a, version_b) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING',
      [v.resourceType, v.id, a, b],
    );
  }
  if (!wins) return { outcome: 'history', ...(conflictWith ? { conflictWith } : {}) };
  if (cur && !conflictWith && v.parentHlc !== null) {
    // Written by someone who had seen both versions of an open conflict: that write resolves it.
    await tx.query(
      `UPDATE resource_conflict SET resolved_at = now(), resolved_by = $3, resolution_version = $4
        WHERE resource_type = $1 AND id = $2 AND resolved_at IS NULL AND split_part(version_b, '-', 1) <= $5`,
      [v.resourceType, v.id, `site:${v.originSite}`, v.versionId, hlcToHex(v.parentHlc)],
    );
  }
  await tx.query(
    `INSERT INTO resource_current (resource_type, id, version_id, hlc, origin_site, shard, data_class, patient_id, deleted, last_updated, content)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb)
     ON CONFLICT (resource_type, id) DO UPDATE SET version_id = excluded.version_id, hlc = excluded.hlc, origin_site = excluded.origin_site,
       shard = excluded.shard, data_class = excluded.data_class, patient_id = coalesce(excluded.patient_id, resource_current.patient_id), deleted = excluded.deleted,
       last_updated = excluded.last_updated, content = excluded.content`,
    [
      v.resourceType,
      v.id,
      v.versionId,
      v.hlc,
      v.originSite,
      v.shard,
      v.dataClass,
      v.patientId,
      v.deleted,
      v.lastUpdated,
      content,
    ],
  );
  await rewriteIndex(ctx, tx, v);
  return { outcome: 'current', ...(conflictWith ? { conflictWith } : {}) };
}

/**
 * Repairs this site's copy of a version from its authoritative copy (consistency
 * verification found it missing or different): a missing version is applied as usual; a
 * different one is overwritten, and the current row and index follow when it is current.
 */
export async function repairVersion(
  ctx: RecordsContext,
  tx: Queryable,
  v: RemoteVersion,
): Promise<ApplyResult | { outcome: 'replaced' }> {
  const applied = await applyVersion(ctx, tx, v);
  if (applied.outcome !== 'duplicate') return applied;
  const content = v.content === null ? null : JSON.stringify(v.content);
  const fixed = await tx.query(
    `UPDATE resource_history SET content = $4::jsonb, deleted = $5, hlc = $6, parent_hlc = $7, origin_site = $8, shard = $9, data_class = $10
      WHERE resource_type = $1 AND id = $2 AND version_id = $3
        AND (content IS DISTINCT FROM $4::jsonb OR deleted <> $5 OR hlc <> $6 OR parent_hlc IS DISTINCT FROM $7 OR origin_site <> $8)
      RETURNING 1`,
    [v.resourceType, v.id, v.versionId, content, v.deleted, v.hlc, v.parentHlc, v.originSite, v.shard, v.dataClass],
  );
  if (fixed.rows.length === 0) return applied;
  const cur = await tx.query(
    'UPDATE resource_current SET content = $4::jsonb, deleted = $5 WHERE resource_type = $1 AND id = $2 AND version_id = $3 RETURNING 1',
    [v.resourceType, v.id, v.versionId, content, v.deleted],
  );
  if (cur.rows.length) await rewriteIndex(ctx, tx, v);
  return { outcome: 'replaced' };
}

/** Replaces the resource's search index rows in one statement (as the local write path does). */
async function rewriteIndex(ctx: RecordsContext, tx: Queryable, v: RemoteVersion): Promise<void> {
  const ix = v.deleted || !v.content ? EMPTY_INDEX : extractIndex(v.content, ctx.searchParams.get(v.resourceType) ?? new Map());
  await tx.query(
    `WITH dt AS (DELETE FROM search_token WHERE resource_type = $1 AND resource_id = $2)
     , ds AS (DELETE FROM search_string WHERE resource_type = $1 AND resource_id = $2)
     , dd AS (DELETE FROM search_date WHERE resource_type = $1 AND resource_id = $2)
     , dr AS (DELETE FROM search_reference WHERE resource_type = $1 AND resource_id = $2)
     , it AS (INSERT INTO search_token (resource_type, resource_id, code, system, value) SELECT $1, $2, * FROM unnest($3::text[], $4::text[], $5::text[]))
     , iss AS (INSERT INTO search_string (resource_type, resource_id, code, value) SELECT $1, $2, * FROM unnest($6::text[], $7::text[]))
     , idt AS (INSERT INTO search_date (resource_type, resource_id, code, lo, hi) SELECT $1, $2, * FROM unnest($8::text[], $9::timestamptz[], $10::timestamptz[]))
     INSERT INTO search_reference (resource_type, resource_id, code, target) SELECT $1, $2, * FROM unnest($11::text[], $12::text[])`,
    [
      v.resourceType,
      v.id,
      ix.tokens.map((t) => t.code),
      ix.tokens.map((t) => t.system),
      ix.tokens.map((t) => t.value),
      ix.strings.map((x) => x.code),
      ix.strings.map((x) => x.value),
      ix.dates.map((d) => d.code),
      ix.dates.map((d) => d.lo),
      ix.dates.map((d) => d.hi),
      ix.references.map((r) => r.code),
      ix.references.map((r) => r.target),
    ],
    { name: 'medmesh_apply_rewrite_index' },
  );
}
