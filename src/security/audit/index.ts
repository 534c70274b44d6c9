export { AuditLog, cosign, entryMac, checkpointStatement } from './audit-log.ts';
export type { AuditLogOptions, AuditSigner, Checkpoint, AuditAppendError } from './audit-log.ts';
export { verifyAuditLog } from './verify.ts';
export type { AuditReport, VerifyOptions } from './verify.ts';
export { auditEventSchema, canonicalBytes } from './event.ts';
export type { AuditEvent } from './event.ts';
export { leafHash, rootOf, inclusionProof, verifyInclusion, consistencyProof, verifyConsistency } from './merkle.ts';
