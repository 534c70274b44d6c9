// File encryption on worker threads: opens (MAC check, SM4-CBC decryption, SHA-256 of the
// plaintext) and seals (SM4-CBC + HMAC-SM3) whole files, so a whole-study retrieval decrypts
// its next files while the calling thread sends the current one, and an image being taken in
// is encrypted while the calling thread checks it against the index. Workers start on first
// use and do not keep the process alive.
import { createHash } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { CryptoError, type CryptoErrorCode } from './errors.ts';
import type { CryptoJob } from './file-crypto-worker.ts';
import { decryptFile, encryptFile, type FileKey } from './file-stream.ts';
import { transferable } from './transfer.ts';

export interface OpenedFile {
  file: Buffer;
  /** SHA-256 of the plaintext, hex. */
  sha256: string;
}

type Reply =
  | { id: number; ok: true; bytes: ArrayBuffer; sha256?: string }
  | { id: number; ok: false; code: CryptoErrorCode; message: string };

interface Slot {
  worker: Worker;
  pending: Map<number, { resolve: (r: { bytes: Buffer; sha256?: string }) => void; reject: (e: Error) => void }>;
}

/** Distributive, so each job kind keeps its own fields. */
type JobBody = CryptoJob extends infer J ? (J extends CryptoJob ? Omit<J, 'id'> : never) : never;

export class FileCryptoPool {
  readonly #threads: number;
  readonly #slots: Slot[] = [];
  #next = 0;
  #closed = false;

  constructor(opts: { threads?: number } = {}) {
    this.#threads = Math.max(1, opts.threads ?? availableParallelism());
  }

  /**
   * The plaintext of an `MMF1` file and its SHA-256; rejects with the CryptoError decryptFile
   * would throw. The sealed bytes move to the worker when `sealed` spans its whole buffer (a
   * blob just read): do not use `sealed` after calling.
   */
  async open(sealed: Uint8Array, key: Uint8Array): Promise<OpenedFile> {
    if (this.#closed) return openHere(sealed, key);
    const r = await this.#run({ op: 'open', sealed: transferable(sealed), key });
    return { file: r.bytes, sha256: r.sha256! };
  }

  /**
   * The `MMF1` bytes of a file (encryptFile on a worker). The worker gets copies of `file` and
   * `key` before this returns: the caller keeps `file` and may wipe `key.key` at once.
   */
  async seal(file: Uint8Array, key: FileKey): Promise<Buffer> {
    if (this.#closed) return encryptFile(file, key);
    return (await this.#run({ op: 'seal', file: new Uint8Array(file).buffer, key })).bytes;
  }

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all(this.#slots.splice(0).map((s) => s.worker.terminate()));
  }

  #run(job: JobBody): Promise<{ bytes: Buffer; sha256?: string }> {
    const slot = this.#slot();
    const id = this.#next++;
    const buffer = job.op === 'open' ? job.sealed : job.file;
    return new Promise((resolve, reject) => {
      slot.pending.set(id, { resolve, reject });
      slot.worker.postMessage({ ...job, id } satisfies CryptoJob, [buffer]);
    });
  }

  /** The least busy worker, started when fewer than `threads` run. */
  #slot(): Slot {
    const idle = this.#slots.find((s) => s.pending.size === 0);
    if (idle) return idle;
    if (this.#slots.length < this.#threads) return this.#start();
    return this.#slots.reduce((a, b) => (b.pending.size < a.pending.size ? b : a));
  }

  #start(): Slot {
    const slot: Slot = { worker: new Worker(new URL('./file-crypto-worker.ts', import.meta.url)), pending: new Map() };
    slot.worker.unref();
    slot.worker.on('message', (r: Reply) => {
      const p = slot.pending.get(r.id);
      slot.pending.delete(r.id);
      if (!p) return;
      if (r.ok) p.resolve({ bytes: Buffer.from(r.bytes), ...(r.sha256 ? { sha256: r.sha256 } : {}) });
      else p.reject(new CryptoError(r.code, r.message));
    });
    // A worker that dies takes its jobs with it: they fail, and a new worker takes its place.
    const fail = (e: Error) => {
      for (const p of slot.pending.values()) p.reject(e);
      slot.pending.clear();
      const at = this.#slots.indexOf(slot);
      if (at >= 0) this.#slots.splice(at, 1);
    };
    slot.worker.on('error', fail);
    slot.worker.on('exit', (code) => fail(new Error(`the file encryption worker exited (${code})`)));
    this.#slots.push(slot);
    return slot;
  }
}

/** The same on the calling thread (no pool, or a closed one). */
export function openHere(sealed: Uint8Array, key: Uint8Array): OpenedFile {
  const file = decryptFile(sealed, () => key);
  return { file, sha256: createHash('sha256').update(file).digest('hex') };
}
