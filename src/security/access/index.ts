// Access control over the record store: roles and attributes (policies as versioned data),
// care relationships, grants and break-glass, field rules, masking judged on what a role sees
// as a whole, de-identified answers for research and statistics, and every decision recorded.
// RecordAccess is the per-request view of the store every route uses. Needs records and identity.
export { AccessControl } from './access-control.ts';
export type { AccessControlOptions, AccessError, AccessErrorKind, Explanation, Principal } from './access-control.ts';
export { RecordAccess } from './record-access.ts';

export { MIN_RESIDENT_ID_CANDIDATES } from './whole-resource.ts';
export type { DecisionRecord, Requester } from './record-access.ts';
export { decide, defaultPurpose } from './decide.ts';
export type { Caller, Decision } from './decide.ts';
export { MASKING_NAME } from './documents.ts';
export type { DocumentKind, DocumentVersion, DocumentError } from './documents.ts';
export { Grants } from './grants.ts';
export type { Grant, GrantKind } from './grants.ts';
export { AGE_BAND_URL, DIVISION_SYSTEM, PSEUDONYM_SYSTEM } from './masking.ts';
export { DEFAULT_POLICIES } from './defaults.ts';
export * from './policy.ts';
