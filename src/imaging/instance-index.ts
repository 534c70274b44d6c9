// The index of the imaging store: an instance's current row, and study, series and instance
// written in one statement inside the caller's transaction (each version of an instance kept,
// the current one marked).
import type { Queryable } from '../db/index.ts';
import type { BlobStore } from './blob-store.ts';
import type { DicomJson, InstanceAttributes } from './dicom-attributes.ts';

export interface InstanceRow {
  sop_instance_uid: string;
  sop_class_uid: string;
  study_uid: string;
  series_uid: string;
  transfer_syntax_uid: string;
  version: number;
  sha256: string;
  size_bytes: string | number | bigint;
  blob_key: string;
  data_key: Uint8Array;
  attributes: DicomJson;
}

/** The index refuses the instance (another study holds it, or its series belongs to another study). */
export class IndexRefusal extends Error {}

/** The current copy of an instance, if any. */
export async function currentInstance(q: Queryable, sopInstanceUid: string): Promise<InstanceRow | undefined> {
  const { rows } = await q.query<InstanceRow>('SELECT * FROM imaging_instance WHERE sop_instance_uid = $1 AND current', [
    sopInstanceUid,
  ]);
  return rows[0];
}

/**
 * Writes an instance's rows (a new version if other bytes are held): its version, 'duplicate'
 * when the same bytes are held with their file, or `restored` when their file was lost.
 */
export async function writeInstanceIndex(
  tx: Queryable,
  blobs: Pick<BlobStore, 'exists'>,
  a: InstanceAttributes,
  f: { sha256: string; size: number; blobKey: string; dataKey: Buffer; source: string },
): Promise<number | 'duplicate' | { restored: number }> {
  // The current copy is locked; two first copies racing meet at the unique index on current
  // rows, and the loser is retried by the caller (then it finds the winner here).
  const prior = (
    await tx.query<InstanceRow>('SELECT * FROM imaging_instance WHERE sop_instance_uid = $1 AND current FOR UPDATE', [
      a.sopInstanceUid,
    ])
  ).rows[0];
  if (prior?.sha256 === f.sha256) {
    if (await blobs.exists(prior.blob_key)) return 'duplicate';
    // The same bytes again, and the file held for them is lost: the new file takes its place.
    await tx.query('UPDATE imaging_instance SET blob_key = $3, data_key = $4 WHERE sop_instance_uid = $1 AND version = $2', [
      a.sopInstanceUid,
      prior.version,
      f.blobKey,
      f.dataKey,
    ]);
    return { restored: prior.version };
  }
  if (prior && prior.study_uid !== a.studyInstanceUid)
    throw new IndexRefusal(`instance ${a.sopInstanceUid} is already held in study ${prior.study_uid}, not ${a.studyInstanceUid}`);
  if (prior)
    await tx.query('UPDATE imaging_instance SET current = false WHERE sop_instance_uid = $1 AND current', [a.sopInstanceUid]);
  const version = (prior?.version ?? 0) + 1;
  // Study, series and instance in one round trip; the instance row is written only if its
  // series belongs to its study (else the statement reports the series' study and the
  // transaction is refused).
  const { rows } = await tx.query<{ series_study: string; inserted: number }>(
    `WITH st AS (
       INSERT INTO imaging_study (study_uid, patient_id, patient_name, patient_birth_date, patient_sex, study_date, study_time,
                                  accession_number, study_description, study_id, referring_physician, source)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $31)
       ON CONFLICT (study_uid) DO UPDATE
         SET patient_id = excluded.patient_id, patient_name = excluded.patient_name,
             patient_birth_date = excluded.patient_birth_date, patient_sex = excluded.patient_sex,
             study_date = excluded.study_date, study_time = excluded.study_time, accession_number = excluded.accession_number,
             study_description = excluded.study_description, study_id = excluded.study_id,
             referring_physician = excluded.referring_physician, source = excluded.source, updated_at = clock_timestamp()
       RETURNING study_uid
     ), se AS (
       INSERT INTO imaging_series (series_uid, study_uid, modality, series_number, series_description)
       VALUES ($12, $1, $13, $14, $15)
       ON CONFLICT (series_uid) DO UPDATE
         SET modality = excluded.modality, series_number = excluded.series_number,
             series_description = excluded.series_description
       RETURNING study_uid
     ), ins AS (
       INSERT INTO imaging_instance (sop_instance_uid, version, current, series_uid, study_uid, sop_class_uid, instance_number,
         transfer_syntax_uid, number_of_frames, rows, columns, charset,
         size_bytes, sha256, blob_key, data_key, attributes, flag, source)
       SELECT $16, $17, true, $12, (SELECT study_uid FROM st),
              $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31
       WHERE (SELECT study_uid FROM se) = $1
       RETURNING 1
     )
     SELECT (SELECT study_uid FROM se) AS series_study, (SELECT count(*)::int FROM ins) AS inserted`,
    [
      a.studyInstanceUid,
      a.patientId,
      a.patientName,
      a.patientBirthDate,
      a.patientSex,
      a.studyDate,
      a.studyTime,
      a.accessionNumber,
      a.studyDescription,
      a.studyId,
      a.referringPhysicianName,
      a.seriesInstanceUid,
      a.modality,
      a.seriesNumber,
      a.seriesDescription,
      a.sopInstanceUid,
      version,
      a.sopClassUid,
      a.instanceNumber,
      a.transferSyntaxUid,
      a.numberOfFrames,
      a.rows,
      a.columns,
      a.specificCharacterSet,
      f.size,
      f.sha256,
      f.blobKey,
      f.dataKey,
      JSON.stringify(a.json),
      prior ? `re-sent with different bytes (version ${prior.version} had SHA-256 ${prior.sha256})` : null,
      f.source,
    ],
  );
  if (rows[0]?.inserted !== 1)
    throw new IndexRefusal(
      `series ${a.seriesInstanceUid} belongs to study ${rows[0]?.series_study ?? '?'}, not ${a.studyInstanceUid}`,
    );
  return version;
}
