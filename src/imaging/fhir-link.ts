// Studies in the FHIR record (DESIGN.md §9): each study is tied to its Patient (found by
// resident ID or by the sender's patient ID; created when missing, marked as made from DICOM)
// and described by an ImagingStudy whose id is the Study Instance UID, written once the study
// has been quiet for a moment rather than once per instance. Both go through the record
// store, so placement, residency and the outbox apply as to any other write.
import type { ImagingStudy, Patient } from '@medplum/fhirtypes';
import { reasonOf, type Logger } from '../common/index.ts';
import { claimLease, releaseLease, type Db } from '../db/index.ts';
import type { RecordStore } from '../records/index.ts';
import type { Region } from '../region/index.ts';
import { dicomPatientIdentifiers, findDicomPatient } from './image-residency.ts';

export { DICOM_PATIENT_ID_SYSTEM } from './image-residency.ts';
export const FROM_DICOM_TAG = {
  system: 'urn:medmesh:provenance',
  code: 'created-from-dicom',
  display: 'Created from a received DICOM study',
} as const;

export interface StudyLinkerOptions {
  db: Db;
  /**
   * This API node, as holder of the site-wide linking lease: one node of a site links at a
   * time (two linking one new patient's studies at once would each create the Patient).
   */
  holder: string;
  records: RecordStore;
  region: Region;
  siteId: string;
  log: Logger;
  /** A study is linked once it has had no new instance for this long (default 2 s). */
  quietMs?: number;
  /** DICOM dates and times are local without an offset; the region's (default China Standard Time). */
  utcOffset?: string;
}

interface StudyRow {
  study_uid: string;
  patient_id: string | null;
  patient_name: string | null;
  patient_birth_date: string | null;
  patient_sex: string | null;
  study_date: string | null;
  study_time: string | null;
  accession_number: string | null;
  study_description: string | null;
  source: string | null;
  /** As text, so it is written back exactly (a JS Date would drop the microseconds). */
  updated_at: string;
}

export type LinkOutcome = { study: string; patient?: string; imagingStudy?: string; note?: string };

/** The note of a study whose linking failed (tried again on later passes, after the others). */
const LINK_FAILED = 'link failed: ';

/** Renewed by every pass of the holder; a node that died leaves it to another after this long. */
const LEASE = { name: 'imaging-study-linker', seconds: 30 } as const;

export class StudyLinker {
  readonly #o: StudyLinkerOptions;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<unknown> | undefined;
  /** Flushes run one after another (the timer's and a caller's): a study is never linked twice at once. */
  #queue: Promise<unknown> = Promise.resolve();

  constructor(opts: StudyLinkerOptions) {
    this.#o = opts;
  }

  /** Links studies that changed and have been quiet, every `everyMs`. */
  start(everyMs = 1000): void {
    this.#timer ??= setInterval(() => {
      // One timer pass at a time (ticks do not pile up behind a slow one). A failed pass (the
      // database away) leaves its studies unsynced for the next; it must not crash the site.
      if (!this.#running)
        this.#running = this.flush()
          .catch((e: unknown) =>
            this.#o.log.warn({ err: e }, `study linking pass failed (the next pass retries): ${reasonOf(e)}`),
          )
          .finally(() => (this.#running = undefined));
    }, everyMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#queue;
    // Handed back so another node takes over at once; if that fails, the lease lapses by itself.
    await releaseLease(this.#o.db, { name: LEASE.name, holder: this.#o.holder }).catch((e: unknown) =>
      this.#o.log.warn({ err: e }, `linking lease not handed back (it lapses in 30 s): ${reasonOf(e)}`),
    );
  }

  /**
   * Links every study changed more than `quietMs` ago (all of them with `all`), while this node
   * holds the site's linking lease; another node's pass finds nothing to do.
   */
  flush(opts: { all?: boolean } = {}): Promise<LinkOutcome[]> {
    const run = this.#queue.then(() => this.#flushNow(opts));
    this.#queue = run.catch(() => undefined); // the caller of flush() gets this failure; the queue goes on
    return run;
  }

  async #flushNow(opts: { all?: boolean }): Promise<LinkOutcome[]> {
    if (!(await claimLease(this.#o.db, { ...LEASE, holder: this.#o.holder, renew: true }))) return [];
    const { rows } = await this.#o.db.query<StudyRow>(
      `SELECT study_uid, patient_id, patient_name, patient_birth_date, patient_sex, study_date, study_time, accession_number,
              study_description, source, updated_at::text AS updated_at
       FROM imaging_study WHERE (fhir_synced_at IS NULL OR fhir_synced_at < updated_at)
                            AND ($1 OR updated_at < now() - make_interval(secs => $2))
       ORDER BY coalesce(link_note LIKE '${LINK_FAILED}%', false), imaging_study.updated_at LIMIT 100`,
      [opts.all ?? false, (this.#o.quietMs ?? 2000) / 1000],
    );
    const out: LinkOutcome[] = [];
    for (const s of rows) {
      try {
        out.push(await this.#link(s));
      } catch (e) {
        // One study that cannot be linked (a record the store refuses, a bug) does not stop the
        // others: it carries the reason, is tried again on later passes, after the studies that
        // link, and the pass goes on. A database that is away fails the note too, and the pass.
        const note = `${LINK_FAILED}${e instanceof Error ? e.message : String(e)}`.slice(0, 500);
        await this.#o.db.query('UPDATE imaging_study SET link_note = $2 WHERE study_uid = $1', [s.study_uid, note]);
        out.push({ study: s.study_uid, note });
      }
    }
    return out;
  }

  async #link(s: StudyRow): Promise<LinkOutcome> {
    const done = async (o: LinkOutcome) => {
      // Only if nothing changed meanwhile: a newer instance means another pass.
      await this.#o.db.query(
        'UPDATE imaging_study SET fhir_synced_at = $2::timestamptz, patient_ref = $3, link_note = $4 WHERE study_uid = $1',
        [s.study_uid, s.updated_at, o.patient ?? null, o.note ?? null],
      );
      return o;
    };
    const patient = await this.#patient(s);
    if (!patient.ok) return done({ study: s.study_uid, note: patient.note });
    const study = await this.#imagingStudy(s, patient.ref);
    if (!study.ok) return done({ study: s.study_uid, patient: patient.ref, note: study.note });
    return done({ study: s.study_uid, patient: patient.ref, imagingStudy: `ImagingStudy/${s.study_uid}` });
  }

  /** The study's Patient: by resident ID, else by the sender's patient ID; created when missing. */
  async #patient(s: StudyRow): Promise<{ ok: true; ref: string } | { ok: false; note: string }> {
    const { records, region } = this.#o;
    const pid = s.patient_id?.trim();
    if (!pid) return { ok: false, note: 'the study carries no Patient ID: not linked to a patient' };
    const found = await findDicomPatient(records, region, pid);
    if (!found.ok) return { ok: false, note: found.error };
    if (found.patient?.id) return { ok: true, ref: `Patient/${found.patient.id}` };
    const { resident, local } = dicomPatientIdentifiers(region, pid);
    const patient: Patient = {
      resourceType: 'Patient',
      meta: { tag: [FROM_DICOM_TAG], source: `${s.source ?? 'dicom'}#study/${s.study_uid}` },
      identifier: [...(resident ? [resident] : []), local],
      ...(s.patient_name ? { name: [humanName(s.patient_name)] } : {}),
      ...(s.patient_sex
        ? { gender: ({ M: 'male', F: 'female', O: 'other' } as const)[s.patient_sex as 'M' | 'F' | 'O'] ?? 'unknown' }
        : {}),
      ...(s.patient_birth_date && /^\d{8}$/.test(s.patient_birth_date)
        ? {
            birthDate: [
              s.patient_birth_date.slice(0, 4),
              s.patient_birth_date.slice(4, 6),
              s.patient_birth_date.slice(6, 8),
            ].join('-'),
          }
        : {}),
    };
    const created = await records.create('Patient', patient);
    if (!created.ok)
      return {
        ok: false,
        note: `no Patient for ${pid}, and one cannot be created here: ${created.error.issues.map((i) => i.message).join('; ')}`,
      };
    return { ok: true, ref: `Patient/${created.value.resource.id!}` };
  }

  async #imagingStudy(s: StudyRow, patientRef: string): Promise<{ ok: true } | { ok: false; note: string }> {
    const { rows: series } = await this.#o.db.query<{
      series_uid: string;
      modality: string | null;
      series_number: number | null;
      series_description: string | null;
    }>(
      `SELECT series_uid, modality, series_number, series_description FROM imaging_series
        WHERE study_uid = $1 ORDER BY series_number NULLS LAST, series_uid`,
      [s.study_uid],
    );
    const { rows: instances } = await this.#o.db.query<{
      series_uid: string;
      sop_instance_uid: string;
      sop_class_uid: string;
      instance_number: number | null;
    }>(
      `SELECT series_uid, sop_instance_uid, sop_class_uid, instance_number FROM imaging_instance
        WHERE study_uid = $1 AND current ORDER BY instance_number NULLS LAST, sop_instance_uid`,
      [s.study_uid],
    );
    const dicom = (code: string) => ({ system: 'http://dicom.nema.org/resources/ontology/DCM', code });
    const modalities = [...new Set(series.map((x) => x.modality).filter((m): m is string => !!m))];
    const resource: ImagingStudy = {
      resourceType: 'ImagingStudy',
      id: s.study_uid,
      meta: { source: `${s.source ?? 'dicom'}#study/${s.study_uid}` },
      identifier: [
        { system: 'urn:dicom:uid', value: `urn:oid:${s.study_uid}` },
        ...(s.accession_number
          ? [
              {
                type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'ACSN' }] },
                value: s.accession_number,
              },
            ]
          : []),
      ],
      status: 'available',
      subject: { reference: patientRef },
      ...(s.study_date && /^\d{8}$/.test(s.study_date)
        ? { started: dicomDateTime(s.study_date, s.study_time, this.#o.utcOffset ?? '+08:00') }
        : {}),
      ...(modalities.length ? { modality: modalities.map(dicom) } : {}),
      ...(s.study_description ? { description: s.study_description } : {}),
      numberOfSeries: series.length,
      numberOfInstances: instances.length,
      series: series.map((x) => {
        const own = instances.filter((i) => i.series_uid === x.series_uid);
        return {
          uid: x.series_uid,
          ...(x.series_number !== null ? { number: x.series_number } : {}),
          modality: dicom(x.modality ?? 'OT'),
          ...(x.series_description ? { description: x.series_description } : {}),
          numberOfInstances: own.length,
          instance: own.map((i) => ({
            uid: i.sop_instance_uid,
            sopClass: { system: 'urn:ietf:rfc:3986', code: `urn:oid:${i.sop_class_uid}` },
            ...(i.instance_number !== null ? { number: i.instance_number } : {}),
          })),
        };
      }),
    };
    const r = await this.#o.records.update('ImagingStudy', s.study_uid, resource);
    if (!r.ok) return { ok: false, note: `ImagingStudy not written: ${r.error.issues.map((i) => i.message).join('; ')}` };
    return { ok: true };
  }
}

/** DICOM PN (family^given^middle^prefix^suffix, groups split by '=') as a FHIR HumanName. */
function humanName(pn: string): NonNullable<Patient['name']>[number] {
  const [alphabetic = '', ideographic = ''] = pn.split('=');
  const use = ideographic || alphabetic;
  const [family = '', given = '', middle = ''] = use.split('^');
  return {
    use: 'official',
    ...(family ? { family } : {}),
    ...(given || middle ? { given: [given, middle].filter(Boolean) } : {}),
    text: pn,
  };
}

function dicomDateTime(date: string, time: string | null, offset: string): string {
  const d = `${date.slice(0, 4)}-${date.slice(4, 6)}-${date.slice(6, 8)}`;
  const t = time?.match(/^(\d{2})(\d{2})?(\d{2})?/);
  return t ? `${d}T${t[1]}:${t[2] ?? '00'}:${t[3] ?? '00'}${offset}` : d;
}
