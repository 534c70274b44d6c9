// A self-describing, versioned ciphertext: everything needed to decrypt it later (algorithm,
// key id and version, nonce, tag) travels with it, so data written today still opens after
// key rotations and algorithm changes.
//
//   "MMX1" | u16 header length | header (UTF-8 JSON) | ciphertext
//
// The header bytes are the AEAD's associated data, so no field of it can be altered.
import { randomBytes } from 'node:crypto';
import { CryptoError } from './errors.ts';
import { aes256GcmDecrypt, aes256GcmEncrypt } from './fallback.ts';
import { hmacSm3, equalConstantTime } from './sm3.ts';
import { sm4CbcDecrypt, sm4CbcEncrypt, sm4GcmDecrypt, sm4GcmEncrypt } from './sm4.ts';

export const ENVELOPE_ALGORITHMS = ['SM4-GCM', 'SM4-CBC-HMAC-SM3', 'AES-256-GCM'] as const;
export type EnvelopeAlgorithm = (typeof ENVELOPE_ALGORITHMS)[number];

/** national: SM4 first (regional standard); international: the AES fallback. */
export type CryptoPolicy = 'national' | 'international';
export function algorithmFor(policy: CryptoPolicy): EnvelopeAlgorithm {
  return policy === 'national' ? 'SM4-GCM' : 'AES-256-GCM';
}

export function keyBytesFor(alg: EnvelopeAlgorithm): number {
  return alg === 'SM4-GCM' ? 16 : 32;
}

export interface EnvelopeHeader {
  v: 1;
  alg: EnvelopeAlgorithm;
  kid: string;
  kv: number;
  /** base64 nonce/IV */
  iv: string;
  /** base64 tag or MAC */
  tag: string;
}

const MAGIC = Buffer.from('MMX1');

export function sealEnvelope(
  opts: { alg: EnvelopeAlgorithm; keyId: string; keyVersion: number; key: Uint8Array },
  plaintext: Uint8Array,
  aad: Uint8Array = new Uint8Array(0),
): Buffer {
  const iv = randomBytes(opts.alg === 'SM4-CBC-HMAC-SM3' ? 16 : 12);
  // The tag is not known before encryption; it is excluded from the authenticated header.
  const base = { v: 1 as const, alg: opts.alg, kid: opts.keyId, kv: opts.keyVersion, iv: iv.toString('base64') };
  const authData = Buffer.concat([Buffer.from(JSON.stringify(base)), aad]);
  let ciphertext: Buffer;
  let tag: Buffer;
  switch (opts.alg) {
    case 'SM4-GCM':
      ({ ciphertext, tag } = sm4GcmEncrypt(opts.key, iv, plaintext, authData));
      break;
    case 'AES-256-GCM':
      ({ ciphertext, tag } = aes256GcmEncrypt(opts.key, iv, plaintext, authData));
      break;
    case 'SM4-CBC-HMAC-SM3': {
      const { enc, mac } = splitCbcKey(opts.key);
      ciphertext = sm4CbcEncrypt(enc, iv, plaintext);
      tag = hmacSm3(mac, authData, ciphertext);
      break;
    }
  }
  const header = Buffer.from(JSON.stringify({ ...base, tag: tag.toString('base64') } satisfies EnvelopeHeader));
  const len = Buffer.alloc(2);
  len.writeUInt16BE(header.length);
  return Buffer.concat([MAGIC, len, header, ciphertext]);
}

export function readEnvelopeHeader(envelope: Uint8Array): { header: EnvelopeHeader; body: Buffer } {
  const buf = Buffer.from(envelope.buffer, envelope.byteOffset, envelope.byteLength);
  if (buf.length < 6) throw new CryptoError('truncated', 'envelope is shorter than its fixed header');
  if (!buf.subarray(0, 4).equals(MAGIC)) {
    if (buf.subarray(0, 2).toString() === 'MM')
      throw new CryptoError(
        'unsupported-version',
        `envelope version ${buf.subarray(2, 4).toString()} is not supported by this medmesh`,
      );
    throw new CryptoError('bad-input', 'not a medmesh envelope');
  }
  const len = buf.readUInt16BE(4);
  if (buf.length < 6 + len) throw new CryptoError('truncated', 'envelope header is truncated');
  let header: EnvelopeHeader;
  try {
    header = JSON.parse(buf.subarray(6, 6 + len).toString('utf8')) as EnvelopeHeader;
  } catch {
    throw new CryptoError('bad-input', 'envelope header is not valid JSON');
  }
  if (header.v !== 1)
    throw new CryptoError('unsupported-version', `envelope header version ${String(header.v)} is not supported`);
  if (!ENVELOPE_ALGORITHMS.includes(header.alg))
    throw new CryptoError(
      'unknown-algorithm',
      `envelope algorithm ${String(header.alg)} is not known (known: ${ENVELOPE_ALGORITHMS.join(', ')})`,
    );
  if (
    typeof header.kid !== 'string' ||
    !Number.isInteger(header.kv) ||
    typeof header.iv !== 'string' ||
    typeof header.tag !== 'string'
  )
    throw new CryptoError('bad-input', 'envelope header lacks kid, kv, iv or tag');
  return { header, body: buf.subarray(6 + len) };
}

export function openEnvelope(envelope: Uint8Array, key: Uint8Array, aad: Uint8Array = new Uint8Array(0)): Buffer {
  const { header, body } = readEnvelopeHeader(envelope);
  // Rebuilt in the sealing order, so the associated data is the same bytes.
  const base = { v: header.v, alg: header.alg, kid: header.kid, kv: header.kv, iv: header.iv };
  const iv = Buffer.from(header.iv, 'base64');
  const tag = Buffer.from(header.tag, 'base64');
  const authData = Buffer.concat([Buffer.from(JSON.stringify(base)), aad]);
  switch (header.alg) {
    case 'SM4-GCM':
      return sm4GcmDecrypt(key, iv, body, tag, authData);
    case 'AES-256-GCM':
      return aes256GcmDecrypt(key, iv, body, tag, authData);
    case 'SM4-CBC-HMAC-SM3': {
      const { enc, mac } = splitCbcKey(key);
      if (!equalConstantTime(hmacSm3(mac, authData, body), tag))
        throw new CryptoError('auth-failed', 'envelope MAC does not match: the data or the key is wrong');
      return sm4CbcDecrypt(enc, iv, body);
    }
  }
}

/** SM4-CBC + HMAC-SM3 takes 32 bytes: 16 for encryption, 16 for the MAC. */
function splitCbcKey(key: Uint8Array): { enc: Uint8Array; mac: Uint8Array } {
  if (key.length !== 32)
    throw new CryptoError('bad-key', `SM4-CBC-HMAC-SM3 needs a 32-byte key (16 encryption + 16 MAC), got ${key.length}`);
  return { enc: key.subarray(0, 16), mac: key.subarray(16) };
}
