// A resource's derived state (current row, search index, conflicts) rebuilt from its whole
// version set by the reference rules (version-order.ts). Consistency verification uses it
// where a site's derived state disagrees with its versions or with a peer's, and repair uses
// it after overwriting a damaged version: the result depends on nothing but the versions.
import type { Resource } from '@medplum/fhirtypes';
import type { Queryable } from '../db/index.ts';
import type { DataClass } from '../region/index.ts';
import { applyVersions, factsOf, lockResources, writeCurrent, type ApplyResult, type RemoteVersion } from './apply-versions.ts';
import type { RecordsContext } from './context.ts';
import { EMPI_TYPE } from './empi.ts';
import { patientOf } from './resource-types.ts';
import { deriveState } from './version-order.ts';

export interface ResourceRef {
  resourceType: string;
  id: string;
}

interface HistoryRow {
  version_id: string;
  hlc: string;
  origin_site: string;
  parent_hlc: string | null;
  parent_origin: string | null;
}

/**
 * Rebuilds the derived state of these resources from their versions; returns the resources
 * whose stored state was different (current version or conflicts).
 */
export async function recomputeResources(
  ctx: RecordsContext,
  tx: Queryable,
  refs: readonly ResourceRef[],
): Promise<ResourceRef[]> {
  const own = refs.filter((r) => r.resourceType !== EMPI_TYPE);
  await lockResources(tx, own);
  const changed: ResourceRef[] = [];
  for (const ref of own) if (await recomputeOne(ctx, tx, ref)) changed.push(ref);
  return changed;
}

async function recomputeOne(ctx: RecordsContext, tx: Queryable, ref: ResourceRef): Promise<boolean> {
  const { rows } = await tx.query<HistoryRow>(
    `SELECT version_id, hlc::text AS hlc, origin_site, parent_hlc::text AS parent_hlc, parent_origin
       FROM resource_history WHERE resource_type = $1 AND id = $2 AND NOT fenced_out`,
    [ref.resourceType, ref.id],
  );
  const want = deriveState(rows.map(factsOf));
  const stored = await tx.query<{ version_id: string; patient_id: string | null }>(
    'SELECT version_id, patient_id FROM resource_current WHERE resource_type = $1 AND id = $2 FOR UPDATE',
    [ref.resourceType, ref.id],
  );
  const before = stored.rows[0];
  let changed = before?.version_id !== want.current;
  // The current row and its index are rewritten whatever they held (an index is not compared).
  await tx.query('DELETE FROM resource_current WHERE resource_type = $1 AND id = $2', [ref.resourceType, ref.id]);
  if (want.current) {
    const top = await tx.query<{
      hlc: bigint;
      parent_hlc: bigint | null;
      parent_origin: string | null;
      origin_site: string;
      epoch: bigint;
      shard: string | null;
      data_class: DataClass;
      deleted: boolean;
      last_updated: Date;
      content: Resource | null;
    }>(
      `SELECT hlc, parent_hlc, parent_origin, origin_site, epoch, shard, data_class, deleted, last_updated, content
         FROM resource_history WHERE resource_type = $1 AND id = $2 AND version_id = $3`,
      [ref.resourceType, ref.id, want.current],
    );
    const t = top.rows[0]!;
    await writeCurrent(ctx, tx, [
      {
        resourceType: ref.resourceType,
        id: ref.id,
        versionId: want.current,
        hlc: BigInt(t.hlc),
        parentHlc: t.parent_hlc === null ? null : BigInt(t.parent_hlc),
        parentOrigin: t.parent_origin,
        originSite: t.origin_site,
        epoch: BigInt(t.epoch),
        shard: t.shard,
        dataClass: t.data_class,
        patientId: (t.content ? patientOf(t.content).patientId : undefined) ?? before?.patient_id ?? null,
        deleted: t.deleted,
        lastUpdated: new Date(t.last_updated).toISOString(),
        content: t.content,
      },
    ]);
  }
  const have = await tx.query<{ version_a: string; version_b: string; resolution_version: string | null }>(
    'SELECT version_a, version_b, resolution_version FROM resource_conflict WHERE resource_type = $1 AND id = $2',
    [ref.resourceType, ref.id],
  );
  const wanted = new Map(want.conflicts.map((c) => [`${c.a}|${c.b}`, c]));
  for (const h of have.rows) {
    const w = wanted.get(`${h.version_a}|${h.version_b}`);
    if (!w) {
      changed = true;
      await tx.query('DELETE FROM resource_conflict WHERE resource_type = $1 AND id = $2 AND version_a = $3 AND version_b = $4', [
        ref.resourceType,
        ref.id,
        h.version_a,
        h.version_b,
      ]);
    } else if (w.resolution !== h.resolution_version) {
      changed = true;
      await tx.query(
        `UPDATE resource_conflict
            SET resolution_version = $5, resolved_at = CASE WHEN $5::text IS NULL THEN NULL ELSE coalesce(resolved_at, now()) END,
                resolved_by = CASE WHEN $5::text IS NULL THEN NULL ELSE 'site:' || split_part($5, '-', 2) END
          WHERE resource_type = $1 AND id = $2 AND version_a = $3 AND version_b = $4`,
        [ref.resourceType, ref.id, h.version_a, h.version_b, w.resolution],
      );
    }
    wanted.delete(`${h.version_a}|${h.version_b}`);
  }
  for (const w of wanted.values()) {
    changed = true;
    await tx.query(
      `INSERT INTO resource_conflict (resource_type, id, version_a, version_b, resolution_version, resolved_at, resolved_by)
       VALUES ($1, $2, $3, $4, $5, CASE WHEN $5::text IS NULL THEN NULL ELSE now() END,
               CASE WHEN $5::text IS NULL THEN NULL ELSE 'site:' || split_part($5, '-', 2) END)`,
      [ref.resourceType, ref.id, w.a, w.b, w.resolution],
    );
  }
  return changed;
}

/**
 * Repairs this site's copies of versions from their authoritative copies (consistency
 * verification found them missing or different): missing ones are applied as usual,
 * different ones overwritten, and the derived state of every resource touched rebuilt.
 */
export async function repairVersions(
  ctx: RecordsContext,
  tx: Queryable,
  versions: readonly RemoteVersion[],
): Promise<Array<ApplyResult | { outcome: 'replaced' }>> {
  const applied = await applyVersions(ctx, tx, versions);
  const results: Array<ApplyResult | { outcome: 'replaced' }> = [...applied];
  for (const [i, v] of versions.entries()) {
    if (applied[i]!.outcome !== 'duplicate') continue;
    const content = v.content === null ? null : JSON.stringify(v.content);
    const fixed = await tx.query(
      `UPDATE resource_history
          SET content = $4::jsonb, deleted = $5, hlc = $6, parent_hlc = $7, parent_origin = $8, origin_site = $9, shard = $10,
              data_class = $11
        WHERE resource_type = $1 AND id = $2 AND version_id = $3
          AND (content IS DISTINCT FROM $4::jsonb OR deleted <> $5 OR hlc <> $6 OR parent_hlc IS DISTINCT FROM $7
               OR parent_origin IS DISTINCT FROM $8 OR origin_site <> $9)
        RETURNING 1`,
      [
        v.resourceType,
        v.id,
        v.versionId,
        content,
        v.deleted,
        v.hlc,
        v.parentHlc,
        v.parentOrigin,
        v.originSite,
        v.shard,
        v.dataClass,
      ],
    );
    if (fixed.rows.length) results[i] = { outcome: 'replaced' };
  }
  const replaced = versions.filter((_, i) => results[i]!.outcome === 'replaced');
  if (replaced.length) await recomputeResources(ctx, tx, replaced);
  return results;
}
