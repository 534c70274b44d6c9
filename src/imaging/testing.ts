// Test helpers for imaging: a migrated database, an unsealed KMS, a blob folder, the store,
// sample files from Debian's python3-pydicom, and the DCMTK command-line tools.
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Db } from '../db/index.ts';
import { openTestDb } from '../db/test-db.ts';
import { Sm2PrivateKey } from '../security/crypto/index.ts';
import { Kms } from '../security/kms/index.ts';
import type { AuditEvent } from '../security/audit/index.ts';
import { FsBlobStore } from './blob-store.ts';
import { ImagingStore } from './imaging-store.ts';

export const PYDICOM = '/usr/lib/python3/dist-packages/pydicom/data';
export const sample = (name: string): Promise<Buffer> =>
  readFile(join(PYDICOM, name.includes('/') ? name : `test_files/${name}`));

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
