// Opens encrypted files (MAC check, SM4-CBC decryption, SHA-256 of the plaintext) on worker
// threads: a whole-study retrieval decrypts its next files on the other cores while the
// calling thread sends the current one. Workers start on first use and do not keep the
// process alive.
import { createHash } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { CryptoError, type CryptoErrorCode } from './errors.ts';
import { decryptFile } from './file-stream.ts';

export interface OpenedFile {
  file: Buffer;
  /** SHA-256 of the plaintext, hex. */
  sha256: string;
}

type Reply = { id: number; ok: true; file: ArrayBuffer; sha256: string } | { id: number; ok: false; code: CryptoErrorCode; message: string };

interface Slot {
  worker: Worker;
  pending: Map<number, { resolve: (f: OpenedFile) => void; reject: (e: Error) => void }>;
}

export class FileOpenPool {
  readonly #threads: number;
  readonly #slots: Slot[] = [];
  #next = 0;
  #closed = false;

  constructor(opts: { threads?: number } = {}) {
    this.#threads = Math.max(1, opts.threads ?? availableParallelism());
  }

  /** The plaintext of an `MMF1` file and its SHA-256; rejects with the CryptoError decryptFile would throw. */
  open(sealed: Uint8Array, key: Uint8Array): Promise<OpenedFile> {
    if (this.#closed) return new Promise((resolve) => resolve(openHere(sealed, key)));
    const slot = this.#slot();
    const id = this.#next++;
    // The buffer moves to the worker (no copy) when this caller owns all of it.
    const own = sealed.byteOffset === 0 && sealed.byteLength === sealed.buffer.byteLength && sealed.buffer instanceof ArrayBuffer ? sealed.buffer : new Uint8Array(sealed).buffer;
    return new Promise((resolve, reject) => {
      slot.pending.set(id, { resolve, reject });
      slot.worker.postMessage({ id, sealed: own, key }, [own]);
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all(this.#slots.splice(0).map((s) => s.worker.terminate()));
  }

  /** The least busy worker, started when fewer than `threads` run. */
  #slot(): Slot {
    const idle = this.#slots.find((s) => s.pending.size === 0);
    if (idle) return idle;
    if (this.#slots.length < this.#threads) return this.#start();
    return this.#slots.reduce((a, b) => (b.pending.size < a.pending.size ? b : a));
  }

  #start(): Slot {
    const slot: Slot = { worker: new Worker(new URL('./file-open-worker.ts', import.meta.url)), pending: new Map() };
    slot.worker.unref();
    slot.worker.on('message', (r: Reply) => {
      const p = slot.pending.get(r.id);
      slot.pending.delete(r.id);
      if (!p) return;
      if (r.ok) p.resolve({ file: Buffer.from(r.file), sha256: r.sha256 });
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
    slot.worker.on('exit', (code) => fail(new Error(`the file decryption worker exited (${code})`)));
    this.#slots.push(slot);
    return slot;
  }
}

/** The same on the calling thread (no pool, or a closed one). */
export function openHere(sealed: Uint8Array, key: Uint8Array): OpenedFile {
  const file = decryptFile(sealed, () => key);
  return { file, sha256: createHash('sha256').update(file).digest('hex') };
}
