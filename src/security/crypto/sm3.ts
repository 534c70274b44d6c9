// SM3 (GB/T 32905, GM/T 0004) and HMAC-SM3, from Node's OpenSSL.
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';

export function sm3(...parts: Uint8Array[]): Buffer {
  const h = createHash('sm3');
  for (const p of parts) h.update(p);
  return h.digest();
}

export function hmacSm3(key: Uint8Array, ...parts: Uint8Array[]): Buffer {
  const h = createHmac('sm3', key);
  for (const p of parts) h.update(p);
  return h.digest();
}

/** Constant-time equality of two MACs or tags (false on different lengths). */
export function equalConstantTime(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
