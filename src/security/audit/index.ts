export { AuditLog, cosign, checkpointStatement } from './audit-log.ts';
export { entryMac } from './appender.ts';
export type { AuditLogOptions, AuditSigner, Checkpoint, AuditAppendError } from './audit-log.ts';
export { verifyAuditLog } from './verify.ts';
export type { AuditReport, VerifyOptions } from './verify.ts';
export { auditEventSchema, canonicalBytes } from './event.ts';
export type { AuditEvent } from './event.ts';
export { leafHash, rootOf, inclusionProof, verifyInclusion, consistencyProof, verifyConsistency } from './merkle.ts';
export { toFhirAuditEvent, parseAuditQuery, readAuditEvent, searchAuditEvents } from './fhir-view.ts';
export type { AuditQuery } from './fhir-view.ts';
export { complianceReport, renderComplianceHtml } from './report.ts';
export type { ComplianceReport } from './report.ts';
export {
  exportAuditSegments,
  verifySegmentFile,
  pruneExportedAudit,
  checkArchivedSegments,
  SEGMENT_FORMAT,
} from './retention.ts';
export type { SegmentExport, SegmentCheck, ArchivedSegmentCheck } from './retention.ts';
export { AuditWitness, askWitnesses, latestHeld, verifyWithPeers } from './witness.ts';
export type { AuditWitnessOptions, WitnessAlarmKind, WitnessAnswer, WitnessPeerState } from './witness.ts';
export { checkpointJson, witnessStatement, parseSignedCheckpoint, WitnessClient } from './witness-wire.ts';
export type { CheckpointJson, SignedCheckpoint } from './witness-wire.ts';
