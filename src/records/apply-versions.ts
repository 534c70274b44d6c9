// Stores versions written at other sites (DESIGN.md §4: versions are a grow-only set), a page
// at a time in a handful of statements. Every version lands in history; the resource's
// derived state follows the rules of version-order.ts, so it is the same at every site
// whatever order versions arrive in: the current version is the greatest (hlc, origin), and
// the conflicts are the pairs whose newer version's writer had not seen the older one, each
// resolved by the least version written on top of the pair. Nothing here writes the outbox:
// applied changes never re-enter it.
import type { Queryable } from '../db/index.ts';
import type { RecordsContext } from './context.ts';
import { EMPI_TYPE, recordReplicatedEmpi } from './empi.ts';
import { EMPTY_INDEX, extractIndex, type IndexRows } from './search-index.ts';
import { compareVersions, parentBelow, resolves, type VersionFacts } from './version-order.ts';
import type { VersionRow } from './version-row.ts';

/** A version as its origin site wrote it (the same row the local write path builds). */
export type RemoteVersion = VersionRow;

export interface ApplyResult {
  /**
   * current: it is now the current version (a directory entry, its one version, has no current
   * row); history: kept as an older version; review: kept, fenced out (the tail of an epoch
   * that ended before its successor saw it: migration 0022); duplicate: already here.
   */
  outcome: 'current' | 'history' | 'review' | 'duplicate';
  /** A version it forms a conflict with, when it does. */
  conflictWith?: string;
}

/**
 * Serializes appliers of epoch-stamped versions (shared) with the recording of epoch cuts
 * (exclusive, epoch-review.ts): a version applied while a cut is recorded is either seen by
 * the cut's update or sees the cut itself.
 */
export const EPOCH_CUT_LOCK = 0x6d6d_6375; // 'mmcu'

const keyOf = (type: string, id: string) => `${type}\u0000${id}`;

/**
 * Serializes every writer of these resources for the rest of the transaction (appliers, and
 * local writes that create a resource under a client's id): each must see the versions the
 * other committed before deciding conflicts. Locks are taken in one order, so two pages
 * sharing resources cannot deadlock each other.
 */
export async function lockResources(tx: Queryable, refs: ReadonlyArray<{ resourceType: string; id: string }>): Promise<void> {
  if (refs.length === 0) return;
  const keys = [...new Set(refs.map((r) => `${r.resourceType}/${r.id}`))];
  await tx.query(
    `SELECT pg_advisory_xact_lock(h)
       FROM (SELECT DISTINCT hashtextextended(k, 7193) AS h FROM unnest($1::text[]) AS k ORDER BY h) AS s`,
    [keys],
    { name: 'medmesh_lock_resources' },
  );
}

interface FactsRow {
  resource_type: string;
  id: string;
  version_id: string;
  hlc: string;
  origin_site: string;
  parent_hlc: string | null;
  parent_origin: string | null;
}

export const factsOf = (r: Omit<FactsRow, 'resource_type' | 'id'>): VersionFacts => ({
  versionId: r.version_id,
  hlc: BigInt(r.hlc),
  originSite: r.origin_site,
  parentHlc: r.parent_hlc === null ? null : BigInt(r.parent_hlc),
  parentOrigin: r.parent_origin,
});

/** The HLC and origin a version id names (`<16 hex HLC>-<site>`). */
export function versionKeyOf(versionId: string): Pick<VersionFacts, 'hlc' | 'originSite'> {
  const dash = versionId.indexOf('-');
  return { hlc: BigInt(`0x${versionId.slice(0, dash)}`), originSite: versionId.slice(dash + 1) };
}

export async function applyVersions(
  ctx: RecordsContext,
  tx: Queryable,
  versions: readonly RemoteVersion[],
): Promise<ApplyResult[]> {
  if (versions.length === 0) return [];
  await lockResources(
    tx,
    versions.filter((v) => v.resourceType !== EMPI_TYPE),
  );
  if (versions.some((v) => v.epoch > 0n)) await tx.query('SELECT pg_advisory_xact_lock_shared($1)', [EPOCH_CUT_LOCK]);
  const col = <T>(f: (v: RemoteVersion) => T) => versions.map(f);
  // A version of an epoch's tail whose end is already known arrives fenced out (migration 0022).
  const inserted = await tx.query<{ resource_type: string; id: string; version_id: string; fenced_out: boolean }>(
    `INSERT INTO resource_history (resource_type, id, version_id, hlc, parent_hlc, parent_origin, origin_site, epoch, shard,
                                  data_class, deleted, last_updated, content, fenced_out)
     SELECT u.*, EXISTS (SELECT 1 FROM epoch_cut c
                          WHERE c.shard = u.shard AND c.epoch = u.epoch AND c.holder = u.site AND u.hlc > c.cut_hlc)
       FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::text[],
                   $8::bigint[], $9::text[], $10::text[], $11::boolean[], $12::timestamptz[], $13::jsonb[])
            AS u(rt, id, vid, hlc, phlc, porg, site, epoch, shard, cls, del, lu, content)
     ON CONFLICT DO NOTHING RETURNING resource_type, id, version_id, fenced_out`,
    [
      col((v) => v.resourceType),
      col((v) => v.id),
      col((v) => v.versionId),
      col((v) => v.hlc),
      col((v) => v.parentHlc),
      col((v) => v.parentOrigin),
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
  const freshKeys = new Set(inserted.rows.map((r) => `${keyOf(r.resource_type, r.id)}\u0000${r.version_id}`));
  const fencedOut = new Set(
    inserted.rows.filter((r) => r.fenced_out).map((r) => `${keyOf(r.resource_type, r.id)}\u0000${r.version_id}`),
  );
  const fresh: RemoteVersion[] = [];
  const resultOf = new Map<RemoteVersion, ApplyResult>();
  const results: ApplyResult[] = versions.map((v) => {
    if (!freshKeys.delete(`${keyOf(v.resourceType, v.id)}\u0000${v.versionId}`)) return { outcome: 'duplicate' };
    // Written once, a directory entry keeps no current row (empi.ts): its history row is all.
    const r: ApplyResult = { outcome: v.resourceType === EMPI_TYPE ? 'current' : 'history' };
    // Fenced out: kept for review, outside the derived state (no current, no conflicts).
    if (fencedOut.has(`${keyOf(v.resourceType, v.id)}\u0000${v.versionId}`)) return { outcome: 'review' };
    fresh.push(v);
    resultOf.set(v, r);
    return r;
  });
  await recordReplicatedEmpi(tx, fresh);
  const derived = fresh.filter((v) => v.resourceType !== EMPI_TYPE);
  if (derived.length === 0) return results;

  const state = await loadState(tx, derived);
  const winners = new Map<string, RemoteVersion>();
  const newPairs = new Map<string, { t: string; id: string; a: string; b: string; resolution: string | null }>();
  const resolutions: Array<{ t: string; id: string; a: string; b: string; resolution: string }> = [];
  for (const [k, s] of state) {
    const mine = derived.filter((v) => keyOf(v.resourceType, v.id) === k);
    const facts = new Map(s.versions.map((f) => [f.versionId, f]));
    // Pairs this page's versions form with any version known here (those above their parents are loaded).
    for (const v of mine) {
      const fv = facts.get(v.versionId)!;
      for (const x of s.versions) {
        if (x === fv) continue;
        const [older, newer] = compareVersions(x, fv) < 0 ? [x, fv] : [fv, x];
        if (!parentBelow(newer, older)) continue;
        const resolution = s.versions.filter((r) => resolves(r, newer)).sort(compareVersions)[0];
        newPairs.set(`${k}\u0000${older.versionId}\u0000${newer.versionId}`, {
          t: v.resourceType,
          id: v.id,
          a: older.versionId,
          b: newer.versionId,
          resolution: resolution?.versionId ?? null,
        });
        resultOf.get(v)!.conflictWith ??= x.versionId;
      }
    }
    // Known pairs this page resolves, or resolves with a lesser version than before.
    for (const p of s.conflicts) {
      const b = versionKeyOf(p.b);
      const best = mine
        .map((v) => facts.get(v.versionId)!)
        .filter((r) => resolves(r, b))
        .sort(compareVersions)[0];
      if (best && (p.resolution === null || compareVersions(best, versionKeyOf(p.resolution)) < 0))
        resolutions.push({ t: s.type, id: s.id, a: p.a, b: p.b, resolution: best.versionId });
    }
    // The current version is the greatest one.
    const top = mine.reduce<RemoteVersion | undefined>((m, v) => (!m || compareVersions(v, m) > 0 ? v : m), undefined)!;
    if (!s.current || compareVersions(top, s.current) > 0) {
      winners.set(k, top);
      resultOf.get(top)!.outcome = 'current';
    }
  }

  const pairs = [...newPairs.values()];
  if (pairs.length) {
    await tx.query(
      `INSERT INTO resource_conflict (resource_type, id, version_a, version_b, resolution_version, resolved_at, resolved_by)
       SELECT t, i, a, b, r, CASE WHEN r IS NULL THEN NULL ELSE now() END,
              CASE WHEN r IS NULL THEN NULL ELSE 'site:' || split_part(r, '-', 2) END
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS p(t, i, a, b, r)
       ON CONFLICT DO NOTHING`,
      [
        pairs.map((p) => p.t),
        pairs.map((p) => p.id),
        pairs.map((p) => p.a),
        pairs.map((p) => p.b),
        pairs.map((p) => p.resolution),
      ],
    );
  }
  if (resolutions.length) {
    await tx.query(
      `UPDATE resource_conflict c
          SET resolution_version = p.r, resolved_at = coalesce(c.resolved_at, now()),
              resolved_by = 'site:' || split_part(p.r, '-', 2)
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS p(t, i, a, b, r)
        WHERE c.resource_type = p.t AND c.id = p.i AND c.version_a = p.a AND c.version_b = p.b`,
      [
        resolutions.map((p) => p.t),
        resolutions.map((p) => p.id),
        resolutions.map((p) => p.a),
        resolutions.map((p) => p.b),
        resolutions.map((p) => p.resolution),
      ],
    );
  }
  if (winners.size) await writeCurrent(ctx, tx, [...winners.values()]);
  return results;
}

interface ResourceState {
  type: string;
  id: string;
  current: Pick<VersionFacts, 'hlc' | 'originSite'> | undefined;
  /** Every version above the lowest parent among the arriving ones (all of them for a create). */
  versions: VersionFacts[];
  conflicts: Array<{ a: string; b: string; resolution: string | null }>;
}

/** What the decisions need, for every resource the page touches: three statements, whatever the page size. */
async function loadState(tx: Queryable, derived: readonly RemoteVersion[]): Promise<Map<string, ResourceState>> {
  const floor = new Map<string, { t: string; id: string; lo: bigint }>();
  for (const v of derived) {
    const k = keyOf(v.resourceType, v.id);
    const lo = v.parentHlc ?? 0n;
    const f = floor.get(k);
    if (!f || lo < f.lo) floor.set(k, { t: v.resourceType, id: v.id, lo });
  }
  const ts = [...floor.values()];
  const [current, facts, conflicts] = [
    await tx.query<{ resource_type: string; id: string; hlc: string; origin_site: string }>(
      `SELECT c.resource_type, c.id, c.hlc::text AS hlc, c.origin_site FROM resource_current c
         JOIN unnest($1::text[], $2::text[]) AS w(t, i) ON c.resource_type = w.t AND c.id = w.i
        FOR UPDATE OF c`,
      [ts.map((f) => f.t), ts.map((f) => f.id)],
      { name: 'medmesh_apply_lock_current' },
    ),
    await tx.query<FactsRow>(
      `SELECT h.resource_type, h.id, h.version_id, h.hlc::text AS hlc, h.origin_site, h.parent_hlc::text AS parent_hlc,
              h.parent_origin
         FROM resource_history h JOIN unnest($1::text[], $2::text[], $3::bigint[]) AS w(t, i, lo)
           ON h.resource_type = w.t AND h.id = w.i AND h.hlc >= w.lo AND NOT h.fenced_out`,
      [ts.map((f) => f.t), ts.map((f) => f.id), ts.map((f) => f.lo)],
      { name: 'medmesh_apply_version_facts' },
    ),
    await tx.query<{
      resource_type: string;
      id: string;
      version_a: string;
      version_b: string;
      resolution_version: string | null;
    }>(
      `SELECT c.resource_type, c.id, c.version_a, c.version_b, c.resolution_version FROM resource_conflict c
         JOIN unnest($1::text[], $2::text[]) AS w(t, i) ON c.resource_type = w.t AND c.id = w.i`,
      [ts.map((f) => f.t), ts.map((f) => f.id)],
      { name: 'medmesh_apply_conflicts' },
    ),
  ];
  const state = new Map<string, ResourceState>(
    ts.map((f) => [keyOf(f.t, f.id), { type: f.t, id: f.id, current: undefined, versions: [], conflicts: [] }]),
  );
  for (const r of current.rows)
    state.get(keyOf(r.resource_type, r.id))!.current = { hlc: BigInt(r.hlc), originSite: r.origin_site };
  for (const r of facts.rows) state.get(keyOf(r.resource_type, r.id))!.versions.push(factsOf(r));
  for (const r of conflicts.rows)
    state.get(keyOf(r.resource_type, r.id))!.conflicts.push({ a: r.version_a, b: r.version_b, resolution: r.resolution_version });
  return state;
}

/**
 * Upserts the current rows and rewrites their search index, in two statements. The upsert
 * never replaces a greater version (callers hold the resources' locks; this is the last guard).
 */
export async function writeCurrent(ctx: RecordsContext, tx: Queryable, candidates: readonly RemoteVersion[]): Promise<void> {
  const col = <T>(f: (v: RemoteVersion) => T) => candidates.map(f);
  const written = await tx.query<{ resource_type: string; id: string }>(
    `INSERT INTO resource_current (resource_type, id, version_id, hlc, origin_site, shard, data_class, patient_id, deleted,
                                  last_updated, content)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[],
                          $9::boolean[], $10::timestamptz[], $11::jsonb[])
     ON CONFLICT (resource_type, id) DO UPDATE
       SET version_id = excluded.version_id, hlc = excluded.hlc, origin_site = excluded.origin_site,
       shard = excluded.shard, data_class = excluded.data_class,
       patient_id = coalesce(excluded.patient_id, resource_current.patient_id), deleted = excluded.deleted,
       last_updated = excluded.last_updated, content = excluded.content
     WHERE (excluded.hlc, excluded.origin_site COLLATE "C") >= (resource_current.hlc, resource_current.origin_site COLLATE "C")
     RETURNING resource_type, id`,
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
  const kept = new Set(written.rows.map((r) => keyOf(r.resource_type, r.id)));
  const ws = candidates.filter((v) => kept.has(keyOf(v.resourceType, v.id)));
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
     , it AS (INSERT INTO search_token (resource_type, resource_id, code, system, value)
              SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[]))
     , iss AS (INSERT INTO search_string (resource_type, resource_id, code, value)
               SELECT * FROM unnest($8::text[], $9::text[], $10::text[], $11::text[]))
     , idt AS (INSERT INTO search_date (resource_type, resource_id, code, lo, hi)
               SELECT * FROM unnest($12::text[], $13::text[], $14::text[], $15::timestamptz[], $16::timestamptz[]))
     INSERT INTO search_reference (resource_type, resource_id, code, target)
     SELECT * FROM unnest($17::text[], $18::text[], $19::text[], $20::text[])`,
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
