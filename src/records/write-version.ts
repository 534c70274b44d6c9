// Writes one version in a single statement: current row, history row, search index and
// the replication outbox row commit or fail together (DESIGN.md §5, "outbox in the same
// transaction"). One round trip keeps the write path close to a plain INSERT.
import { randomUUID } from 'node:crypto';
import type { Queryable } from '../db/index.ts';
import type { IndexRows } from './search-index.ts';
import { EMPI_TYPE, empiContent } from './empi.ts';
import type { EmpiEntry, VersionRow } from './version-row.ts';

export async function writeVersion(
  q: Queryable,
  v: VersionRow,
  index: IndexRows,
  opts: { replacesCurrent: boolean; empi?: EmpiEntry },
): Promise<void> {
  const content = v.content === null ? null : JSON.stringify(v.content);
  const params: unknown[] = [
    v.resourceType,
    v.id,
    v.versionId,
    v.hlc,
    v.parentHlc,
    v.originSite,
    v.epoch,
    v.shard,
    v.dataClass,
    v.patientId,
    v.deleted,
    v.lastUpdated,
    content,
    index.tokens.map((t) => t.code),
    index.tokens.map((t) => t.system),
    index.tokens.map((t) => t.value),
    index.strings.map((s) => s.code),
    index.strings.map((s) => s.value),
    index.dates.map((d) => d.code),
    index.dates.map((d) => d.lo),
    index.dates.map((d) => d.hi),
    index.references.map((r) => r.code),
    index.references.map((r) => r.target),
    randomUUID(),
    opts.empi?.patientId ?? null,
    opts.empi?.shard ?? null,
    opts.empi?.method ?? null,
    opts.empi?.reason ?? null,
    opts.empi ? JSON.stringify(empiContent(opts.empi)) : null,
    randomUUID(),
    v.parentOrigin,
  ];
  // Replacing the current version: the old index goes, and the write, made on top of the
  // greatest version this site holds, resolves the resource's open conflicts (version-order.ts).
  const replaceCurrent = opts.replacesCurrent
    ? `, dt AS (DELETE FROM search_token WHERE resource_type = $1 AND resource_id = $2)
       , ds AS (DELETE FROM search_string WHERE resource_type = $1 AND resource_id = $2)
       , dd AS (DELETE FROM search_date WHERE resource_type = $1 AND resource_id = $2)
       , dr AS (DELETE FROM search_reference WHERE resource_type = $1 AND resource_id = $2)
       , rc AS (UPDATE resource_conflict SET resolved_at = now(), resolved_by = 'site:' || $6, resolution_version = $3
                 WHERE resource_type = $1 AND id = $2 AND resolution_version IS NULL)`
    : '';
  await q.query(
    `WITH cur AS (
       INSERT INTO resource_current (resource_type, id, version_id, hlc, origin_site, shard, data_class, patient_id, deleted, last_updated, content)
       VALUES ($1, $2, $3, $4, $6, $8, $9, $10, $11, $12, $13::jsonb)
       ON CONFLICT (resource_type, id) DO UPDATE SET version_id = excluded.version_id, hlc = excluded.hlc, origin_site = excluded.origin_site,
         shard = excluded.shard, data_class = excluded.data_class, patient_id = excluded.patient_id, deleted = excluded.deleted,
         last_updated = excluded.last_updated, content = excluded.content
     ), hist AS (
       INSERT INTO resource_history (resource_type, id, version_id, hlc, parent_hlc, parent_origin, origin_site, epoch, shard, data_class, deleted, last_updated, content)
       VALUES ($1, $2, $3, $4, $5, $31, $6, $7, $8, $9, $11, $12, $13::jsonb)
     )${replaceCurrent}
     , it AS (INSERT INTO search_token (resource_type, resource_id, code, system, value) SELECT $1, $2, * FROM unnest($14::text[], $15::text[], $16::text[]))
     , iss AS (INSERT INTO search_string (resource_type, resource_id, code, value) SELECT $1, $2, * FROM unnest($17::text[], $18::text[]))
     , idt AS (INSERT INTO search_date (resource_type, resource_id, code, lo, hi) SELECT $1, $2, * FROM unnest($19::text[], $20::timestamptz[], $21::timestamptz[]))
     , ir AS (INSERT INTO search_reference (resource_type, resource_id, code, target) SELECT $1, $2, * FROM unnest($22::text[], $23::text[]))
     , em AS (INSERT INTO empi_patient (patient_id, home_shard, method, reason, placed_by_site) SELECT $25, $26, $27, $28, $6 WHERE $25::text IS NOT NULL)
     , ei AS (INSERT INTO empi_identifier (blind, patient_id) SELECT jsonb_array_elements_text($29::jsonb->'identifiers'), $25 WHERE $25::text IS NOT NULL ON CONFLICT DO NOTHING)
     , eh AS (INSERT INTO resource_history (resource_type, id, version_id, hlc, parent_hlc, origin_site, epoch, shard, data_class, deleted, last_updated, content)
              SELECT '${EMPI_TYPE}', $25, $3, $4, NULL, $6, $7, NULL, 'public', false, $12, $29::jsonb WHERE $25::text IS NOT NULL ON CONFLICT DO NOTHING)
     , eo AS (INSERT INTO outbox (change_id, origin_site, hlc, parent_hlc, epoch, shard, data_class, resource_type, resource_id, version_id, deleted, payload)
              SELECT $30, $6, $4, NULL, $7, NULL, 'public', '${EMPI_TYPE}', $25, $3, false, $29::jsonb WHERE $25::text IS NOT NULL)
     INSERT INTO outbox (change_id, origin_site, hlc, parent_hlc, parent_origin, epoch, shard, data_class, resource_type, resource_id, version_id, deleted, payload)
     VALUES ($24, $6, $4, $5, $31, $7, $8, $9, $1, $2, $3, $11, $13::jsonb)`,
    params,
    // Two statement shapes; naming them lets PostgreSQL reuse the plan on each connection.
    { name: opts.replacesCurrent ? 'medmesh_write_version_replace' : 'medmesh_write_version_new' },
  );
}
