export { AccessControl } from './access-control.ts';
export type { AccessControlOptions, AccessError, AccessErrorKind, Explanation, Principal } from './access-control.ts';
export { RecordAccess, maskPlan } from './record-access.ts';
export { fieldsOf } from './search-probe.ts';
export { MIN_RESIDENT_ID_CANDIDATES, maskResidentId, isResidentId } from './whole-resource.ts';
export type { DecisionRecord, Requester } from './record-access.ts';
export { decide, defaultPurpose, policiesFor } from './decide.ts';
export type { Caller, Decision } from './decide.ts';
export { AccessDocuments, MASKING_NAME } from './documents.ts';
export type { DocumentKind, DocumentVersion, DocumentError } from './documents.ts';
export { Grants, MIN_REASON, MAX_BREAK_GLASS_MINUTES } from './grants.ts';
export type { Grant, GrantKind } from './grants.ts';
export {
  maskResource,
  maskName,
  maskId,
  maskIdentifier,
  maskPhone,
  ageBand,
  AGE_BAND_URL,
  DIVISION_SYSTEM,
  PSEUDONYM_SYSTEM,
} from './masking.ts';
export { DEFAULT_POLICIES, DEFAULT_MASKING_RULES } from './defaults.ts';
export * from './policy.ts';
