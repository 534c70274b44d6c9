// Writes versions in a single statement: current rows, history rows, search index, EMPI
// entries and the replication outbox rows commit or fail together (DESIGN.md §5, "outbox in
// the same transaction"). One statement builder for every local write: a single write is a
// batch of one, and concurrent creates share one statement (create-batcher.ts). Rows travel
// as JSON and are expanded by PostgreSQL, so a batch of any size is one round trip.
import { randomUUID } from 'node:crypto';
import type { Queryable } from '../db/index.ts';
import { EMPI_TYPE, empiContent } from './empi.ts';
import { FencedError } from './errors.ts';
import type { IndexRows } from './search-index.ts';
import type { EmpiEntry, VersionRow } from './version-row.ts';

/** One version to write, with its search index and, for a newly placed patient, the EMPI entry. */
export interface PendingWrite {
  row: VersionRow;
  index: IndexRows;
  empi?: EmpiEntry;
}

/**
 * `replace`: the versions replace current versions (updates and deletions: the old index
 * goes, and each write, made on top of the greatest version this site holds, resolves its
 * resource's open conflicts — version-order.ts); otherwise they are new resources.
 */
export async function writeVersions(
  q: Queryable,
  items: readonly PendingWrite[],
  opts: {
    replace: boolean;
    /**
     * Core data of a shard is written under the shard's write lease (DESIGN.md §6): the
     * statement reads each shard's epoch from shard_lease (medmesh_fence, migration 0020)
     * and fails with FencedError when this site does not hold it now.
     */
    fenced?: boolean;
  },
): Promise<void> {
  const rows = items.flatMap(({ row: v, empi }) => [
    {
      rt: v.resourceType,
      id: v.id,
      vid: v.versionId,
      hlc: String(v.hlc),
      phlc: v.parentHlc === null ? null : String(v.parentHlc),
      porg: v.parentOrigin,
      site: v.originSite,
      epoch: String(v.epoch),
      shard: v.shard,
      cls: v.dataClass,
      pid: v.patientId,
      del: v.deleted,
      lu: v.lastUpdated,
      content: v.content as unknown,
      cid: randomUUID(),
    },
    // A newly placed patient's directory entry: written and replicated with it (empi.ts); it has no current row.
    ...(empi
      ? [
          {
            rt: EMPI_TYPE,
            id: empi.patientId,
            vid: v.versionId,
            hlc: String(v.hlc),
            phlc: null,
            porg: null,
            site: v.originSite,
            epoch: String(v.epoch),
            shard: null,
            cls: 'public',
            pid: null,
            del: false,
            lu: v.lastUpdated,
            content: empiContent(empi) as unknown,
            cid: randomUUID(),
          },
        ]
      : []),
  ]);
  const owner = (w: PendingWrite) => ({ rt: w.row.resourceType, id: w.row.id });
  const tokens = items.flatMap((w) =>
    w.index.tokens.map((t) => ({ ...owner(w), code: t.code, system: t.system, value: t.value })),
  );
  const strings = items.flatMap((w) => w.index.strings.map((s) => ({ ...owner(w), code: s.code, value: s.value })));
  const dates = items.flatMap((w) => w.index.dates.map((d) => ({ ...owner(w), code: d.code, lo: d.lo, hi: d.hi })));
  const refs = items.flatMap((w) => w.index.references.map((r) => ({ ...owner(w), code: r.code, target: r.target })));
  const empi = items.flatMap((w) =>
    w.empi
      ? [{ pid: w.empi.patientId, shard: w.empi.shard, method: w.empi.method, reason: w.empi.reason, site: w.row.originSite }]
      : [],
  );
  const replace = opts.replace
    ? `ON CONFLICT (resource_type, id) DO UPDATE
         SET version_id = excluded.version_id, hlc = excluded.hlc, origin_site = excluded.origin_site,
         shard = excluded.shard, data_class = excluded.data_class, patient_id = excluded.patient_id, deleted = excluded.deleted,
         last_updated = excluded.last_updated, content = excluded.content
     ), o AS (SELECT rt, id, vid, site FROM r WHERE rt <> '${EMPI_TYPE}'
     ), dt AS (DELETE FROM search_token s USING o WHERE s.resource_type = o.rt AND s.resource_id = o.id
     ), ds AS (DELETE FROM search_string s USING o WHERE s.resource_type = o.rt AND s.resource_id = o.id
     ), dd AS (DELETE FROM search_date s USING o WHERE s.resource_type = o.rt AND s.resource_id = o.id
     ), dr AS (DELETE FROM search_reference s USING o WHERE s.resource_type = o.rt AND s.resource_id = o.id
     ), rc AS (
       UPDATE resource_conflict c SET resolved_at = now(), resolved_by = 'site:' || o.site, resolution_version = o.vid
         FROM o WHERE c.resource_type = o.rt AND c.id = o.id AND c.resolution_version IS NULL`
    : '';
  const written = q.query(
    `WITH r AS MATERIALIZED (
       SELECT rt, id, vid, hlc, phlc, porg, site, shard, cls, pid, del, lu, content, cid,
              CASE WHEN $7::boolean AND cls = 'core' AND shard IS NOT NULL THEN medmesh_fence(shard, site) ELSE epoch END AS epoch
         FROM jsonb_to_recordset($1::jsonb)
         AS r(rt text, id text, vid text, hlc bigint, phlc bigint, porg text, site text, epoch bigint, shard text, cls text,
              pid text, del boolean, lu timestamptz, content jsonb, cid uuid)
     ), cur AS (
       INSERT INTO resource_current (resource_type, id, version_id, hlc, origin_site, shard, data_class, patient_id, deleted,
                                    last_updated, content)
       SELECT rt, id, vid, hlc, site, shard, cls, pid, del, lu, content FROM r WHERE rt <> '${EMPI_TYPE}'
       ${replace}
     ), hist AS (
       INSERT INTO resource_history (resource_type, id, version_id, hlc, parent_hlc, parent_origin, origin_site, epoch, shard,
                                    data_class, deleted, last_updated, content)
       SELECT rt, id, vid, hlc, phlc, porg, site, epoch, shard, cls, del, lu, content FROM r WHERE rt <> '${EMPI_TYPE}'
     ), eh AS (
       INSERT INTO resource_history (resource_type, id, version_id, hlc, parent_hlc, origin_site, epoch, shard, data_class,
                                    deleted, last_updated, content)
       SELECT rt, id, vid, hlc, NULL, site, epoch, NULL, 'public', false, lu, content FROM r WHERE rt = '${EMPI_TYPE}'
       ON CONFLICT DO NOTHING
     ), it AS (
       INSERT INTO search_token (resource_type, resource_id, code, system, value)
       SELECT rt, id, code, system, value
         FROM jsonb_to_recordset($2::jsonb) AS t(rt text, id text, code text, system text, value text)
     ), iss AS (
       INSERT INTO search_string (resource_type, resource_id, code, value)
       SELECT rt, id, code, value FROM jsonb_to_recordset($3::jsonb) AS t(rt text, id text, code text, value text)
     ), idt AS (
       INSERT INTO search_date (resource_type, resource_id, code, lo, hi)
       SELECT rt, id, code, lo, hi
         FROM jsonb_to_recordset($4::jsonb) AS t(rt text, id text, code text, lo timestamptz, hi timestamptz)
     ), ir AS (
       INSERT INTO search_reference (resource_type, resource_id, code, target)
       SELECT rt, id, code, target FROM jsonb_to_recordset($5::jsonb) AS t(rt text, id text, code text, target text)
     ), ei AS (
       INSERT INTO empi_identifier (blind, patient_id)
       SELECT jsonb_array_elements_text(content->'identifiers'), id FROM r WHERE rt = '${EMPI_TYPE}' ON CONFLICT DO NOTHING
     ), em AS (
       INSERT INTO empi_patient (patient_id, home_shard, method, reason, placed_by_site)
       SELECT pid, shard, method, reason, site
         FROM jsonb_to_recordset($6::jsonb) AS t(pid text, shard text, method text, reason text, site text)
     )
     INSERT INTO outbox (change_id, origin_site, hlc, parent_hlc, parent_origin, epoch, shard, data_class, resource_type,
                         resource_id, version_id, deleted, payload)
     SELECT cid, site, hlc, phlc, porg, epoch, shard, cls, rt, id, vid, del, content FROM r`,
    [
      JSON.stringify(rows),
      JSON.stringify(tokens),
      JSON.stringify(strings),
      JSON.stringify(dates),
      JSON.stringify(refs),
      JSON.stringify(empi),
      opts.fenced === true,
    ],
    // Two statement shapes; naming them lets PostgreSQL reuse the plan on each connection.
    { name: opts.replace ? 'medmesh_write_versions_replace' : 'medmesh_write_versions_new' },
  );
  await written.catch((e: unknown) => {
    throw FencedError.from(e) ?? e;
  });
}
