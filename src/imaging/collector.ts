// Active collection (the archive's "active integration", DESIGN.md §9): medmesh asks a source
// PACS what it holds per study date (C-FIND or QIDO-RS) and pulls what it lacks (C-MOVE to its
// own AE, or WADO-RS), with a checkpoint per study so a restart goes on where it stopped,
// bounded concurrency, retries with backoff, and a completeness report per day: source versus
// held.
import type { Db } from '../db/index.ts';
import { dicomwebTransport, dimseTransport, type CollectionTransport, type DicomwebSource } from './collection-transport.ts';
import type { DicomPeer } from './dimse-scu.ts';
import type { ImagingStore } from './imaging-store.ts';

/** A source PACS, by DIMSE (the default) or DICOMweb; `id` names it in checkpoints and reports. */
export type CollectionSource = { id: string } & ((DicomPeer & { kind?: 'dimse' }) | (DicomwebSource & { kind: 'dicomweb' }));

export interface CollectorOptions {
  db: Db;
  source: CollectionSource;
  /** DIMSE sources: our AE title, the calling AE and the C-MOVE destination the source knows us by. */
  localAe?: string;
  /** DICOMweb sources: where retrieved instances are stored. */
  store?: ImagingStore;
  concurrency?: number;
  /** Attempts per study before it is left as failed for the next run (default 3). */
  maxAttempts?: number;
  retryDelayMs?: number;
  timeoutMs?: number;
  onProgress?: (p: { day: string; done: number; total: number; study: string; state: string }) => void;
}

export interface DayRun {
  day: string;
  studies: number;
  retrieved: number;
  skipped: number;
  failed: Array<{ study: string; error: string }>;
}

export interface CompletenessReport {
  source: string;
  day: string;
  queriedAt: string | null;
  source_studies: number;
  held_studies: number;
  source_instances: number;
  /** Instances held with their file (an indexed instance whose file is lost is not held). */
  held_instances: number;
  /** Instances indexed here whose file the blob store no longer has (when the report could check). */
  missing_files: number;
  complete: boolean;
  differences: Array<{
    study: string;
    /** files-missing: every instance is indexed, but some of their files are lost. */
    kind: 'missing' | 'incomplete' | 'unknown-count' | 'files-missing';
    source_instances: number | null;
    held_instances: number;
    missing_files: number;
    state: string;
    last_error: string | null;
  }>;
}

const DAY = /^\d{8}$/;

export class Collector {
  readonly #o: CollectorOptions;
  readonly #transport: CollectionTransport;

  constructor(opts: CollectorOptions) {
    this.#o = opts;
    const s = opts.source;
    if (s.kind === 'dicomweb') {
      if (!opts.store) throw new Error(`collector ${s.id}: a DICOMweb source needs the imaging store`);
      this.#transport = dicomwebTransport(s, {
        store: opts.store,
        sourceLabel: `dicomweb:${s.id}`,
        ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}),
      });
    } else {
      if (!opts.localAe) throw new Error(`collector ${s.id}: a DIMSE source needs this site's AE title`);
      this.#transport = dimseTransport(s, {
        localAe: opts.localAe,
        ...(opts.timeoutMs ? { findTimeoutMs: opts.timeoutMs, moveTimeoutMs: opts.timeoutMs } : {}),
      });
    }
  }

  get sourceId(): string {
    return this.#o.source.id;
  }

  /** Collects every study the source dates `day` (YYYYMMDD). */
  async collectDay(day: string): Promise<{ ok: true; value: DayRun } | { ok: false; error: string }> {
    if (!DAY.test(day)) return { ok: false, error: `day ${JSON.stringify(day)} must be YYYYMMDD` };
    const { db, source } = this.#o;
    const found = await this.#transport.findStudies(day);
    if (!found.ok) return found;
    const studies = found.value;
    await db.transaction(async (tx) => {
      for (const s of studies) {
        // A study whose count at the source changed is fetched again (new instances arrived).
        await tx.query(
          `INSERT INTO imaging_collection_study (source, study_uid, study_date, source_instances, state)
           VALUES ($1, $2, $3, $4, 'pending')
           ON CONFLICT (source, study_uid) DO UPDATE
             SET study_date = excluded.study_date, source_instances = excluded.source_instances,
             state = CASE WHEN imaging_collection_study.state = 'retrieved'
                           AND imaging_collection_study.source_instances IS NOT DISTINCT FROM excluded.source_instances
                          THEN 'retrieved' ELSE 'pending' END,
             attempts = CASE WHEN imaging_collection_study.source_instances IS DISTINCT FROM excluded.source_instances
                             THEN 0 ELSE imaging_collection_study.attempts END,
             updated_at = now()`,
          [source.id, s.uid, day, s.count],
        );
      }
      await tx.query(
        `INSERT INTO imaging_collection_day (source, study_date, queried_at, studies) VALUES ($1, $2, now(), $3)
         ON CONFLICT (source, study_date) DO UPDATE SET queried_at = now(), studies = excluded.studies`,
        [source.id, day, studies.length],
      );
    });
    const { rows: todo } = await db.query<{ study_uid: string; attempts: number }>(
      `SELECT study_uid, attempts FROM imaging_collection_study
        WHERE source = $1 AND study_date = $2 AND state <> 'retrieved' ORDER BY study_uid`,
      [source.id, day],
    );
    const run: DayRun = { day, studies: studies.length, retrieved: 0, skipped: studies.length - todo.length, failed: [] };
    let next = 0;
    let done = run.skipped;
    const worker = async () => {
      while (next < todo.length) {
        const t = todo[next++]!;
        // A study whose fetch throws (its checkpoint cannot be written) is failed; the others go on.
        const r = await this.#fetchStudy(t.study_uid, t.attempts).catch((e: unknown) => ({
          ok: false as const,
          error: e instanceof Error ? e.message : String(e),
        }));
        done++;
        if (r.ok) run.retrieved++;
        else run.failed.push({ study: t.study_uid, error: r.error });
        this.#o.onProgress?.({ day, done, total: studies.length, study: t.study_uid, state: r.ok ? 'retrieved' : 'failed' });
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, this.#o.concurrency ?? 2) }, worker));
    return { ok: true, value: run };
  }

  /** Collects each day from `from` to `to` (inclusive, YYYYMMDD). */
  async collectRange(from: string, to: string): Promise<Array<{ ok: true; value: DayRun } | { ok: false; error: string }>> {
    const out = [];
    for (const day of daysBetween(from, to)) out.push(await this.collectDay(day));
    return out;
  }

  async #fetchStudy(study: string, attemptsSoFar: number): Promise<{ ok: true } | { ok: false; error: string }> {
    const { db, source } = this.#o;
    const max = this.#o.maxAttempts ?? 3;
    let error = '';
    for (let attempt = attemptsSoFar; attempt < attemptsSoFar + max; attempt++) {
      if (attempt > attemptsSoFar)
        await new Promise((r) => setTimeout(r, (this.#o.retryDelayMs ?? 1000) * 2 ** (attempt - attemptsSoFar - 1)));
      const moved = await this.#transport.retrieveStudy(study);
      const expected =
        (
          await db.query<{ n: number | null }>(
            'SELECT source_instances AS n FROM imaging_collection_study WHERE source = $1 AND study_uid = $2',
            [source.id, study],
          )
        ).rows[0]?.n ?? null;
      const held =
        (await heldInstances(db, study)) -
        (this.#o.store ? (await this.#o.store.missingFiles({ studyInstanceUids: [study] })).length : 0);
      if (moved.ok && (expected === null || held >= expected)) {
        await db.query(
          `UPDATE imaging_collection_study SET state = 'retrieved', attempts = $3, last_error = NULL, updated_at = now()
            WHERE source = $1 AND study_uid = $2`,
          [source.id, study, attempt + 1],
        );
        return { ok: true };
      }
      error = moved.ok ? `the source has ${expected} instance(s), medmesh holds ${held} after the retrieval` : moved.error;
      await db.query(
        `UPDATE imaging_collection_study SET state = 'failed', attempts = $3, last_error = $4, updated_at = now()
          WHERE source = $1 AND study_uid = $2`,
        [source.id, study, attempt + 1, error],
      );
    }
    return { ok: false, error };
  }

  /** Source versus held for one day, from the last query of the source. */
  async report(day: string): Promise<CompletenessReport> {
    return completenessReport(this.#o.db, this.#o.source.id, day, this.#o.store);
  }
}

async function heldInstances(db: Db, study: string): Promise<number> {
  return (
    await db.query<{ n: number }>('SELECT count(*)::int AS n FROM imaging_instance WHERE study_uid = $1 AND current', [study])
  ).rows[0]!.n;
}

/** Source versus held for one day; with `files`, an instance whose file is lost is not held. */
export async function completenessReport(
  db: Db,
  source: string,
  day: string,
  files?: Pick<ImagingStore, 'missingFiles'>,
): Promise<CompletenessReport> {
  const queried = (
    await db.query<{ queried_at: Date | string }>(
      'SELECT queried_at FROM imaging_collection_day WHERE source = $1 AND study_date = $2',
      [source, day],
    )
  ).rows[0];
  const { rows } = await db.query<{
    study_uid: string;
    source_instances: number | null;
    held: number;
    state: string;
    last_error: string | null;
  }>(
    `SELECT c.study_uid, c.source_instances, c.state, c.last_error,
       (SELECT count(*)::int FROM imaging_instance i WHERE i.study_uid = c.study_uid AND i.current) AS held
     FROM imaging_collection_study c WHERE c.source = $1 AND c.study_date = $2 ORDER BY c.study_uid`,
    [source, day],
  );
  const lost = new Map<string, number>();
  if (files && rows.length)
    for (const m of await files.missingFiles({ studyInstanceUids: rows.map((r) => r.study_uid) }))
      lost.set(m.studyInstanceUid, (lost.get(m.studyInstanceUid) ?? 0) + 1);
  const differences: CompletenessReport['differences'] = [];
  const counted = rows.map((r) => ({ ...r, missing: lost.get(r.study_uid) ?? 0, held: r.held - (lost.get(r.study_uid) ?? 0) }));
  for (const r of counted) {
    const kind =
      r.held === 0
        ? 'missing'
        : r.source_instances === null
          ? r.missing
            ? 'files-missing'
            : 'unknown-count'
          : r.held < r.source_instances
            ? 'incomplete'
            : r.missing
              ? 'files-missing'
              : undefined;
    if (kind)
      differences.push({
        study: r.study_uid,
        kind,
        source_instances: r.source_instances,
        held_instances: r.held,
        missing_files: r.missing,
        state: r.state,
        last_error: r.last_error,
      });
  }
  const sourceInstances = counted.reduce((n, r) => n + (r.source_instances ?? 0), 0);
  const heldInstancesTotal = counted.reduce((n, r) => n + Math.min(r.held, r.source_instances ?? r.held), 0);
  return {
    source,
    day,
    queriedAt: queried ? new Date(queried.queried_at).toISOString() : null,
    source_studies: counted.length,
    held_studies: counted.filter((r) => r.held > 0).length,
    source_instances: sourceInstances,
    held_instances: heldInstancesTotal,
    missing_files: counted.reduce((n, r) => n + r.missing, 0),
    complete: queried !== undefined && differences.length === 0,
    differences,
  };
}

function daysBetween(from: string, to: string): string[] {
  const parse = (d: string) => Date.UTC(Number(d.slice(0, 4)), Number(d.slice(4, 6)) - 1, Number(d.slice(6, 8)));
  const out: string[] = [];
  for (let t = parse(from); t <= parse(to) && out.length < 3660; t += 86_400_000)
    out.push(new Date(t).toISOString().slice(0, 10).replaceAll('-', ''));
  return out;
}
