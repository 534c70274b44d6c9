// SM2 (GB/T 32918, GM/T 0003) signatures and encryption over sm-crypto-v2, wrapped so that:
// the message is always hashed with Z (user ID, default 1234567812345678); verification of
// malformed input returns false; ciphertexts carry an explicit C1 encoding (04 || x || y).
import { sm2 } from 'sm-crypto-v2';
import { CryptoError } from './errors.ts';
import type { Sm2PrivateKey, Sm2PublicKey } from './sm2-keys.ts';

export const DEFAULT_SM2_USER_ID = '1234567812345678';

export interface Sm2SignOptions {
  userId?: string;
  /** 'der' (ASN.1 SEQUENCE of r, s: what OpenSSL emits) or 'raw' (r || s, 64 bytes). */
  format?: 'der' | 'raw';
  /** Fixed nonce, for the standard's test vectors only. */
  fixedK?: Uint8Array;
}

export function sm2Sign(key: Sm2PrivateKey, message: Uint8Array, opts: Sm2SignOptions = {}): Buffer {
  const pointPool = opts.fixedK ? [fixedPoint(opts.fixedK)] : undefined;
  const raw = Buffer.from(
    sm2.doSignature(message, key.scalarHex(), {
      hash: true,
      der: false,
      publicKey: key.publicKey.hex,
      userId: opts.userId ?? DEFAULT_SM2_USER_ID,
      ...(pointPool ? { pointPool } : {}),
    }),
    'hex',
  );
  return (opts.format ?? 'der') === 'der' ? rawToDer(raw) : raw;
}

/**
 * True only for a valid signature; anything malformed is simply false. DER is parsed
 * strictly (one canonical encoding per signature), so a signature cannot be re-encoded
 * into a second valid byte string.
 */
export function sm2Verify(
  key: Sm2PublicKey,
  message: Uint8Array,
  signature: Uint8Array,
  opts: { userId?: string; format?: 'der' | 'raw' } = {},
): boolean {
  const raw = (opts.format ?? 'der') === 'der' ? derToRaw(signature) : signature.length === 64 ? signature : undefined;
  if (!raw) return false;
  try {
    return sm2.doVerifySignature(message, Buffer.from(raw).toString('hex'), key.precomputed, {
      hash: true,
      der: false,
      userId: opts.userId ?? DEFAULT_SM2_USER_ID,
    });
  } catch {
    return false;
  }
}

/** r || s (32 + 32) -> DER SEQUENCE { INTEGER r, INTEGER s } with minimal integers. */
export function rawToDer(raw: Uint8Array): Buffer {
  const int = (b: Uint8Array) => {
    let i = 0;
    while (i < b.length - 1 && b[i] === 0) i++;
    const v = b.subarray(i);
    const body = v[0]! & 0x80 ? Buffer.concat([Buffer.from([0]), v]) : Buffer.from(v);
    return Buffer.concat([Buffer.from([0x02, body.length]), body]);
  };
  const seq = Buffer.concat([int(raw.subarray(0, 32)), int(raw.subarray(32, 64))]);
  return Buffer.concat([Buffer.from([0x30, seq.length]), seq]);
}

/** Strict DER -> r || s, or undefined for anything non-canonical. */
export function derToRaw(der: Uint8Array): Buffer | undefined {
  if (der.length < 8 || der[0] !== 0x30 || der[1] !== der.length - 2) return undefined;
  const out = Buffer.alloc(64);
  let pos = 2;
  for (const slot of [0, 32]) {
    if (der[pos] !== 0x02) return undefined;
    const len = der[pos + 1]!;
    const start = pos + 2;
    if (len < 1 || len > 33 || start + len > der.length) return undefined;
    const v = der.subarray(start, start + len);
    if (v[0]! & 0x80) return undefined; // negative
    if (len > 1 && v[0] === 0 && !(v[1]! & 0x80)) return undefined; // non-minimal
    const mag = v[0] === 0 ? v.subarray(1) : v;
    if (mag.length > 32) return undefined;
    out.set(mag, slot + 32 - mag.length);
    pos = start + len;
  }
  return pos === der.length ? out : undefined;
}

export type Sm2CipherFormat = 'raw' | 'asn1';

/**
 * SM2 encryption in C1C3C2 order. 'raw' is 04 || x1 || y1 || C3 (32) || C2;
 * 'asn1' is the GM/T 0009 SEQUENCE { x INTEGER, y INTEGER, hash OCTET STRING, cipher OCTET STRING }.
 */
export function sm2Encrypt(key: Sm2PublicKey, plaintext: Uint8Array, opts: { format?: Sm2CipherFormat } = {}): Buffer {
  if (plaintext.length === 0) throw new CryptoError('bad-input', 'SM2 cannot encrypt an empty message');
  if ((opts.format ?? 'raw') === 'asn1') return Buffer.from(sm2.doEncrypt(plaintext, key.hex, 1, { asn1: true }), 'hex');
  // The library omits the point-format byte; medmesh's raw form always carries it.
  return Buffer.from(`04${sm2.doEncrypt(plaintext, key.hex, 1)}`, 'hex');
}

export function sm2Decrypt(key: Sm2PrivateKey, ciphertext: Uint8Array, opts: { format?: Sm2CipherFormat } = {}): Buffer {
  const format = opts.format ?? 'raw';
  let input: string;
  if (format === 'raw') {
    if (ciphertext.length < 1 + 64 + 32 + 1)
      throw new CryptoError('truncated', `SM2 ciphertext must be at least 98 bytes, got ${ciphertext.length}`);
    if (ciphertext[0] !== 4) throw new CryptoError('bad-input', 'SM2 ciphertext must start with an uncompressed C1 point (0x04)');
    input = Buffer.from(ciphertext.subarray(1)).toString('hex');
  } else input = Buffer.from(ciphertext).toString('hex');
  let out: Uint8Array;
  try {
    out = sm2.doDecrypt(input, key.scalarHex(), 1, { output: 'array', asn1: format === 'asn1' });
  } catch {
    throw new CryptoError('decrypt-failed', 'SM2 ciphertext is malformed or was made for another key');
  }
  // The library signals a C3 mismatch with an empty result.
  if (out.length === 0)
    throw new CryptoError('auth-failed', 'SM2 ciphertext hash (C3) does not match: tampered data or wrong key');
  return Buffer.from(out);
}

function fixedPoint(k: Uint8Array): { k: bigint; x1: bigint } {
  const kHex = Buffer.from(k).toString('hex');
  const kG = sm2.getPublicKeyFromPrivateKey(kHex);
  return { k: BigInt(`0x${kHex}`), x1: BigInt(`0x${kG.slice(2, 66)}`) };
}
