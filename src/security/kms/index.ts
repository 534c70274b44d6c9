export { Kms, kcvOf } from './kms.ts';
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
export { signCertificate, verifyCertificate, canonicalDocument } from './certificate.ts';
export type { DestructionCertificate, DestructionDocument, SiteWipe } from './certificate.ts';
