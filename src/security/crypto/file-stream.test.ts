import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, describe, it } from 'node:test';
import type { CryptoError } from './errors.ts';
import { FileCryptoPool } from './file-crypto-pool.ts';
import { createDecryptStream, createEncryptStream, decryptFile, encryptFile } from './file-stream.ts';

const GiB = 1024 ** 3;

/** Deterministic, incompressible-looking bytes generated on the fly (nothing held in memory). */
function source(total: number, chunk = 1 << 20): Readable {
  const block = randomBytes(chunk);
  let sent = 0;
  return new Readable({
    read() {
      if (sent >= total) return this.push(null);
      const n = Math.min(chunk, total - sent);
      const out = Buffer.from(block.subarray(0, n));
      out.writeUInt32BE(sent / chunk, 0);
      sent += n;
      this.push(out);
    },
  });
}

function hashSink(): { sink: Writable; digest: () => string; bytes: () => number } {
  const h = createHash('sm3');
  let n = 0;
  return {
    sink: new Writable({
      write(c: Buffer, _e, done) {
        h.update(c);
        n += c.length;
        done();
      },
    }),
    digest: () => h.digest('hex'),
    bytes: () => n,
  };
}

describe('streaming file encryption (SM4-CBC + HMAC-SM3)', () => {
  let dir: string;
  const key = { keyId: 'dicom', keyVersion: 7, key: randomBytes(32) };
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'medmesh-stream-'));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it('round-trips sizes around the block and MAC boundaries', async () => {
    for (const size of [0, 1, 15, 16, 17, 31, 32, 33, 4095, 65536, 100_003]) {
      const plain = randomBytes(size);
      const chunks: Buffer[] = [];
      await pipeline(
        Readable.from([plain]),
        createEncryptStream(key),
        new Writable({
          write(c: Buffer, _e, d) {
            chunks.push(c);
            d();
          },
        }),
      );
      const enc = Buffer.concat(chunks);
      const out: Buffer[] = [];
      // Feed the ciphertext in awkward 7-byte pieces to exercise header and MAC hold-back.
      const pieces = Array.from({ length: Math.ceil(enc.length / 7) }, (_, i) => enc.subarray(i * 7, i * 7 + 7));
      await pipeline(
        Readable.from(pieces),
        createDecryptStream((h) => (assert.equal(h.kv, 7), key.key)),
        new Writable({
          write(c: Buffer, _e, d) {
            out.push(c);
            d();
          },
        }),
      );
      assert.deepEqual(Buffer.concat(out), plain, `size ${size}`);
      assert.deepEqual(
        decryptFile(enc, () => key.key),
        plain,
        `size ${size}, whole`,
      );
      // The one-shot encryption writes the same format: the stream reads it, in pieces too.
      const once = encryptFile(plain, key);
      assert.equal(once.length, enc.length, `size ${size}: same length as the stream's output`);
      assert.equal(once.readUInt16BE(4), enc.readUInt16BE(4), 'a header of the same length');
      assert.notDeepEqual(once.subarray(-32), enc.subarray(-32), 'a fresh IV per file');
      const back: Buffer[] = [];
      await pipeline(
        Readable.from([once.subarray(0, 9), once.subarray(9)]),
        createDecryptStream((h) => (assert.deepEqual([h.kid, h.kv], ['dicom', 7]), key.key)),
        new Writable({
          write(c: Buffer, _e, d) {
            back.push(c);
            d();
          },
        }),
      );
      assert.deepEqual(Buffer.concat(back), plain, `size ${size}, sealed at once, streamed back`);
      assert.deepEqual(
        decryptFile(once, () => key.key),
        plain,
        `size ${size}, sealed at once, whole`,
      );
    }
  });

  it('seals on worker threads, leaving the caller its buffer', async () => {
    const pool = new FileCryptoPool({ threads: 2 });
    try {
      const files = [randomBytes(0), randomBytes(530_540), randomBytes(17)];
      const copies = files.map((f) => Buffer.from(f));
      const sealed = await Promise.all(files.map((f) => pool.seal(f, key)));
      // Byte comparisons as booleans: a failed deepEqual on half a megabyte prints for minutes.
      sealed.forEach((b, i) => assert.ok(decryptFile(b, () => key.key).equals(copies[i]!), `file ${i} comes back`));
      files.forEach((f, i) => assert.ok(f.equals(copies[i]!), `file ${i} is still the caller's`));
      await assert.rejects(
        pool.seal(randomBytes(10), { ...key, key: randomBytes(7) }),
        (e: CryptoError) => e.code === 'bad-key' && /16 or 32 bytes/.test(e.message),
      );
    } finally {
      await pool.close();
    }
    const here = await pool.seal(Buffer.from('closed pool'), key);
    assert.equal(decryptFile(here, () => key.key).toString(), 'closed pool', 'a closed pool seals on the calling thread');
  });

  it('fails on tampering, truncation and the wrong key, with typed errors', async () => {
    const file = join(dir, 'small.enc');
    await pipeline(Readable.from([randomBytes(5000)]), createEncryptStream(key), createWriteStream(file));
    const enc = await readFile(file);
    const decrypt = async (bytes: Buffer, k = key.key) =>
      pipeline(
        Readable.from([bytes]),
        createDecryptStream(() => k),
        new Writable({
          write(_c, _e, d) {
            d();
          },
        }),
      );
    const flipped = Buffer.from(enc);
    flipped[2000]! ^= 1;
    await assert.rejects(decrypt(flipped), (e: CryptoError) => e.code === 'auth-failed');
    await assert.rejects(decrypt(enc.subarray(0, enc.length - 40)), (e: CryptoError) => e.code === 'auth-failed');
    await assert.rejects(decrypt(enc.subarray(0, 20)), (e: CryptoError) => e.code === 'truncated');
    await assert.rejects(decrypt(enc, randomBytes(32)), (e: CryptoError) => e.code === 'auth-failed');
    await assert.rejects(
      decrypt(Buffer.from('not an encrypted file at all, just text')),
      (e: CryptoError) => e.code === 'bad-input',
    );
    // The same verdicts from the whole-file decryption.
    const whole =
      (bytes: Buffer, k = key.key) =>
      () =>
        decryptFile(bytes, () => k);
    assert.throws(whole(flipped), (e: CryptoError) => e.code === 'auth-failed');
    assert.throws(whole(enc.subarray(0, enc.length - 40)), (e: CryptoError) => e.code === 'auth-failed');
    assert.throws(whole(enc.subarray(0, 20)), (e: CryptoError) => e.code === 'truncated');
    assert.throws(whole(enc, randomBytes(32)), (e: CryptoError) => e.code === 'auth-failed');
    assert.throws(whole(Buffer.from('not an encrypted file at all, just text')), (e: CryptoError) => e.code === 'bad-input');
    // ... and from the worker pool, which also hashes the plaintext.
    const pool = new FileCryptoPool({ threads: 2 });
    try {
      const opened = await Promise.all([enc, enc, enc].map((b) => pool.open(Buffer.from(b), key.key)));
      const plain = decryptFile(enc, () => key.key);
      for (const o of opened) assert.deepEqual([o.file, o.sha256], [plain, createHash('sha256').update(plain).digest('hex')]);
      await assert.rejects(pool.open(flipped, key.key), (e: CryptoError) => e.code === 'auth-failed');
      await assert.rejects(pool.open(enc.subarray(0, 20), key.key), (e: CryptoError) => e.code === 'truncated');
      await assert.rejects(pool.open(enc, randomBytes(32)), (e: CryptoError) => e.code === 'auth-failed');
    } finally {
      await pool.close();
    }
    await assert.rejects(
      pool.open(flipped, key.key),
      (e: CryptoError) => e.code === 'auth-failed',
      'a closed pool opens on the calling thread',
    );
    await writeFile(join(dir, 'x'), '');
  });

  it('streams 1 GiB through encryption to disk and back with flat memory', async () => {
    const encFile = join(dir, 'big.enc');
    const rssBefore = process.memoryUsage().rss;
    const plainHash = hashSink();
    const src = source(GiB);
    src.on('data', (c: Buffer) => plainHash.sink.write(c));
    await pipeline(src, createEncryptStream(key), createWriteStream(encFile));
    assert.ok((await stat(encFile)).size > GiB);
    const back = hashSink();
    await pipeline(
      createReadStream(encFile, { highWaterMark: 1 << 20 }),
      createDecryptStream(() => key.key),
      back.sink,
    );
    assert.equal(back.bytes(), GiB);
    assert.equal(back.digest(), plainHash.digest());
    const peakGrowth = process.resourceUsage().maxRSS * 1024 - rssBefore;
    assert.ok(peakGrowth < 96 * 1024 * 1024, `peak RSS grew by ${(peakGrowth / 2 ** 20).toFixed(1)} MiB streaming 1 GiB`);
    await rm(encFile);
  });
});
