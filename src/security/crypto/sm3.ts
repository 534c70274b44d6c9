// SM3 (GB/T 32905, GM/T 0004) and HMAC-SM3, from Node's OpenSSL.
import { createHash, createHmac, hash, timingSafeEqual, type Hash } from 'node:crypto';

export function sm3(...parts: Uint8Array[]): Buffer {
  // The one-shot hash() skips the streaming object: much faster for the many small inputs of Merkle trees.
  if (parts.length === 1) return hash('sm3', parts[0]!, 'buffer');
  const h = createHash('sm3');
  for (const p of parts) h.update(p);
  return h.digest();
}

/**
 * HMAC-SM3 with the key schedule done once (RFC 2104 inner/outer states copied per
 * message): for MACing many small messages under one key.
 */
export function hmacSm3Keyed(key: Uint8Array): (...parts: Uint8Array[]) => Buffer {
  const block = 64;
  let k: Buffer = Buffer.from(key);
  if (k.length > block) k = sm3(k);
  const padded = Buffer.alloc(block);
  k.copy(padded);
  const inner: Hash = createHash('sm3').update(padded.map((b) => b ^ 0x36));
  const outer: Hash = createHash('sm3').update(padded.map((b) => b ^ 0x5c));
  return (...parts) => {
    const i = inner.copy();
    for (const p of parts) i.update(p);
    return outer.copy().update(i.digest()).digest();
  };
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
