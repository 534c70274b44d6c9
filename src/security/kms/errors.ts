// KMS errors in the domain's vocabulary. Messages say what is wrong and what to do.

export type KmsErrorCode =
  | 'not-initialized'
  | 'already-initialized'
  | 'sealed'
  | 'bad-share' // tampered or wrong share: the master key check value does not match
  | 'share-of-other-key'
  | 'duplicate-share'
  | 'untrusted-owner' // a share deposit from a site whose service key is not registered here
  | 'unknown-key'
  | 'key-exists'
  | 'version-destroyed'
  | 'version-below-minimum'
  | 'not-exportable'
  | 'not-approved' // a destruction without the signed approval of two custodians (or an expired request)
  | 'bad-request';

export class KmsError extends Error {
  readonly code: KmsErrorCode;
  constructor(code: KmsErrorCode, message: string) {
    super(message);
    this.name = 'KmsError';
    this.code = code;
  }
}
