// Applies a page of versions from other sites in a handful of statements instead of several
// per version: history rows in one INSERT, the current rows fetched once and decided in
// order exactly as applyVersion decides them one at a time, then one upsert of the current
// rows and one rewrite of their search index. Same outcome as applying them one by one.
import { hlcToHex } from '../clock/index.ts';
import type { Queryable } from '../db/index.ts';
import { decideVersion, type ApplyResult, type CurrentState, type RemoteVersion } from './apply-version.ts';
import { EMPI_TYPE, recordReplicatedEmpi } from './empi.ts';
import type { RecordsContext } from './context.ts';
import { EMPTY_INDEX, extractIndex, type IndexRows } from './search-index.ts';

const keyOf = (type: string, id: string) => `${type}\u0000${id}`;

export async function applyVersions(
  ctx: RecordsContext,
  tx: Queryable,
  versions: readonly RemoteVersion[],
): Promise<ApplyResult[]> {
  if (versions.length === 0) return [];
  const col = <T>(f: (v: RemoteVersion) => T) => versions.map(f);
  const inserted = await tx.query<{ resource_type: string; id: string; version_id: string }>(
    `INSERT INTO resource_history (resource_type, id, version_id, hlc, parent_hlc, origin_site, epoch, shard, data_class, deleted, last_updated, content)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::bigint[], $8::text[], $9::text[], $10::boolean[], $11::timestamptz[], $12::jsonb[])
     ON CONFLICT DO NOTHING RETURNING resource_type, id, version_id`,
    [
      col((v) => v.resourceType),
      col((v) => v.id),
      col((v) => v.versionId),
      col((v) => v.hlc),
      col((v) => v.parentHlc),
      col((v) => v.originSite),
      col((v) => v.epoch),
      col((v) => v.shard),
      col((v) => v.dataClass),
      col((v) => v.deleted),
      col((v) => v.lastUpdated),
      col((v) => (v.content === null ? null : JSON.stringify(v.content))),
    ],
    { name: 'medmesh_apply_history_batch' },
  );
  const fresh = new Set(inserted.rows.map((r) => `${keyOf(r.resource_type, r.id)}\u0000${r.version_id}`));
  await recordReplicatedEmpi(
    tx,
    versions.filter((v) => fresh.has(`${keyOf(v.resourceType, v.id)}\u0000${v.versionId}`)),
  );

  const resources = [...new Map(versions.map((v) => [keyOf(v.resourceType, v.id), v])).values()];
  const current = await tx.query<{
    resource_type: string;
    id: string;
    version_id: string;
    hlc: string;
    origin_site: string;
    deleted: boolean;
    parent_hlc: string | null;
    has_history: boolean;
    open_conflicts: boolean;
  }>(
    `SELECT c.resource_type, c.id, c.version_id, c.hlc::text AS hlc, c.origin_site, c.deleted, h.parent_hlc::text AS parent_hlc, h.version_id IS NOT NULL AS has_history,
            EXISTS (SELECT 1 FROM resource_conflict rc WHERE rc.resource_type = c.resource_type AND rc.id = c.id AND rc.resolved_at IS NULL) AS open_conflicts
       FROM resource_current c
       JOIN unnest($1::text[], $2::text[]) AS w(t, i) ON c.resource_type = w.t AND c.id = w.i
       LEFT JOIN resource_history h ON h.resource_type = c.resource_type AND h.id = c.id AND h.version_id = c.version_id
      FOR UPDATE OF c`,
    [resources.map((v) => v.resourceType), resources.map((v) => v.id)],
  );
  const state = new Map<string, CurrentState>();
  const openConflicts = new Set<string>();
  for (const r of current.rows) {
    const k = keyOf(r.resource_type, r.id);
    // A current row whose history row is missing counts as no current row (as in applyVersion's join).
    if (r.has_history)
      state.set(k, {
        versionId: r.version_id,
        hlc: BigInt(r.hlc),
        originSite: r.origin_site,
        deleted: r.deleted,
        parentHlc: r.parent_hlc === null ? null : BigInt(r.parent_hlc),
      });
    if (r.open_conflicts) openConflicts.add(k);
  }

  const results: ApplyResult[] = [];
  const winners = new Map<string, RemoteVersion>();
  const conflicts: Array<[string, string, string, string]> = [];
  const resolutions: RemoteVersion[] = [];
  for (const v of versions) {
    const k = keyOf(v.resourceType, v.id);
    if (!fresh.delete(`${k}\u0000${v.versionId}`)) {
      results.push({ outcome: 'duplicate' });
      continue;
    }
    if (v.resourceType === EMPI_TYPE) {
      // Written once, a directory entry keeps no current row (empi.ts): its history row is all.
      results.push({ outcome: 'current' });
      continue;
    }
    const cur = state.get(k);
    const { wins, conflictWith } = decideVersion(cur, v);
    if (conflictWith) {
      const [a, b] = [v.versionId, conflictWith].sort() as [string, string];
      conflicts.push([v.resourceType, v.id, a, b]);
      openConflicts.add(k);
    }
    if (!wins) {
      results.push({ outcome: 'history', ...(conflictWith ? { conflictWith } : {}) });
      continue;
    }
    if (cur && !conflictWith && v.parentHlc !== null && openConflicts.has(k)) resolutions.push(v);
    state.set(k, { versionId: v.versionId, hlc: v.hlc, originSite: v.originSite, deleted: v.deleted, parentHlc: v.parentHlc });
    winners.set(k, v);
    results.push({ outcome: 'current', ...(conflictWith ? { conflictWith } : {}) });
  }

  if (conflicts.length) {
    await tx.query(
      'INSERT INTO resource_conflict (resource_type, id, version_a, version_b) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING',
      [conflicts.map((c) => c[0]), conflicts.map((c) => c[1]), conflicts.map((c) => c[2]), conflicts.map((c) => c[3])],
    );
  }
  for (const v of resolutions) {
    // Written by someone who had seen both versions of an open conflict: that write resolves it.
    await tx.query(
      `UPDATE resource_conflict SET resolved_at = now(), resolved_by = $3, resolution_version = $4
        WHERE resource_type = $1 AND id = $2 AND resolved_at IS NULL AND split_part(version_b, '-', 1) <= $5`,
      [v.resourceType, v.id, `site:${v.originSite}`, v.versionId, hlcToHex(v.parentHlc!)],
    );
  }
  if (winners.size) await writeCurrent(ctx, tx, [...winners.values()]);
  return results;
}

/** Upserts the current rows and rewrites their search index, in two statements. */
async function writeCurrent(ctx: RecordsContext, tx: Queryable, ws: RemoteVersion[]): Promise<void> {
  const col = <T>(f: (v: RemoteVersion) => T) => ws.map(f);
  await tx.query(
    `INSERT INTO resource_current (resource_type, id, version_id, hlc, origin_site, shard, data_class, patient_id, deleted, last_updated, content)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[], $9::boolean[], $10::timestamptz[], $11::jsonb[])
     ON CONFLICT (resource_type, id) DO UPDATE SET version_id = excluded.version_id, hlc = excluded.hlc, origin_site = excluded.origin_site,
       shard = excluded.shard, data_class = excluded.data_class, patient_id = coalesce(excluded.patient_id, resource_current.patient_id), deleted = excluded.deleted,
       last_updated = excluded.last_updated, content = excluded.content`,
    [
      col((v) => v.resourceType),
      col((v) => v.id),
      col((v) => v.versionId),
      col((v) => v.hlc),
      col((v) => v.originSite),
      col((v) => v.shard),
      col((v) => v.dataClass),
      col((v) => v.patientId),
      col((v) => v.deleted),
      col((v) => v.lastUpdated),
      col((v) => (v.content === null ? null : JSON.stringify(v.content))),
    ],
    { name: 'medmesh_apply_current_batch' },
  );
  const rows: Array<{ t: string; id: string; ix: IndexRows }> = ws.map((v) => ({
    t: v.resourceType,
    id: v.id,
    ix: v.deleted || !v.content ? EMPTY_INDEX : extractIndex(v.content, ctx.searchParams.get(v.resourceType) ?? new Map()),
  }));
  const flat = <T>(pick: (ix: IndexRows) => T[]) => rows.flatMap((r) => pick(r.ix).map((x) => ({ t: r.t, id: r.id, x })));
  const tokens = flat((ix) => ix.tokens);
  const strings = flat((ix) => ix.strings);
  const dates = flat((ix) => ix.dates);
  const refs = flat((ix) => ix.references);
  await tx.query(
    `WITH owners AS (SELECT * FROM unnest($1::text[], $2::text[]) AS o(t, i))
     , dt AS (DELETE FROM search_token s USING owners o WHERE s.resource_type = o.t AND s.resource_id = o.i)
     , ds AS (DELETE FROM search_string s USING owners o WHERE s.resource_type = o.t AND s.resource_id = o.i)
     , dd AS (DELETE FROM search_date s USING owners o WHERE s.resource_type = o.t AND s.resource_id = o.i)
     , dr AS (DELETE FROM search_reference s USING owners o WHERE s.resource_type = o.t AND s.resource_id = o.i)
     , it AS (INSERT INTO search_token (resource_type, resource_id, code, system, value) SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[]))
     , iss AS (INSERT INTO search_string (resource_type, resource_id, code, value) SELECT * FROM unnest($8::text[], $9::text[], $10::text[], $11::text[]))
     , idt AS (INSERT INTO search_date (resource_type, resource_id, code, lo, hi) SELECT * FROM unnest($12::text[], $13::text[], $14::text[], $15::timestamptz[], $16::timestamptz[]))
     INSERT INTO search_reference (resource_type, resource_id, code, target) SELECT * FROM unnest($17::text[], $18::text[], $19::text[], $20::text[])`,
    [
      rows.map((r) => r.t),
      rows.map((r) => r.id),
      tokens.map((r) => r.t),
      tokens.map((r) => r.id),
      tokens.map((r) => r.x.code),
      tokens.map((r) => r.x.system),
      tokens.map((r) => r.x.value),
      strings.map((r) => r.t),
      strings.map((r) => r.id),
      strings.map((r) => r.x.code),
      strings.map((r) => r.x.value),
      dates.map((r) => r.t),
      dates.map((r) => r.id),
      dates.map((r) => r.x.code),
      dates.map((r) => r.x.lo),
      dates.map((r) => r.x.hi),
      refs.map((r) => r.t),
      refs.map((r) => r.id),
      refs.map((r) => r.x.code),
      refs.map((r) => r.x.target),
    ],
    { name: 'medmesh_apply_index_batch' },
  );
}
