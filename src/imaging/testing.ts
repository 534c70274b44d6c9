// Test helpers for imaging: a migrated database, an unsealed KMS, a blob folder, the store,
// sample files from Debian's python3-pydicom, and the DCMTK command-line tools.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Db } from '../db/index.ts';
import { openTestDb } from '../db/test-db.ts';
import { Sm2PrivateKey } from '../security/crypto/index.ts';
import { Kms } from '../security/kms/index.ts';
import type { AuditEvent } from '../security/audit/index.ts';
import { FsBlobStore, type BlobStore } from './blob-store.ts';
import { ImagingStore } from './imaging-store.ts';

export const PYDICOM = '/usr/lib/python3/dist-packages/pydicom/data';
export const sample = (name: string): Promise<Buffer> =>
  readFile(join(PYDICOM, name.includes('/') ? name : `test_files/${name}`));

/**
 * Waits for a condition (never a fixed sleep), looking every 20 ms; fails with `what` after `ms`
 * (a function: worded at the failure, with what was seen by then).
 */
export async function until(what: string | (() => string), ok: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  for (const end = Date.now() + ms; !(await ok());) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${typeof what === 'string' ? what : what()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface TestImaging {
  db: Db;
  kms: Kms;
  blobs: FsBlobStore;
  blobDir: string;
  store: ImagingStore;
  /** Audit events recorded by `audit`. */
  events: AuditEvent[];
  audit: (e: AuditEvent) => Promise<boolean>;
  close(): Promise<void>;
}

export async function openTestImaging(opts: { maxFileBytes?: number } = {}): Promise<TestImaging> {
  const db = await openTestDb();
  const kms = new Kms({ db, siteId: 'B', policy: 'national' });
  await kms.init({
    custodians: ['one', 'two'].map((name) => ({ name, publicKey: Sm2PrivateKey.generate().publicKey })),
    threshold: 2,
  });
  const blobDir = await mkdtemp(join(tmpdir(), 'medmesh-blobs-'));
  const blobs = new FsBlobStore({ root: blobDir });
  const store = new ImagingStore({ db, blobs, kms, ...(opts.maxFileBytes ? { maxFileBytes: opts.maxFileBytes } : {}) });
  const events: AuditEvent[] = [];
  return {
    db,
    kms,
    blobs,
    blobDir,
    store,
    events,
    audit: (e) => {
      events.push(e);
      return Promise.resolve(true);
    },
    async close() {
      await db.close();
      await rm(blobDir, { recursive: true, force: true });
    },
  };
}

/** Runs a DCMTK tool with Nagle off (else ~100 ms per message); never rejects: exit code and output. */
export async function dcmtk(
  tool: string,
  args: string[],
  opts: { timeoutMs?: number } = {},
): Promise<{ code: number; out: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(tool, args, {
      env: { ...process.env, TCP_NODELAY: '1' },
      timeout: opts.timeoutMs ?? 30_000,
    });
    return { code: 0, out: stdout + stderr };
  } catch (e) {
    const x = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof x.code === 'number' ? x.code : 1, out: (x.stdout ?? '') + (x.stderr ?? '') };
  }
}

/**
 * Synthetic instances for tests: a sample file copied and given new UIDs, date and patient by
 * DCMTK's dcmodify (which keeps the File Meta group in step).
 */
export async function makeInstances(o: {
  template?: string;
  studyUid: string;
  date: string;
  patientId: string;
  count: number;
}): Promise<Buffer[]> {
  const dir = await mkdtemp(join(tmpdir(), 'medmesh-gen-'));
  try {
    const out: Buffer[] = [];
    for (let i = 1; i <= o.count; i++) {
      const path = join(dir, `${i}.dcm`);
      await writeFile(path, await sample(o.template ?? 'MR_small.dcm'));
      const r = await dcmtk('dcmodify', [
        '-nb',
        '-m',
        `StudyDate=${o.date}`,
        '-m',
        `StudyInstanceUID=${o.studyUid}`,
        '-m',
        `SeriesInstanceUID=${o.studyUid}.1`,
        '-m',
        `SOPInstanceUID=${o.studyUid}.1.${i}`,
        '-m',
        `InstanceNumber=${i}`,
        '-m',
        `PatientID=${o.patientId}`,
        path,
      ]);
      if (r.code !== 0) throw new Error(`dcmodify failed: ${r.out}`);
      out.push(await readFile(path));
    }
    return out;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Blob files in the store's folder (to prove nothing half-written stays). */
export async function blobCount(blobs: FsBlobStore): Promise<number> {
  let n = 0;
  for await (const _ of blobs.list()) n++;
  return n;
}

/**
 * A large instance for tests: CT_small with `frames` frames of 512 x 512 x 16 bit pixel data
 * (512 KiB each) from `random`, new UIDs under `uid`, written into `dir`; returns its path.
 */
export async function makeLargeInstance(o: {
  dir: string;
  uid: string;
  frames: number;
  random: (n: number) => Buffer;
}): Promise<string> {
  const path = join(o.dir, `${o.uid}.dcm`);
  await writeFile(path, await sample('CT_small.dcm'));
  const raw = join(o.dir, `${o.uid}.raw`);
  await writeFile(raw, o.random(o.frames * 512 * 512 * 2));
  const r = await dcmtk('dcmodify', [
    '-nb',
    '-m',
    'Rows=512',
    '-m',
    'Columns=512',
    '-i',
    `NumberOfFrames=${o.frames}`,
    '-m',
    `StudyInstanceUID=${o.uid}`,
    '-m',
    `SeriesInstanceUID=${o.uid}.1`,
    '-m',
    `SOPInstanceUID=${o.uid}.1.1`,
    '-mf',
    `PixelData=${raw}`,
    path,
  ]);
  if (r.code !== 0) throw new Error(`dcmodify failed: ${r.out}`);
  await rm(raw, { force: true });
  return path;
}

/**
 * A blob store whose writes fail after `afterBytes` bytes while `failing()` says so (a disk
 * that fills up mid-file): it reads that far, then throws, leaving nothing (as the real
 * stores do when their source or their disk fails).
 */
export function failingBlobStore(inner: BlobStore, o: { afterBytes: number; failing: () => boolean }): BlobStore {
  return {
    put: async (key, data) => {
      if (!o.failing()) return inner.put(key, data);
      let seen = 0;
      for await (const chunk of data instanceof Uint8Array ? [data] : (data as AsyncIterable<Uint8Array>)) {
        seen += chunk.byteLength;
        if (seen > o.afterBytes) throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
      }
      throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
    },
    get: (key) => inner.get(key),
    read: (key) => inner.read(key),
    exists: (key) => inner.exists(key),
    delete: (key) => inner.delete(key),
    list: (prefix) => inner.list(prefix),
  };
}

/** A seeded generator of random bytes (xorshift32), so a failing test can be run again with its seed. */
export function seededBytes(seed: number): (n: number) => Buffer {
  let x = seed >>> 0 || 1;
  return (n) => {
    const out = Buffer.allocUnsafe(Math.ceil(n / 4) * 4);
    for (let i = 0; i < out.length; i += 4) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      out.writeUInt32LE(x >>> 0, i);
    }
    return out.subarray(0, n);
  };
}

/** Files in a folder tree, temporary ones included (to prove nothing half-written stays). */
export async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
}
