// Group commit for plain creates: creates that arrive while a write is in flight are
// written together by one statement (one round trip, one commit) once it finishes. Alone,
// a create is written at once by the single-row statement, so latency does not grow.
// Each caller is answered only after the statement that holds its row has committed.
import { EMPI_TYPE, empiContent } from './empi.ts';
import type { Queryable } from '../db/index.ts';
import type { IndexRows } from './search-index.ts';
import { writeVersion } from './write-version.ts';
import type { EmpiEntry, VersionRow } from './version-row.ts';

export interface PendingWrite {
  row: VersionRow;
  index: IndexRows;
  empi?: EmpiEntry;
}

interface Waiting extends PendingWrite {
  resolve: () => void;
  reject: (e: unknown) => void;
}

export class CreateBatcher {
  readonly #q: Queryable;
  readonly #max: number;
  readonly #maxInFlight: number;
  #queue: Waiting[] = [];
  #inFlight = 0;

  constructor(q: Queryable, opts: { maxBatch?: number; maxInFlight?: number } = {}) {
    this.#q = q;
    this.#max = opts.maxBatch ?? 64;
    // A few statements in flight keep the pool busy while the next batch gathers.
    this.#maxInFlight = opts.maxInFlight ?? 2;
  }

  write(item: PendingWrite): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ ...item, resolve, reject });
      if (this.#inFlight < this.#maxInFlight) void this.#drain();
    });
  }

  async #drain(): Promise<void> {
    this.#inFlight++;
    try {
      while (this.#queue.length) {
        const batch = this.#queue.splice(0, this.#max);
        try {
          if (batch.length === 1) await writeOne(this.#q, batch[0]!);
          else await writeNewVersions(this.#q, batch);
          batch.forEach((w) => w.resolve());
        } catch (e) {
          if (batch.length === 1) batch[0]!.reject(e);
          // One bad row must not fail its neighbours: retry each on its own.
          else for (const w of batch) await writeOne(this.#q, w).then(w.resolve, w.reject);
        }
      }
    } finally {
      this.#inFlight--;
    }
  }
}

function writeOne(q: Queryable, w: PendingWrite): Promise<void> {
  return writeVersion(q, w.row, w.index, { replacesCurrent: false, ...(w.empi ? { empi: w.empi } : {}) });
}

/** Several new resources in one statement: rows travel as JSON and are expanded by PostgreSQL. */
export async function writeNewVersions(q: Queryable, items: readonly PendingWrite[]): Promise<void> {
  const rows = items.flatMap(({ row: v, empi }) => [
    {
      rt: v.resourceType,
      id: v.id,
      vid: v.versionId,
      hlc: String(v.hlc),
      phlc: v.parentHlc === null ? null : String(v.parentHlc),
      site: v.originSite,
      epoch: String(v.epoch),
      shard: v.shard,
      cls: v.dataClass,
      pid: v.patientId,
      del: v.deleted,
      lu: v.lastUpdated,
      content: v.content as unknown,
      cid: crypto.randomUUID(),
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
            site: v.originSite,
            epoch: String(v.epoch),
            shard: null,
            cls: 'public',
            pid: null,
            del: false,
            lu: v.lastUpdated,
            content: empiContent(empi) as unknown,
            cid: crypto.randomUUID(),
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
  await q.query(
    `WITH r AS MATERIALIZED (
       SELECT * FROM jsonb_to_recordset($1::jsonb) AS r(rt text, id text, vid text, hlc bigint, phlc bigint, site text, epoch bigint, shard text, cls text, pid text, del boolean, lu timestamptz, content jsonb, cid uuid)
     ), cur AS (
       INSERT INTO resource_current (resource_type, id, version_id, hlc, origin_site, shard, data_class, patient_id, deleted, last_updated, content)
       SELECT rt, id, vid, hlc, site, shard, cls, pid, del, lu, content FROM r WHERE rt <> '${EMPI_TYPE}'
     ), hist AS (
       INSERT INTO resource_history (resource_type, id, version_id, hlc, parent_hlc, origin_site, epoch, shard, data_class, deleted, last_updated, content)
       SELECT rt, id, vid, hlc, phlc, site, epoch, shard, cls, del, lu, content FROM r
     ), it AS (
       INSERT INTO search_token (resource_type, resource_id, code, system, value) SELECT rt, id, code, system, value FROM jsonb_to_recordset($2::jsonb) AS t(rt text, id text, code text, system text, value text)
     ), iss AS (
       INSERT INTO search_string (resource_type, resource_id, code, value) SELECT rt, id, code, value FROM jsonb_to_recordset($3::jsonb) AS t(rt text, id text, code text, value text)
     ), idt AS (
       INSERT INTO search_date (resource_type, resource_id, code, lo, hi) SELECT rt, id, code, lo, hi FROM jsonb_to_recordset($4::jsonb) AS t(rt text, id text, code text, lo timestamptz, hi timestamptz)
     ), ir AS (
       INSERT INTO search_reference (resource_type, resource_id, code, target) SELECT rt, id, code, target FROM jsonb_to_recordset($5::jsonb) AS t(rt text, id text, code text, target text)
     ), ei AS (
       INSERT INTO empi_identifier (blind, patient_id) SELECT jsonb_array_elements_text(content->'identifiers'), id FROM r WHERE rt = '${EMPI_TYPE}' ON CONFLICT DO NOTHING
     ), em AS (
       INSERT INTO empi_patient (patient_id, home_shard, method, reason, placed_by_site) SELECT pid, shard, method, reason, site FROM jsonb_to_recordset($6::jsonb) AS t(pid text, shard text, method text, reason text, site text)
     )
     INSERT INTO outbox (change_id, origin_site, hlc, parent_hlc, epoch, shard, data_class, resource_type, resource_id, version_id, deleted, payload)
     SELECT cid, site, hlc, phlc, epoch, shard, cls, rt, id, vid, del, content FROM r`,
    [
      JSON.stringify(rows),
      JSON.stringify(tokens),
      JSON.stringify(strings),
      JSON.stringify(dates),
      JSON.stringify(refs),
      JSON.stringify(empi),
    ],
    { name: 'medmesh_write_versions_batch' },
  );
}
