// Image bytes are core data (DESIGN.md §2): a site keeps them only for patients whose home
// shard it may hold. The home shard is the record's when the patient is known here (by
// resident ID, else the sender's patient ID), else where a new patient would be placed
// (resident ID division, else this site's default shard). Checked per instance at ingest,
// with the answer kept a minute per patient ID so a study costs one lookup.
import type { Patient } from '@medplum/fhirtypes';
import { HOME_SHARD_TAG, type RecordStore } from '../records/index.ts';
import { parseResidentId, placePatient, type Region } from '../region/index.ts';

export const DICOM_PATIENT_ID_SYSTEM = 'urn:medmesh:dicom-patient-id';

export interface ImageResidencyOptions {
  records: RecordStore;
  region: Region;
  siteId: string;
  /** How long an answer per patient ID is kept (default 60 s). */
  cacheMs?: number;
}

/** The identifiers a DICOM Patient ID stands for: a resident ID when it is one, and the sender's ID. */
export function dicomPatientIdentifiers(
  region: Region,
  pid: string,
): { resident?: { system: string; value: string }; local: { system: string; value: string } } {
  const resident = parseResidentId(pid).ok
    ? { system: region.config.identifierSystems.residentId, value: pid.toUpperCase() }
    : undefined;
  return { ...(resident ? { resident } : {}), local: { system: DICOM_PATIENT_ID_SYSTEM, value: pid } };
}

/** The Patient this site's record holds for a DICOM Patient ID, if any. */
export async function findDicomPatient(
  records: RecordStore,
  region: Region,
  pid: string,
): Promise<{ ok: true; patient: Patient | undefined } | { ok: false; error: string }> {
  const { resident, local } = dicomPatientIdentifiers(region, pid);
  for (const id of [resident, local]) {
    if (!id) continue;
    const found = await records.search('Patient', [['identifier', `${id.system}|${id.value}`]], { baseUrl: 'urn:medmesh' });
    if (!found.ok) return { ok: false, error: `patient lookup failed: ${found.error.issues[0]?.message ?? found.error.kind}` };
    const match = found.value.entry?.[0]?.resource;
    if (match?.id) return { ok: true, patient: match as Patient };
  }
  return { ok: true, patient: undefined };
}

export class ImageResidency {
  readonly #o: ImageResidencyOptions;
  readonly #cache = new Map<string, { at: number; refusal: string | undefined }>();

  constructor(opts: ImageResidencyOptions) {
    this.#o = opts;
  }

  /** The id of the FHIR Patient held here for a DICOM Patient ID (not cached: a record may appear any time). */
  async patientOf(pid: string): Promise<{ ok: true; id: string | undefined } | { ok: false; error: string }> {
    const found = await findDicomPatient(this.#o.records, this.#o.region, pid);
    return found.ok ? { ok: true, id: found.patient?.id } : found;
  }

  /** Undefined when this site may keep images of the patient; else why not. */
  async refusal(patientId: string | null): Promise<string | undefined> {
    const pid = patientId?.trim() ?? '';
    const hit = this.#cache.get(pid);
    if (hit && Date.now() - hit.at < (this.#o.cacheMs ?? 60_000)) return hit.refusal;
    const refusal = await this.#check(pid);
    if (this.#cache.size >= 10_000) this.#cache.clear();
    this.#cache.set(pid, { at: Date.now(), refusal });
    return refusal;
  }

  async #check(pid: string): Promise<string | undefined> {
    const { records, region, siteId } = this.#o;
    let shard: string | undefined;
    if (pid) {
      const found = await findDicomPatient(records, region, pid);
      if (!found.ok) return found.error;
      shard = found.patient?.meta?.tag?.find((t) => t.system === HOME_SHARD_TAG)?.code;
    }
    if (!shard) {
      const { resident } = pid ? dicomPatientIdentifiers(region, pid) : {};
      const placed = await placePatient(
        { resourceType: 'Patient', ...(resident ? { identifier: [resident] } : {}) },
        { region, receivingSite: siteId, organizationShard: () => Promise.resolve(undefined) },
      );
      if (!placed.ok) return `site ${siteId} cannot place patient ${pid || '(no Patient ID)'}: ${placed.error.message}`;
      shard = placed.placement.shard;
    }
    if (!region.mayHold(siteId, region.classOf('ImagingStudy'), shard)) {
      const home = region.activeSiteFor(shard);
      return (
        `patient ${pid || '(no Patient ID)'} belongs to shard ${shard}, ` +
        `whose data site ${siteId} may not hold${home ? `; send to site ${home}` : ''}`
      );
    }
    return undefined;
  }
}
