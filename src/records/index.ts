// The FHIR R4 record store of a site: validation, placement on the patient's home shard,
// every version kept (history), the current version and open conflicts as a pure function of
// the versions, search, Bundles, the EMPI directory, and versions applied from other sites.
// Every write appends its replication change in the same transaction. Needs db, clock and
// region; knows nothing of roles (security/access wraps it) or of HTTP.
export { RecordStore } from './record-store.ts';
export type { WriteOutcome, HistoryOptions } from './record-store.ts';
export type { RecordsContext } from './context.ts';
export type { RecordError, RecordErrorKind, RecordIssue, Result } from './errors.ts';
export { fail, ok } from './errors.ts';
export { processBundle, stripEtag } from './bundle.ts';
export type { BundleStore } from './bundle.ts';
export type { AccessFilter, RowScope } from './access-filter.ts';
export { patientInScope, rowScopeSql } from './access-filter.ts';
export type { SearchRequest } from './search-query.ts';
export { loadFhirDefinitions } from './fhir-definitions.ts';
export { buildSearchParamTable } from './search-params.ts';
export type { SearchParamTable, IndexedParam } from './search-params.ts';
export { SUPPORTED_TYPES, inPatientCompartment, patientOf } from './resource-types.ts';
export { HOME_SHARD_TAG } from './prepare-write.ts';
export { createR4Validator } from './r4-validator.ts';
export type { R4Validator } from './r4-validator.ts';
export { applyVersions } from './apply-versions.ts';
export { recomputeResources, repairVersions } from './derived-state.ts';
export type { ResourceRef } from './derived-state.ts';
export { EMPI_BLIND_INDEX_KEY, findByBlindIndex } from './empi.ts';
export type { RemoteVersion, ApplyResult } from './apply-versions.ts';
export { listConflicts, markResolved } from './conflicts.ts';
export { recordEpochCuts, listFencedOut } from './epoch-review.ts';
export type { EpochCut, FencedOutVersion } from './epoch-review.ts';
export type { Conflict } from './conflicts.ts';
