// The imaging store on real sample files (Debian's python3-pydicom): structure checks, the
// encrypted blob, idempotent re-sends, new versions, tamper detection, and bad input that
// leaves neither index rows nor blobs behind.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Readable } from 'node:stream';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { testBackend } from '../db/test-db.ts';
import { FileCryptoPool } from '../security/crypto/index.ts';
import { Kms } from '../security/kms/index.ts';
import { checkStructure, checkStructureStream } from './dicom-structure.ts';
import { findImaging } from './imaging-query.ts';
import type { BlobStore } from './blob-store.ts';
import { ImagingStore } from './imaging-store.ts';
import {
  blobCount,
  dcmtk,
  failingBlobStore,
  filesUnder,
  makeInstances,
  openTestImaging,
  PYDICOM,
  sample,
  type TestImaging,
} from './testing.ts';

const CT = '1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322';
setFlagsFromString('--expose-gc'); // the bounded-memory test measures live buffers
const MR = '1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457';

describe(`imaging store (${testBackend()})`, () => {
  let t: TestImaging;
  const rows = async () => (await t.db.query<{ n: number }>('SELECT count(*)::int AS n FROM imaging_instance')).rows[0]!.n;
  before(async () => {
    t = await openTestImaging({ maxFileBytes: 2_000_000 });
  });
  after(async () => t.close());

  it('checks structure and says where a file breaks', async () => {
    const verdict = async (f: string) => {
      const r = checkStructure(await sample(f));
      return r.ok ? `ok ${r.value.transferSyntaxUid}` : r.error;
    };
    assert.equal(await verdict('CT_small.dcm'), 'ok 1.2.840.10008.1.2.1');
    assert.equal(await verdict('MR_small_bigendian.dcm'), 'ok 1.2.840.10008.1.2.2');
    assert.equal(await verdict('MR_small_implicit.dcm'), 'ok 1.2.840.10008.1.2');
    assert.equal(await verdict('image_dfl.dcm'), 'ok 1.2.840.10008.1.2.1.99');
    assert.equal(await verdict('JPEG2000.dcm'), 'ok 1.2.840.10008.1.2.4.91');
    assert.equal(await verdict('MR_truncated.dcm'), 'truncated: (7FE0,0010) declares 8192 bytes but 8130 remain');
    assert.equal(await verdict('rtplan_truncated.dcm'), 'truncated: (300A,00B0) declares 976 bytes but 711 remain');
    assert.match(await verdict('no_meta.dcm'), /no 128-byte preamble/);
    assert.match(await verdict('meta_missing_tsyntax.dcm'), /no transfer syntax/);
    assert.match(await verdict('no_meta_group_length.dcm'), /no group length/);
    // Its meta header says JPEG, its data set is implicit VR: a wrong declaration.
    assert.match(await verdict('SC_rgb_jpeg.dcm'), /no valid VR \(the transfer syntax may be declared wrongly\)/);
    // Every sample pydicom ships either passes or is refused with a reason; none throws.
    for (const dir of ['test_files', 'charset_files']) {
      for (const f of (await readdir(join(PYDICOM, dir))).filter((x) => x.endsWith('.dcm'))) {
        const r = checkStructure(await readFile(join(PYDICOM, dir, f)));
        assert.ok(r.ok || r.error.length > 10, f);
      }
    }
  });

  it('checks a stream the same way as a file in memory, chunk boundaries anywhere', async () => {
    for (const dir of ['test_files', 'charset_files']) {
      for (const f of (await readdir(join(PYDICOM, dir))).filter((x) => x.endsWith('.dcm'))) {
        const path = join(PYDICOM, dir, f);
        const whole = checkStructure(await readFile(path));
        for (const chunk of [61, 977]) {
          const streamed = await checkStructureStream(createReadStream(path, { highWaterMark: chunk }));
          assert.deepEqual(streamed, whole, `${f} in ${chunk}-byte chunks`);
        }
      }
    }
  });

  it('stores a file encrypted, reads it back byte for byte, and indexes it', async () => {
    const file = await sample('CT_small.dcm');
    const r = await t.store.ingest(file, { source: 'test' });
    assert.ok(r.ok, JSON.stringify(r));
    assert.deepEqual([r.value.status, r.value.version, r.value.sopInstanceUid], ['stored', 1, CT]);
    const back = await t.store.read(CT);
    assert.ok(back.ok);
    assert.ok(back.value.file.equals(file), 'the bytes as sent');
    assert.equal(back.value.instance.transferSyntaxUid, '1.2.840.10008.1.2.1');
    assert.equal(back.value.instance.attributes['00100010']?.vr, 'PN');
    // At rest: the blob holds neither the patient's name nor the pixel data in clear.
    const [key] = (
      await t.db.query<{ blob_key: string }>('SELECT blob_key FROM imaging_instance WHERE sop_instance_uid = $1', [CT])
    ).rows;
    const sealed = await readFile(join(t.blobDir, key!.blob_key));
    assert.equal(sealed.subarray(0, 4).toString(), 'MMF1');
    assert.equal(sealed.indexOf('CompressedSamples'), -1);
    assert.equal(sealed.indexOf(file.subarray(file.length - 64)), -1);
    const s = (
      await t.db.query<{ patient_name: string; study_date: string }>('SELECT patient_name, study_date FROM imaging_study')
    ).rows[0]!;
    assert.deepEqual(s, { patient_name: 'CompressedSamples^CT1', study_date: '20040119' });
  });

  it('takes the same bytes again as a no-op, and different bytes under one UID as a flagged new version', async () => {
    const blobs = await blobCount(t.blobs);
    const again = await t.store.ingest(await sample('CT_small.dcm'), { source: 'test' });
    assert.ok(again.ok);
    assert.equal(again.value.status, 'duplicate');
    assert.equal(await blobCount(t.blobs), blobs, 'no blob written for a duplicate');

    // The same MR image, big endian and implicit VR: one SOP Instance UID, different bytes.
    const be = await t.store.ingest(await sample('MR_small_bigendian.dcm'), { source: 'test' });
    const im = await t.store.ingest(await sample('MR_small_implicit.dcm'), { source: 'test' });
    assert.ok(be.ok && im.ok);
    assert.deepEqual([be.value.status, im.value.status, im.value.version], ['stored', 'new-version', 2]);
    const versions = (
      await t.db.query<{ version: number; current: boolean; flag: string | null; transfer_syntax_uid: string }>(
        'SELECT version, current, flag, transfer_syntax_uid FROM imaging_instance WHERE sop_instance_uid = $1 ORDER BY version',
        [MR],
      )
    ).rows;
    assert.deepEqual(
      versions.map((v) => [v.version, v.current, v.transfer_syntax_uid]),
      [
        [1, false, '1.2.840.10008.1.2.2'],
        [2, true, '1.2.840.10008.1.2'],
      ],
    );
    assert.match(versions[1]!.flag!, /re-sent with different bytes \(version 1 had SHA-256 [0-9a-f]{64}\)/);
    const read = await t.store.read(MR);
    assert.ok(read.ok && read.value.file.equals(await sample('MR_small_implicit.dcm')));
  });

  it('stores one copy when the same new instance arrives several times at once', async () => {
    const file = await sample('JPEG-lossy.dcm');
    const blobs = await blobCount(t.blobs);
    const results = await Promise.all(Array.from({ length: 5 }, () => t.store.ingest(file, { source: 'race' })));
    assert.ok(results.every((r) => r.ok));
    const statuses = results.map((r) => (r.ok ? r.value.status : 'error')).sort();
    assert.deepEqual(statuses, ['duplicate', 'duplicate', 'duplicate', 'duplicate', 'stored']);
    const rows = (
      await t.db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM imaging_instance
          WHERE sop_instance_uid = '1.3.6.1.4.1.5962.1.1.8.1.5.20040826185059.5457'`,
      )
    ).rows[0]!.n;
    assert.equal(rows, 1);
    assert.equal(await blobCount(t.blobs), blobs + 1, 'the losers left no blobs');
  });

  it('refuses a series that already belongs to another study, leaving nothing behind', async () => {
    const before = { rows: await rows(), blobs: await blobCount(t.blobs) };
    // CT_small's series UID under a different study UID (same length: the structure holds).
    const moved = Buffer.from(await sample('CT_small.dcm'));
    const study = Buffer.from('1.3.6.1.4.1.5962.1.2.1.20040119072730.12322');
    const at = moved.indexOf(study, 300);
    Buffer.from('1.3.6.1.4.1.5962.1.2.1.20040119072730.99999').copy(moved, at);
    const sop = Buffer.from('1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322');
    for (let i = moved.indexOf(sop); i >= 0; i = moved.indexOf(sop, i + 1))
      Buffer.from('1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.99999').copy(moved, i);
    const r = await t.store.ingest(moved, { source: 'test' });
    assert.ok(!r.ok);
    assert.match(
      r.error.message,
      new RegExp(
        String.raw`series 1\.3\.6\.1\.4\.1\.5962\.1\.3\.1\.1\.20040119072730\.12322 ` +
          String.raw`belongs to study 1\.3\.6\.1\.4\.1\.5962\.1\.2\.1\.20040119072730\.12322`,
      ),
    );
    assert.deepEqual({ rows: await rows(), blobs: await blobCount(t.blobs) }, before);
  });

  it('notices a stored file that was altered or lost', async () => {
    const [row] = (
      await t.db.query<{ blob_key: string }>('SELECT blob_key FROM imaging_instance WHERE sop_instance_uid = $1', [CT])
    ).rows;
    const path = join(t.blobDir, row!.blob_key);
    const original = await readFile(path);
    const altered = Buffer.from(original);
    altered[altered.length - 100]! ^= 0x01;
    await writeFile(path, altered);
    const r = await t.store.read(CT);
    assert.ok(!r.ok);
    assert.equal(r.error.kind, 'corrupt');
    assert.match(r.error.message, /MAC does not match/);
    await t.blobs.delete(row!.blob_key);
    const gone = await t.store.read(CT);
    assert.ok(!gone.ok && gone.error.kind === 'corrupt' && /missing from the blob store/.test(gone.error.message));
    assert.doesNotMatch(gone.error.message, /\.mmf/, 'the blob key stays inside the site');
    assert.deepEqual(
      (await t.store.missingFiles({ studyInstanceUids: ['1.3.6.1.4.1.5962.1.2.1.20040119072730.12322'] })).map(
        (m) => m.sopInstanceUid,
      ),
      [CT],
    );
    // The same bytes sent again (a PACS re-sending, a collector fetching again) restore the file,
    // by the whole path and by the streaming one.
    const whole = await t.store.ingest(await sample('CT_small.dcm'), { source: 'test' });
    assert.ok(whole.ok && whole.value.status === 'restored', JSON.stringify(whole));
    assert.ok((await t.store.read(CT)).ok, 'restored');
    const [now] = (
      await t.db.query<{ blob_key: string; version: number }>(
        'SELECT blob_key, version FROM imaging_instance WHERE sop_instance_uid = $1 AND current',
        [CT],
      )
    ).rows;
    assert.equal(now!.version, 1, 'the same version: the same bytes');
    await t.blobs.delete(now!.blob_key);
    const streamed = await t.store.ingestStream(createReadStream(join(PYDICOM, 'test_files', 'CT_small.dcm')), {
      source: 'test',
    });
    assert.ok(streamed.ok && streamed.value.status === 'restored', JSON.stringify(streamed));
    assert.deepEqual(await t.store.missingFiles({ sopInstanceUids: [CT] }), []);
    const again = await t.store.ingest(await sample('CT_small.dcm'), { source: 'test' });
    assert.ok(again.ok && again.value.status === 'duplicate');
  });

  it('refuses bad files and leaves nothing behind', async () => {
    const before = { rows: await rows(), blobs: await blobCount(t.blobs) };
    const refusals: Array<[string, Buffer, RegExp]> = [
      ['truncated', await sample('MR_truncated.dcm'), /truncated: \(7FE0,0010\)/],
      ['no preamble or meta', await sample('no_meta.dcm'), /no 128-byte preamble/],
      ['no transfer syntax', await sample('meta_missing_tsyntax.dcm'), /no transfer syntax/],
      ['wrong transfer syntax declared', await sample('SC_rgb_jpeg.dcm'), /declared wrongly/],
      ['missing Study Instance UID', withoutStudyUid(await sample('CT_small.dcm')), /no StudyInstanceUID/],
      ['meta and data set disagree', await sample('charset_files/chrJapMulti.dcm'), /differs from the data set/],
      ['empty', Buffer.alloc(0), /no 128-byte preamble/],
    ];
    for (const [what, file, message] of refusals) {
      const r = await t.store.ingest(file, { source: 'test' });
      assert.ok(!r.ok, what);
      assert.equal(r.error.kind, 'invalid', what);
      assert.match(r.error.message, message, what);
    }
    const big = await t.store.ingest(Buffer.alloc(2_000_001), { source: 'test' });
    assert.ok(!big.ok && big.error.kind === 'too-large');
    assert.deepEqual({ rows: await rows(), blobs: await blobCount(t.blobs) }, before);
  });

  it('takes a stream: stored as sent, broken or oversized streams leave nothing', async () => {
    const file = await sample('SC_rgb_rle_2frame.dcm');
    const r = await t.store.ingestStream(
      createReadStream(join(PYDICOM, 'test_files', 'SC_rgb_rle_2frame.dcm'), { highWaterMark: 1000 }),
      { source: 'stream' },
    );
    assert.ok(r.ok && r.value.status === 'stored', JSON.stringify(r));
    const back = await t.store.read(r.value.sopInstanceUid);
    assert.ok(back.ok && back.value.file.equals(file));
    const before = { rows: await rows(), blobs: await blobCount(t.blobs) };
    const truncated = await t.store.ingestStream(
      createReadStream(join(PYDICOM, 'test_files', 'MR_truncated.dcm'), { highWaterMark: 512 }),
      { source: 'stream' },
    );
    assert.ok(!truncated.ok && truncated.error.kind === 'invalid');
    assert.equal(truncated.error.message, 'truncated: (7FE0,0010) declares 8192 bytes but 8130 remain');
    const big = await t.store.ingestStream(Readable.from([Buffer.alloc(1_500_000), Buffer.alloc(1_500_000)]), {
      source: 'stream',
    });
    assert.ok(!big.ok && big.error.kind === 'too-large');
    const again = await t.store.ingestStream(Readable.from([file]), { source: 'stream' });
    assert.ok(again.ok && again.value.status === 'duplicate');
    assert.deepEqual({ rows: await rows(), blobs: await blobCount(t.blobs) }, before);
  });

  it('receives a stream of unknown length: small files held, large ones streamed through', async () => {
    const store = new ImagingStore({ db: t.db, blobs: t.blobs, kms: t.kms, maxFileBytes: 250_000, streamAboveBytes: 20_000 });
    const streamed: string[] = [];
    const ingestStream = store.ingestStream.bind(store);
    store.ingestStream = (source, opts) => {
      streamed.push(opts.source);
      return ingestStream(source, opts);
    };
    const pieces = (name: string) => createReadStream(join(PYDICOM, 'test_files', name), { highWaterMark: 4096 });
    const small = await store.receive(pieces('MR_small_expb.dcm'), { source: 'small' }); // 9.8 KB
    const large = await store.receive(pieces('SC_rgb_jpeg_dcmd.dcm'), { source: 'large' }); // 197 KB
    const tooLarge = await store.receive(pieces('waveform_ecg.dcm'), { source: 'too-large' }); // 291 KB
    assert.ok(small.ok && large.ok, JSON.stringify([small, large]));
    assert.ok(!tooLarge.ok && tooLarge.error.kind === 'too-large');
    assert.deepEqual(streamed, ['large', 'too-large']);
    for (const [r, name] of [
      [small, 'MR_small_expb.dcm'],
      [large, 'SC_rgb_jpeg_dcmd.dcm'],
    ] as const) {
      const back = await store.read(r.value.sopInstanceUid);
      assert.ok(back.ok && back.value.file.equals(await sample(name)), name);
    }
  });

  it('streams a large file through in bounded memory', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'medmesh-big-'));
    try {
      // 96 frames of 512 x 512 x 16 bit: 48 MiB of pixel data.
      const path = join(dir, 'big.dcm');
      await writeFile(path, await sample('CT_small.dcm'));
      await writeFile(join(dir, 'px.raw'), randomBytes(96 * 512 * 512 * 2));
      const made = await dcmtk('dcmodify', [
        '-nb',
        '-m',
        'Rows=512',
        '-m',
        'Columns=512',
        '-i',
        'NumberOfFrames=96',
        '-m',
        'StudyInstanceUID=1.2.826.0.1.3680043.10.1519.6',
        '-m',
        'SeriesInstanceUID=1.2.826.0.1.3680043.10.1519.6.1',
        '-m',
        'SOPInstanceUID=1.2.826.0.1.3680043.10.1519.6.1.1',
        '-m',
        'StudyDate=20261122',
        '-m',
        'PatientName=Big^File',
        '-mf',
        `PixelData=${join(dir, 'px.raw')}`,
        path,
      ]);
      assert.equal(made.code, 0, made.out);
      const size = (await stat(path)).size;
      const store = new ImagingStore({ db: t.db, blobs: t.blobs, kms: t.kms, maxFileBytes: 64 * 2 ** 20 });
      // Live buffers only: collect garbage before each sample (the file's chunks are garbage
      // once encrypted; what must not happen is holding them).
      const gc = runInNewContext('gc') as () => void;
      gc();
      const baseline = process.memoryUsage().arrayBuffers;
      let peak = baseline;
      const sampler = setInterval(() => {
        gc();
        peak = Math.max(peak, process.memoryUsage().arrayBuffers);
      }, 100);
      const r = await store.ingestStream(createReadStream(path), { source: 'stream' });
      clearInterval(sampler);
      assert.ok(r.ok, JSON.stringify(r));
      const expected = createHash('sha256')
        .update(await readFile(path))
        .digest('hex');
      assert.equal(r.value.sha256, expected);
      const row = (
        await t.db.query<{ size_bytes: string | number; number_of_frames: number }>(
          'SELECT size_bytes, number_of_frames FROM imaging_instance WHERE sop_instance_uid = $1',
          [r.value.sopInstanceUid],
        )
      ).rows[0]!;
      assert.deepEqual([Number(row.size_bytes), row.number_of_frames], [size, 96]);
      // Held whole, the file alone would be 48 MiB (and its ciphertext as much again). Streamed, a
      // 4 MiB head is kept for the attributes; the rest is chunks in flight and buffers freed but
      // not yet swept (V8 sweeps array buffers concurrently): 4-15 MiB measured here.
      assert.ok(
        peak - baseline < size / 2,
        `buffers grew by ${((peak - baseline) / 2 ** 20).toFixed(1)} MiB for a ${(size / 2 ** 20).toFixed(0)} MiB file`,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it(
    'commits the index only once the blob is durable: ' + 'a blob that fails after the rows were written leaves neither',
    async () => {
      const own = await openTestImaging();
      // A blob store that takes 100 ms (the index statements run meanwhile), then succeeds or fails.
      const slow = (fail: boolean): BlobStore => ({
        put: async (key, data) => {
          await new Promise((r) => setTimeout(r, 100));
          const written = await own.blobs.put(key, data);
          if (fail) throw new Error('disk failed at fsync');
          return written;
        },
        get: (key) => own.blobs.get(key),
        read: (key) => own.blobs.read(key),
        exists: (key) => own.blobs.exists(key),
        delete: (key) => own.blobs.delete(key),
        list: (prefix) => own.blobs.list(prefix),
      });
      const held = async () => ({
        rows: (await own.db.query('SELECT 1 FROM imaging_instance')).rows.length,
        blobs: await blobCount(own.blobs),
      });
      try {
        const [ok, lost] = await makeInstances({
          studyUid: '1.2.826.0.1.3680043.10.1519.78',
          date: '20260102',
          patientId: 'P78',
          count: 2,
        });
        const failing = new ImagingStore({ db: own.db, blobs: slow(true), kms: own.kms });
        const refused = await failing.ingest(lost!, { source: 'test' });
        assert.ok(!refused.ok && refused.error.kind === 'storage-failed', JSON.stringify(refused));
        assert.match(refused.error.message, /disk failed at fsync/);
        assert.deepEqual(
          await held(),
          { rows: 0, blobs: 0 },
          'no row for a blob that never became durable, and the blob removed',
        );
        const stored = await new ImagingStore({ db: own.db, blobs: slow(false), kms: own.kms }).ingest(ok!, { source: 'test' });
        assert.ok(stored.ok && stored.value.status === 'stored', JSON.stringify(stored));
        const back = await own.store.read(stored.value.sopInstanceUid);
        assert.ok(back.ok && back.value.file.equals(ok!), 'read back byte for byte');
        assert.deepEqual(await held(), { rows: 1, blobs: 1 });
      } finally {
        await own.close();
      }
    },
  );

  it('answers a blob store failing mid-stream with a value, reads the rest of the file, and leaves nothing', async () => {
    const own = await openTestImaging();
    try {
      const store = new ImagingStore({
        db: own.db,
        kms: own.kms,
        blobs: failingBlobStore(own.blobs, { afterBytes: 2048, failing: () => true }),
      });
      const file = await sample('SC_rgb_rle_2frame.dcm');
      let read = 0;
      const source = (async function* () {
        for (let i = 0; i < file.length; i += 1000) {
          read += Math.min(1000, file.length - i);
          yield await Promise.resolve(file.subarray(i, i + 1000));
        }
      })();
      const r = await store.ingestStream(source, { source: 'stream' });
      assert.ok(!r.ok && r.error.kind === 'storage-failed', JSON.stringify(r));
      assert.equal(r.error.message, 'the blob store could not keep the file (ENOSPC)');
      assert.equal(read, file.length, 'the sender is read to the end, not left blocked');
      assert.deepEqual(await filesUnder(own.blobDir), []);
      assert.equal((await own.db.query('SELECT 1 FROM imaging_instance')).rows.length, 0);
    } finally {
      await own.close();
    }
  });

  it('refuses to store while the KMS is sealed, and writes nothing', async () => {
    const sealed = new ImagingStore({ db: t.db, blobs: t.blobs, kms: new Kms({ db: t.db, siteId: 'B', policy: 'national' }) });
    const before = { rows: await rows(), blobs: await blobCount(t.blobs) };
    const r = await sealed.ingest(await sample('JPEG2000.dcm'), { source: 'test' });
    assert.ok(!r.ok && r.error.kind === 'sealed', JSON.stringify(r));
    const read = await sealed.read(CT);
    assert.ok(!read.ok && read.error.kind === 'sealed');
    assert.deepEqual({ rows: await rows(), blobs: await blobCount(t.blobs) }, before);
  });

  it('encrypts on a worker with a data key per file, made ahead, and stops the moment the KMS seals', async () => {
    const own = await openTestImaging();
    const pool = new FileCryptoPool({ threads: 1 });
    try {
      const store = new ImagingStore({ db: own.db, blobs: own.blobs, kms: own.kms, files: pool });
      const files = await makeInstances({
        studyUid: '1.2.826.0.1.3680043.10.1519.77',
        date: '20260101',
        patientId: 'P77',
        count: 5,
      });
      for (const f of files.slice(0, 4)) assert.equal((await store.ingest(f, { source: 'test' })).ok, true);
      const held = await own.db.query<{ sop_instance_uid: string; data_key: Buffer }>(
        'SELECT sop_instance_uid, data_key FROM imaging_instance ORDER BY instance_number',
      );
      assert.equal(new Set(held.rows.map((r) => r.data_key.toString('hex'))).size, 4, 'four files, four data keys');
      for (const [i, r] of held.rows.entries()) {
        const back = await store.read(r.sop_instance_uid);
        assert.ok(back.ok && back.value.file.equals(files[i]!), `file ${i} byte for byte`);
      }
      // Keys made ahead are in memory now; a sealed KMS must still stop the next file.
      own.kms.seal();
      const before = {
        rows: (await own.db.query('SELECT 1 FROM imaging_instance')).rows.length,
        blobs: await blobCount(own.blobs),
      };
      const r = await store.ingest(files[4]!, { source: 'test' });
      assert.ok(!r.ok && r.error.kind === 'sealed', JSON.stringify(r));
      assert.deepEqual(
        { rows: (await own.db.query('SELECT 1 FROM imaging_instance')).rows.length, blobs: await blobCount(own.blobs) },
        before,
      );
    } finally {
      await pool.close();
      await own.close();
    }
  });

  it('matches queries: wildcards, date ranges, UID lists, Chinese names (GB18030 file)', async () => {
    for (const f of ['charset_files/chrX2.dcm', 'charset_files/chrX1.dcm', 'SC_rgb_rle_2frame.dcm', 'JPEG2000.dcm']) {
      const r = await t.store.ingest(await sample(f), { source: 'test' });
      assert.ok(r.ok, f);
    }
    const names = async (keys: Record<string, string>) => {
      const r = await findImaging(t.db, 'STUDY', { PatientName: '', ...keys });
      assert.ok(r.ok, JSON.stringify(r));
      return r.value.map((m) => m.PatientName).sort();
    };
    assert.deepEqual(await names({ PatientName: '*王^小东*' }), ['Wang^XiaoDong=王^小东']);
    assert.deepEqual(await names({ PatientName: '*王^小*' }), ['Wang^XiaoDong=王^小东', 'Wang^XiaoDong=王^小東']);
    assert.deepEqual(
      await names({ PatientName: 'compressedsamples^ct1' }),
      ['CompressedSamples^CT1'],
      'PN matching ignores case',
    );
    assert.deepEqual(await names({ StudyDate: '20040101-20041231' }), [
      'CompressedSamples^CT1',
      'CompressedSamples^MR1',
      'CompressedSamples^NM1',
    ]);
    assert.deepEqual(await names({ StudyDate: '20170101' }), ['Lestrade^G']);
    assert.deepEqual(await names({ StudyDate: '-20040120' }), ['CompressedSamples^CT1']);
    assert.deepEqual(await names({ ModalitiesInStudy: 'MR\\NM' }), ['CompressedSamples^MR1', 'CompressedSamples^NM1']);
    const ct = await findImaging(t.db, 'IMAGE', {
      StudyInstanceUID: '1.3.6.1.4.1.5962.1.2.1.20040119072730.12322\\9.9.9',
      SOPClassUID: '',
    });
    assert.ok(ct.ok);
    assert.deepEqual(ct.value, [
      {
        SOPInstanceUID: CT,
        StudyInstanceUID: '1.3.6.1.4.1.5962.1.2.1.20040119072730.12322',
        SOPClassUID: '1.2.840.10008.5.1.4.1.1.2',
      },
    ]);
    const frames = await findImaging(t.db, 'IMAGE', { NumberOfFrames: '2' });
    assert.ok(frames.ok && frames.value.length === 1, 'the multi-frame file');
    const counts = await findImaging(t.db, 'STUDY', {
      StudyInstanceUID: '1.3.6.1.4.1.5962.1.2.4.20040826185059.5457',
      NumberOfStudyRelatedInstances: '',
    });
    assert.ok(counts.ok);
    assert.equal(counts.value[0]!.NumberOfStudyRelatedInstances, 1, 'current versions only');
    for (const [keys, message] of [
      [{ StudyDate: '2004-01-01' }, /StudyDate: "2004-01-01" is not a date or date range/],
      [{ StudyInstanceUID: 'abc' }, /not a UID/],
      [{ SOPInstanceUID: '1.2' }, /IMAGE attribute; it cannot be matched at STUDY level/],
      [{ Bogus: 'x' }, /Bogus is not a matching key/],
    ] as const) {
      const r = await findImaging(t.db, 'STUDY', keys);
      assert.ok(!r.ok);
      assert.match(r.error, message);
    }
  });
});

/** CT_small with its Study Instance UID value blanked (same length, so the structure holds). */
function withoutStudyUid(file: Buffer): Buffer {
  const copy = Buffer.from(file);
  const uid = Buffer.from('1.3.6.1.4.1.5962.1.2.1.20040119072730.12322');
  const at = copy.indexOf(uid, 300);
  assert.ok(at > 0);
  copy.fill(0x20, at, at + uid.length);
  return copy;
}
