// Streaming file encryption for DICOM and EMR documents (regional standard §7.3.2: SM4-CBC),
// encrypt-then-MAC with HMAC-SM3, in constant memory whatever the file size.
//
//   "MMF1" | u16 header length | header JSON {v, alg, kid, kv, iv} | SM4-CBC ciphertext | HMAC-SM3 (32)
//
// The MAC covers header and ciphertext. Decryption streams plaintext as it goes and fails at
// the end if the MAC does not match: write to a temporary file and keep it only on success.
import { createCipheriv, createDecipheriv, createHmac, randomBytes, type Decipheriv, type Hmac } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { CryptoError } from './errors.ts';
import { equalConstantTime, hmacSm3 } from './sm3.ts';

const MAGIC = Buffer.from('MMF1');
const MAC_BYTES = 32;

export interface FileKey {
  keyId: string;
  keyVersion: number;
  /** 16- or 32-byte data key; encryption and MAC keys are derived from it. */
  key: Uint8Array;
}

export interface FileHeader {
  v: 1;
  alg: 'SM4-CBC-HMAC-SM3';
  kid: string;
  kv: number;
  iv: string;
}

function deriveKeys(dataKey: Uint8Array): { enc: Buffer; mac: Buffer } {
  if (dataKey.length !== 16 && dataKey.length !== 32)
    throw new CryptoError('bad-key', `file data key must be 16 or 32 bytes, got ${dataKey.length}`);
  return {
    enc: hmacSm3(dataKey, Buffer.from('medmesh file enc')).subarray(0, 16),
    mac: hmacSm3(dataKey, Buffer.from('medmesh file mac')),
  };
}

function headerBytes(fileKey: FileKey, iv: Buffer): Buffer {
  return Buffer.from(
    JSON.stringify({
      v: 1,
      alg: 'SM4-CBC-HMAC-SM3',
      kid: fileKey.keyId,
      kv: fileKey.keyVersion,
      iv: iv.toString('base64'),
    } satisfies FileHeader),
  );
}

export function createEncryptStream(fileKey: FileKey): Transform {
  const { enc, mac } = deriveKeys(fileKey.key);
  const iv = randomBytes(16);
  const header = headerBytes(fileKey, iv);
  const cipher = createCipheriv('sm4-cbc', enc, iv);
  const hmac = createHmac('sm3', mac);
  let started = false;
  const emit = (t: Transform, chunk: Buffer) => {
    if (chunk.length) {
      hmac.update(chunk);
      t.push(chunk);
    }
  };
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      if (!started) {
        const len = Buffer.alloc(2);
        len.writeUInt16BE(header.length);
        emit(this, Buffer.concat([MAGIC, len, header]));
        started = true;
      }
      emit(this, cipher.update(chunk));
      done();
    },
    flush(done) {
      if (!started) {
        const len = Buffer.alloc(2);
        len.writeUInt16BE(header.length);
        emit(this, Buffer.concat([MAGIC, len, header]));
      }
      emit(this, cipher.final());
      this.push(hmac.digest());
      done();
    },
  });
}

/**
 * The whole file in hand: the same `MMF1` bytes the stream writes, in one pass of the cipher
 * and one of the MAC over a single output buffer (no per-chunk copies).
 */
export function encryptFile(file: Uint8Array, fileKey: FileKey): Buffer {
  const { enc, mac } = deriveKeys(fileKey.key);
  const iv = randomBytes(16);
  const header = headerBytes(fileKey, iv);
  const bodyAt = 6 + header.length;
  // CBC with PKCS#7 padding: the ciphertext is the plaintext rounded up to the next whole block.
  const bodyLength = (Math.floor(file.byteLength / 16) + 1) * 16;
  const out = Buffer.allocUnsafe(bodyAt + bodyLength + MAC_BYTES);
  MAGIC.copy(out, 0);
  out.writeUInt16BE(header.length, 4);
  header.copy(out, 6);
  const cipher = createCipheriv('sm4-cbc', enc, iv);
  const body = cipher.update(file);
  body.copy(out, bodyAt);
  cipher.final().copy(out, bodyAt + body.length);
  createHmac('sm3', mac)
    .update(out.subarray(0, bodyAt + bodyLength))
    .digest()
    .copy(out, bodyAt + bodyLength);
  return out;
}

/** `resolveKey` gets the header's key id and version and returns the data key. */
export function createDecryptStream(resolveKey: (header: FileHeader) => Uint8Array): Transform {
  let pending = Buffer.alloc(0);
  let state: { decipher: Decipheriv; hmac: Hmac } | undefined;
  // The last 32 bytes may be the MAC: keep them back until the stream ends.
  let tail = Buffer.alloc(0);
  return new Transform({
    transform(chunk: Buffer, _enc, done: TransformCallback) {
      try {
        if (!state) {
          pending = Buffer.concat([pending, chunk]);
          if (pending.length < 6) return done();
          if (!pending.subarray(0, 4).equals(MAGIC))
            throw new CryptoError('bad-input', 'not a medmesh encrypted file (bad magic)');
          const len = pending.readUInt16BE(4);
          if (pending.length < 6 + len) return done();
          const headerBytes = pending.subarray(0, 6 + len);
          const header = parseHeader(pending.subarray(6, 6 + len));
          const { enc, mac } = deriveKeys(resolveKey(header));
          state = { decipher: createDecipheriv('sm4-cbc', enc, Buffer.from(header.iv, 'base64')), hmac: createHmac('sm3', mac) };
          state.hmac.update(headerBytes);
          chunk = pending.subarray(6 + len);
          pending = Buffer.alloc(0);
        }
        const all = tail.length ? Buffer.concat([tail, chunk]) : chunk;
        const cut = Math.max(0, all.length - MAC_BYTES);
        tail = Buffer.from(all.subarray(cut));
        const body = all.subarray(0, cut);
        if (body.length) {
          state.hmac.update(body);
          const out = state.decipher.update(body);
          if (out.length) this.push(out);
        }
        done();
      } catch (e) {
        done(e as Error);
      }
    },
    flush(done: TransformCallback) {
      if (!state || tail.length !== MAC_BYTES)
        return done(new CryptoError('truncated', 'encrypted file is truncated (no complete header and MAC)'));
      if (!equalConstantTime(state.hmac.digest(), tail))
        return done(
          new CryptoError('auth-failed', 'encrypted file MAC does not match: the file was altered or the key is wrong'),
        );
      try {
        this.push(state.decipher.final());
        done();
      } catch {
        done(new CryptoError('decrypt-failed', 'encrypted file padding is invalid'));
      }
    },
  });
}

/**
 * The whole file in hand (it is wanted whole anyway): the MAC is checked first, then the body
 * decrypted in one call, with none of a stream's per-chunk copies. Same errors as the stream.
 */
export function decryptFile(sealed: Uint8Array, resolveKey: (header: FileHeader) => Uint8Array): Buffer {
  const all = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  if (all.length >= 4 && !all.subarray(0, 4).equals(MAGIC))
    throw new CryptoError('bad-input', 'not a medmesh encrypted file (bad magic)');
  const len = all.length >= 6 ? all.readUInt16BE(4) : Infinity;
  if (all.length < 6 + len + MAC_BYTES)
    throw new CryptoError('truncated', 'encrypted file is truncated (no complete header and MAC)');
  const header = parseHeader(all.subarray(6, 6 + len));
  const { enc, mac } = deriveKeys(resolveKey(header));
  const macAt = all.length - MAC_BYTES;
  if (!equalConstantTime(createHmac('sm3', mac).update(all.subarray(0, macAt)).digest(), all.subarray(macAt))) {
    throw new CryptoError('auth-failed', 'encrypted file MAC does not match: the file was altered or the key is wrong');
  }
  const decipher = createDecipheriv('sm4-cbc', enc, Buffer.from(header.iv, 'base64'));
  try {
    return Buffer.concat([decipher.update(all.subarray(6 + len, macAt)), decipher.final()]);
  } catch {
    throw new CryptoError('decrypt-failed', 'encrypted file padding is invalid');
  }
}

function parseHeader(bytes: Buffer): FileHeader {
  let h: FileHeader;
  try {
    h = JSON.parse(bytes.toString('utf8')) as FileHeader;
  } catch {
    throw new CryptoError('bad-input', 'encrypted file header is not valid JSON');
  }
  if (h.v !== 1) throw new CryptoError('unsupported-version', `encrypted file version ${String(h.v)} is not supported`);
  if (h.alg !== 'SM4-CBC-HMAC-SM3')
    throw new CryptoError('unknown-algorithm', `encrypted file algorithm ${String(h.alg)} is not known`);
  return h;
}
