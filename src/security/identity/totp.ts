// Time-based one-time passwords (RFC 6238 over RFC 4226 HOTP): HMAC-SHA1, 30 s steps, six
// digits, as authenticator apps expect; the OTP of GM/T 0021 (SM3) is the 'sm3' variant.
import { createHmac, randomBytes } from 'node:crypto';
import { sm3 } from '../crypto/index.ts';

export type OtpAlgorithm = 'sha1' | 'sm3';

export function newTotpSecret(): Buffer {
  return randomBytes(20);
}

const B32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
export function base32(buf: Uint8Array): string {
  let bits = 0;
  let value = 0;
  let out = '';
  for (const b of buf) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += B32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += B32[(value << (5 - bits)) & 31];
  return out;
}

/** The bytes of an RFC 4648 base32 string (no padding, as authenticator URIs carry it). */
export function base32Decode(s: string): Buffer {
  let bits = 0;
  let value = 0;
  const out: number[] = [];
  for (const ch of s.toUpperCase()) {
    const v = B32.indexOf(ch);
    if (v < 0) throw new RangeError(`not a base32 character: ${JSON.stringify(ch)}`);
    value = ((value << 5) | v) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 255);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

export function hotp(secret: Uint8Array, counter: bigint, opts: { digits?: number; algorithm?: OtpAlgorithm } = {}): string {
  const digits = opts.digits ?? 6;
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(counter);
  // GM/T 0021 derives the OTP from SM3 over key and time factor; the truncation is the same.
  const mac = (opts.algorithm ?? 'sha1') === 'sm3' ? sm3(secret, msg) : createHmac('sha1', secret).update(msg).digest();
  const offset = mac[mac.length - 1]! & 0x0f;
  const code = ((mac[offset]! & 0x7f) << 24) | (mac[offset + 1]! << 16) | (mac[offset + 2]! << 8) | mac[offset + 3]!;
  return String(code % 10 ** digits).padStart(digits, '0');
}

export function totpStep(timeMs: number, stepSeconds = 30): bigint {
  return BigInt(Math.floor(timeMs / 1000 / stepSeconds));
}

/** The step (within +-window) whose code matches, or undefined. */
export function matchTotp(
  secret: Uint8Array,
  code: string,
  timeMs: number,
  opts: { window?: number; algorithm?: OtpAlgorithm } = {},
): bigint | undefined {
  if (!/^\d{6}$/.test(code)) return undefined;
  const now = totpStep(timeMs);
  const w = opts.window ?? 1;
  for (let d = -w; d <= w; d++) {
    const step = now + BigInt(d);
    if (hotp(secret, step, { algorithm: opts.algorithm ?? 'sha1' }) === code) return step;
  }
  return undefined;
}
