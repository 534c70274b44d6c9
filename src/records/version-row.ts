// The shape of a stored version, shared by the local write path, the apply path and the
// EMPI directory (kept apart so none of them imports another for a type).
import type { Resource } from '@medplum/fhirtypes';
import type { DataClass } from '../region/index.ts';

export interface VersionRow {
  resourceType: string;
  id: string;
  versionId: string;
  hlc: bigint;
  parentHlc: bigint | null;
  /** The parent version's origin site (null with no parent, or for versions written before it was kept). */
  parentOrigin: string | null;
  originSite: string;
  epoch: bigint;
  shard: string | null;
  dataClass: DataClass;
  patientId: string | null;
  deleted: boolean;
  lastUpdated: string;
  /** null for a tombstone. */
  content: Resource | null;
}

/** A newly placed patient's EMPI entry, written by the same statement. */
export interface EmpiEntry {
  patientId: string;
  shard: string;
  method: string;
  reason: string;
  /** Blind indexes of the patient's regional identifiers (empi.ts). */
  blind?: string[];
}
