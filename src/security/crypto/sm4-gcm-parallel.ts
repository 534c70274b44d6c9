// SM4-GCM for bulk data on two cores: native SM4-CTR here, GHASH in a worker, chunk by chunk.
// Same output as sm4GcmEncrypt/sm4GcmDecrypt (tested against each other and RFC 8998).
import { createCipheriv } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { CryptoError, requireLength } from './errors.ts';
import { equalConstantTime } from './sm3.ts';
import { finishTag, gcmLengthsBlock, gcmSetup, GCM_TAG_BYTES, inc32, SM4_KEY_BYTES, type GcmSealed } from './sm4.ts';

/** Multiple of 16 bytes: GHASH chunks must not split a block. */
const CHUNK = 64 * 1024;

export class GcmWorker {
  readonly #worker: Worker;
  readonly #pending = new Map<number, (s: Uint8Array | null) => void>();
  #next = 0;

  constructor() {
    this.#worker = new Worker(new URL('./ghash-worker.ts', import.meta.url));
    this.#worker.unref();
    this.#worker.on('message', (m: { id: number; s: Uint8Array | null }) => {
      this.#pending.get(m.id)?.(m.s);
      this.#pending.delete(m.id);
    });
  }

  close(): Promise<number> {
    return this.#worker.terminate();
  }

  async encrypt(
    key: Uint8Array,
    nonce: Uint8Array,
    plaintext: Uint8Array,
    aad: Uint8Array = new Uint8Array(0),
  ): Promise<GcmSealed> {
    requireLength('SM4 key', key, [SM4_KEY_BYTES], 'bad-key');
    const { h, j0 } = gcmSetup(key, nonce);
    const ctr = createCipheriv('sm4-ctr', key, inc32(j0));
    const id = this.#start(h, aad, plaintext.length);
    const parts: Buffer[] = [];
    for (let off = 0; off < plaintext.length; off += CHUNK) {
      const ct = ctr.update(plaintext.subarray(off, off + CHUNK));
      parts.push(ct);
      this.#worker.postMessage({ op: 'data', id, chunk: ct });
    }
    const s = await this.#finish(id, aad.length, plaintext.length);
    return { ciphertext: Buffer.concat(parts), tag: finishTag(key, j0, s) };
  }

  async decrypt(
    key: Uint8Array,
    nonce: Uint8Array,
    ciphertext: Uint8Array,
    tag: Uint8Array,
    aad: Uint8Array = new Uint8Array(0),
  ): Promise<Buffer> {
    requireLength('SM4 key', key, [SM4_KEY_BYTES], 'bad-key');
    requireLength('SM4-GCM tag', tag, [GCM_TAG_BYTES], 'truncated');
    const { h, j0 } = gcmSetup(key, nonce);
    const id = this.#start(h, aad, ciphertext.length);
    for (let off = 0; off < ciphertext.length; off += CHUNK)
      this.#worker.postMessage({ op: 'data', id, chunk: ciphertext.subarray(off, off + CHUNK) });
    // Decrypt while the worker hashes; release nothing unless the tag matches.
    const ctr = createCipheriv('sm4-ctr', key, inc32(j0));
    const plain = Buffer.concat([ctr.update(ciphertext), ctr.final()]);
    const s = await this.#finish(id, aad.length, ciphertext.length);
    if (!equalConstantTime(finishTag(key, j0, s), tag))
      throw new CryptoError('auth-failed', 'SM4-GCM tag does not match: the data, its associated data or the key is wrong');
    return plain;
  }

  #start(h: Uint8Array, aad: Uint8Array, length: number): number {
    const id = this.#next++;
    this.#worker.postMessage({ op: 'start', id, h, aad, expected: aad.length + length + 16 });
    return id;
  }

  #finish(id: number, aadBytes: number, dataBytes: number): Promise<Uint8Array> {
    return new Promise((resolve, reject) => {
      this.#pending.set(id, (s) =>
        s ? resolve(s) : reject(new CryptoError('bad-input', 'GHASH worker lost the message state')),
      );
      this.#worker.postMessage({ op: 'finish', id, lengths: gcmLengthsBlock(aadBytes, dataBytes) });
    });
  }
}
