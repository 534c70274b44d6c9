// Typed crypto errors. Every failure names what is wrong; none leaks key material.

export type CryptoErrorCode =
  | 'bad-key' // wrong size, wrong curve, not a key
  | 'bad-pem' // unparsable PEM/DER
  | 'bad-input' // wrong IV/nonce size, malformed argument
  | 'truncated' // ciphertext or envelope shorter than its structure
  | 'auth-failed' // tag or MAC mismatch: tampered data or wrong key
  | 'decrypt-failed' // padding/structure error after decryption: tampered data or wrong key
  | 'unknown-algorithm'
  | 'unsupported-version';

export class CryptoError extends Error {
  readonly code: CryptoErrorCode;
  constructor(code: CryptoErrorCode, message: string) {
    super(message);
    this.name = 'CryptoError';
    this.code = code;
  }
}

export function requireLength(
  name: string,
  value: Uint8Array,
  lengths: readonly number[],
  code: CryptoErrorCode = 'bad-input',
): void {
  if (!lengths.includes(value.length))
    throw new CryptoError(code, `${name} must be ${lengths.join(' or ')} bytes, got ${value.length}`);
}
