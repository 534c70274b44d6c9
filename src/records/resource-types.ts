// The resource types this server stores, and how each belongs to a patient (the
// patient compartment decides the home shard of a record).
import type { Reference, Resource } from '@medplum/fhirtypes';

export const SUPPORTED_TYPES = [
  'Patient',
  'Practitioner',
  'Organization',
  'Encounter',
  'Observation',
  'Condition',
  'Procedure',
  'MedicationRequest',
  'ServiceRequest',
  'DiagnosticReport',
  'DocumentReference',
  'AllergyIntolerance',
  'ImagingStudy',
  'Binary',
] as const;

export type SupportedType = (typeof SUPPORTED_TYPES)[number];

const SUPPORTED = new Set<string>(SUPPORTED_TYPES);
export function isSupportedType(t: string): t is SupportedType {
  return SUPPORTED.has(t);
}

/** The element that points at the patient, per compartment resource type. */
const PATIENT_LINK: Partial<Record<SupportedType, string>> = {
  Encounter: 'subject',
  Observation: 'subject',
  Condition: 'subject',
  Procedure: 'subject',
  MedicationRequest: 'subject',
  ServiceRequest: 'subject',
  DiagnosticReport: 'subject',
  DocumentReference: 'subject',
  AllergyIntolerance: 'patient',
  ImagingStudy: 'subject',
  Binary: 'securityContext',
};

/** Whether records of this type belong to a patient (Patient itself included). */
export function inPatientCompartment(type: string): boolean {
  return type === 'Patient' || (isSupportedType(type) && PATIENT_LINK[type] !== undefined);
}

/**
 * The patient a resource belongs to: itself for a Patient, else the id behind its patient
 * link when that link is a local `Patient/<id>` reference.
 */
export function patientOf(resource: Resource): { patientId?: string; expression?: string } {
  if (resource.resourceType === 'Patient') return resource.id ? { patientId: resource.id } : {};
  const field = PATIENT_LINK[resource.resourceType as SupportedType];
  if (!field) return {};
  const ref = (resource as unknown as Record<string, Reference | undefined>)[field]?.reference;
  const m = ref ? /^Patient\/([A-Za-z0-9\-.]{1,64})$/.exec(ref) : null;
  return m ? { patientId: m[1]!, expression: `${resource.resourceType}.${field}` } : {};
}
