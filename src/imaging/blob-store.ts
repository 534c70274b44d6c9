// Where image files live (DESIGN.md §9): a small contract so the filesystem default and an
// S3-compatible store can be swapped. A blob is visible under its key only once complete.
import { constants, createReadStream } from 'node:fs';
import { access, mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import type { Readable } from 'node:stream';
import { randomBytes } from 'node:crypto';

export interface BlobStore {
  /** Writes a new blob; the key becomes readable only after the last byte is durable. */
  put(key: string, data: Readable | Uint8Array): Promise<{ bytes: number }>;
  /** The blob's bytes, or undefined when there is none under that key. */
  get(key: string): Promise<Readable | undefined>;
  /** The blob whole, for readers that want it whole anyway (no stream in between). */
  read(key: string): Promise<Buffer | undefined>;
  /** Whether a blob is there to be read under the key. */
  exists(key: string): Promise<boolean>;
  delete(key: string): Promise<void>;
  /** Every key under a prefix (for sweeps and audits). */
  list(prefix?: string): AsyncIterable<string>;
}

const KEY = /^[A-Za-z0-9][A-Za-z0-9._-]*(\/[A-Za-z0-9][A-Za-z0-9._-]*)*$/;

/** The key itself, when it is one every store can hold without escaping its root; throws otherwise. */
export function checkBlobKey(key: string): string {
  if (!KEY.test(key) || key.includes('..')) throw new Error(`invalid blob key ${JSON.stringify(key)}`);
  return key;
}

/** Blobs as files under one root: written to a temporary name, fsynced, then renamed. */
export class FsBlobStore implements BlobStore {
  readonly #root: string;
  /** Folders this store has made or found: not asked for again on every put (one file-system round trip less). */
  readonly #folders = new Set<string>();

  constructor(opts: { root: string }) {
    this.#root = opts.root;
  }

  #path(key: string): string {
    return join(this.#root, checkBlobKey(key));
  }

  async put(key: string, data: Readable | Uint8Array): Promise<{ bytes: number }> {
    const path = this.#path(key);
    const folder = dirname(path);
    if (!this.#folders.has(folder)) await this.#makeFolder(folder);
    const tmp = `${path}.partial-${randomBytes(4).toString('hex')}`;
    let bytes = 0;
    try {
      // Written and synced through one handle, chunk by chunk as the source yields them (no
      // write-stream machinery between: this is on every image's ingest path).
      const fh = await open(tmp, 'wx').catch(async (e: unknown) => {
        if ((e as { code?: string }).code !== 'ENOENT') throw e;
        await this.#makeFolder(folder); // removed behind this store's back: made again
        return open(tmp, 'wx');
      });
      try {
        for await (const chunk of data instanceof Uint8Array ? [data] : (data as AsyncIterable<Uint8Array>)) {
          for (let done = 0; done < chunk.byteLength;)
            done += (await fh.write(chunk, done, chunk.byteLength - done)).bytesWritten;
          bytes += chunk.byteLength;
        }
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, path);
      await syncFolder(folder);
      return { bytes };
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
  }

  async #makeFolder(folder: string): Promise<void> {
    const first = await mkdir(folder, { recursive: true });
    // A new folder's own entry must be as durable as the files in it: sync each parent that gained one.
    if (first !== undefined) {
      for (let d = folder; d !== dirname(d); d = dirname(d)) {
        await syncFolder(dirname(d));
        if (d === first) break;
      }
    }
    this.#folders.add(folder);
  }

  async get(key: string): Promise<Readable | undefined> {
    const path = this.#path(key);
    try {
      await stat(path);
    } catch {
      return undefined;
    }
    return createReadStream(path);
  }

  async read(key: string): Promise<Buffer | undefined> {
    try {
      return await readFile(this.#path(key));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
  }

  async exists(key: string): Promise<boolean> {
    try {
      await access(this.#path(key), constants.R_OK);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw e;
    }
  }

  async delete(key: string): Promise<void> {
    await rm(this.#path(key), { force: true });
  }

  async *list(prefix = ''): AsyncIterable<string> {
    const start = prefix ? this.#path(prefix.replace(/\/$/, '')) : this.#root;
    let entries;
    try {
      entries = await readdir(start, { recursive: true, withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (e.isFile() && !e.name.includes('.partial-')) yield relative(this.#root, join(e.parentPath, e.name));
    }
  }
}

async function syncFolder(path: string): Promise<void> {
  const dir = await open(path, 'r');
  await dir.sync().finally(() => dir.close());
}
