// International fallback algorithms (regional standard §7.3.2): AES-256-GCM and RSA-3072
// (OAEP and PSS with SHA-256), all native.
import {
  constants,
  createCipheriv,
  createDecipheriv,
  generateKeyPairSync,
  privateDecrypt,
  publicEncrypt,
  sign,
  verify,
  type KeyObject,
} from 'node:crypto';
import { CryptoError, requireLength } from './errors.ts';
import type { GcmSealed } from './sm4.ts';

export function aes256GcmEncrypt(
  key: Uint8Array,
  nonce: Uint8Array,
  plaintext: Uint8Array,
  aad: Uint8Array = new Uint8Array(0),
): GcmSealed {
  requireLength('AES-256 key', key, [32], 'bad-key');
  requireLength('AES-GCM nonce', nonce, [12]);
  const c = createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(aad);
  const ciphertext = Buffer.concat([c.update(plaintext), c.final()]);
  return { ciphertext, tag: c.getAuthTag() };
}

export function aes256GcmDecrypt(
  key: Uint8Array,
  nonce: Uint8Array,
  ciphertext: Uint8Array,
  tag: Uint8Array,
  aad: Uint8Array = new Uint8Array(0),
): Buffer {
  requireLength('AES-256 key', key, [32], 'bad-key');
  requireLength('AES-GCM nonce', nonce, [12]);
  requireLength('AES-GCM tag', tag, [16], 'truncated');
  const d = createDecipheriv('aes-256-gcm', key, nonce);
  d.setAAD(aad);
  d.setAuthTag(tag);
  try {
    return Buffer.concat([d.update(ciphertext), d.final()]);
  } catch {
    throw new CryptoError('auth-failed', 'AES-256-GCM tag does not match: the data, its associated data or the key is wrong');
  }
}

export function rsa3072Generate(): { privateKey: KeyObject; publicKey: KeyObject } {
  return generateKeyPairSync('rsa', { modulusLength: 3072, publicExponent: 0x10001 });
}

function requireRsa3072(key: KeyObject): void {
  if (key.asymmetricKeyType !== 'rsa' || (key.asymmetricKeyDetails?.modulusLength ?? 0) < 3072)
    throw new CryptoError('bad-key', 'an RSA key of at least 3072 bits is required');
}

export function rsaOaepEncrypt(publicKey: KeyObject, plaintext: Uint8Array): Buffer {
  requireRsa3072(publicKey);
  return publicEncrypt({ key: publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, plaintext);
}

export function rsaOaepDecrypt(privateKey: KeyObject, ciphertext: Uint8Array): Buffer {
  requireRsa3072(privateKey);
  try {
    return privateDecrypt({ key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, ciphertext);
  } catch {
    throw new CryptoError('decrypt-failed', 'RSA-OAEP decryption failed: tampered data or wrong key');
  }
}

export function rsaPssSign(privateKey: KeyObject, message: Uint8Array): Buffer {
  requireRsa3072(privateKey);
  return sign('sha256', message, { key: privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
}

export function rsaPssVerify(publicKey: KeyObject, message: Uint8Array, signature: Uint8Array): boolean {
  try {
    requireRsa3072(publicKey);
    return verify('sha256', message, { key: publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, signature);
  } catch {
    return false;
  }
}
