// Material under the site's customer master key: the key check value that tells a wrong or
// tampered share from the right one, and SM4-GCM envelopes bound to what they hold.
import { CryptoError, hmacSm3, openEnvelope, sealEnvelope } from '../crypto/index.ts';
import { KmsError } from './errors.ts';

export function kcvOf(cmk: Uint8Array): string {
  return hmacSm3(cmk, Buffer.from('medmesh kcv')).subarray(0, 8).toString('hex');
}

/** Key material under the CMK: SM4-GCM envelope bound to what it is (name:version). */
export function wrapUnder(cmk: Buffer, label: string, material: Uint8Array): Buffer {
  return sealEnvelope({ alg: 'SM4-GCM', keyId: 'cmk', keyVersion: 1, key: cmk.subarray(0, 16) }, material, Buffer.from(label));
}

export function unwrapUnder(cmk: Buffer, label: string, wrapped: Uint8Array): Buffer {
  try {
    return openEnvelope(wrapped, cmk.subarray(0, 16), Buffer.from(label));
  } catch (e) {
    if (e instanceof CryptoError)
      throw new KmsError(
        'bad-request',
        `stored key material for ${label} does not open under the master key: the KMS tables were altered`,
      );
    throw e;
  }
}
