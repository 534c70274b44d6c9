// The key management service of a site: its master key split among custodians (Shamir) and
// unsealed by their shares, named keys with versions, rotation and minimum versions, envelope
// encryption and data keys, shares kept for other sites, and destruction on custodians' signed
// approval with a certificate. Needs db and crypto.
export { Kms } from './kms.ts';

export type { KmsContext, KmsStatus, KeyInfo } from './kms.ts';
export { KmsError } from './errors.ts';
export type { KmsErrorCode } from './errors.ts';
export { unwrapShare, parseWrappedShare, encodeShareToken, decodeShareToken, signShare } from './shares.ts';
export type { Custodian, WrappedShare, ShareToken } from './shares.ts';
export { verifyCertificate, parseRequest, parseApproval, approveRequest, requestDigest } from './certificate.ts';
export type {
  CertificateCheck,
  DestructionApproval,
  DestructionCertificate,
  DestructionDocument,
  DestructionRequest,
  SiteWipe,
} from './certificate.ts';
export type { WipeReport } from './destruction.ts';
