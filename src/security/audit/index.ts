// The tamper-evident audit log: append-only canonical entries with a MAC, an RFC 9162 Merkle
// tree over SM3 with signed checkpoints, the peers' witness (their checkpoints checked,
// cosigned and kept, truncation found anywhere), verification, retention export, AuditEvent
// views and compliance reports. Needs db and crypto.
export { AuditLog, cosign, checkpointStatement } from './audit-log.ts';

export type { AuditLogOptions, AuditSigner, Checkpoint, AuditAppendError } from './audit-log.ts';
export { verifyAuditLog } from './verify.ts';
export type { AuditReport, VerifyOptions } from './verify.ts';
export { canonicalBytes } from './event.ts';
export type { AuditEvent } from './event.ts';
export { leafHash, rootOf, inclusionProof, verifyInclusion, consistencyProof, verifyConsistency } from './merkle.ts';
export { parseAuditQuery, readAuditEvent, searchAuditEvents } from './fhir-view.ts';
export type { AuditQuery } from './fhir-view.ts';
export { complianceReport, renderComplianceHtml } from './report.ts';
export type { ComplianceReport } from './report.ts';
export { exportAuditSegments, verifySegmentFile, pruneExportedAudit, checkArchivedSegments } from './retention.ts';
export type { SegmentExport, SegmentCheck, ArchivedSegmentCheck } from './retention.ts';
export { AuditWitness, latestHeld, verifyWithPeers } from './witness.ts';
export type { AuditWitnessOptions, WitnessAlarmKind, WitnessAnswer, WitnessPeerState } from './witness.ts';
export { checkpointJson, witnessStatement } from './witness-wire.ts';
export type { CheckpointJson, SignedCheckpoint } from './witness-wire.ts';
