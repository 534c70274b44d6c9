export { Kms } from './kms.ts';
export { kcvOf } from './master-key.ts';
export type { KmsContext, KmsStatus, KeyInfo } from './kms.ts';
export { KmsError } from './errors.ts';
export type { KmsErrorCode } from './errors.ts';
export {
  wrapShare,
  unwrapShare,
  parseWrappedShare,
  encodeShareToken,
  decodeShareToken,
  signShare,
  shareSignedBy,
} from './shares.ts';
export type { Custodian, WrappedShare, ShareToken } from './shares.ts';
export {
  signCertificate,
  verifyCertificate,
  canonicalDocument,
  canonicalRequest,
  parseRequest,
  parseApproval,
  approveRequest,
  requestDigest,
} from './certificate.ts';
export type {
  CertificateCheck,
  DestructionApproval,
  DestructionCertificate,
  DestructionDocument,
  DestructionRequest,
  SiteWipe,
} from './certificate.ts';
export type { WipeReport } from './destruction.ts';
