// No DICOM peer can end the process or hold an association: DCMTK senders that abort, propose
// every transfer syntax or send to a store that fails mid-file, a peer that sends garbage, an
// audit log that throws. Each is answered (a failure status, an abort, a closed connection),
// counted in the metrics, and the site goes on serving.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { testBackend } from '../db/test-db.ts';
import { checkStructure } from './dicom-structure.ts';
import { startDimseServer, type DimseServer } from './dimse-server.ts';
import { ImagingStore } from './imaging-store.ts';
import {
  dcmtk,
  failingBlobStore,
  filesUnder,
  makeLargeInstance,
  openTestImaging,
  PYDICOM,
  seededBytes,
  type TestImaging,
  until,
} from './testing.ts';

const AE = 'MEDMESH_B';
const SEED = Number(process.env.MEDMESH_TEST_SEED ?? Date.now() % 2 ** 31);

describe(`DIMSE under faults (${testBackend()}, seed ${SEED})`, () => {
  let t: TestImaging;
  let srv: DimseServer;
  let dir: string;
  let failing = false;
  const crashes: unknown[] = [];
  const onCrash = (e: unknown) => crashes.push(e);
  const at = () => ['127.0.0.1', String(srv.port)];
  const rows = async () => (await t.db.query<{ n: number }>('SELECT count(*)::int AS n FROM imaging_instance')).rows[0]!.n;
  before(async () => {
    process.on('unhandledRejection', onCrash);
    process.on('uncaughtException', onCrash);
    t = await openTestImaging({ maxFileBytes: 64 * 2 ** 20 });
    dir = await mkdtemp(join(tmpdir(), 'medmesh-dimse-faults-'));
    // The blob store fails after 2 KB of a file whenever `failing` is set; anything above
    // 64 KiB streams into it as it arrives (the path where the sender is still sending).
    const store = new ImagingStore({
      db: t.db,
      kms: t.kms,
      blobs: failingBlobStore(t.blobs, { afterBytes: 2048, failing: () => failing }),
      maxFileBytes: 64 * 2 ** 20,
    });
    srv = await startDimseServer({
      store,
      siteId: 'B',
      aeTitle: AE,
      port: 0,
      streamAboveBytes: 64 * 1024,
      remoteAes: { MODALITY: { host: '127.0.0.1', port: 1 } },
      audit: t.audit,
    });
  });
  after(async () => {
    process.off('unhandledRejection', onCrash);
    process.off('uncaughtException', onCrash);
    await srv?.close();
    await t?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('answers a blob store failing mid-file during a large C-STORE with a failure status, and keeps nothing', async () => {
    const path = await makeLargeInstance({ dir, uid: '1.2.826.0.1.3680043.10.1519.23', frames: 16, random: seededBytes(SEED) });
    const storageErrors = srv.metrics.snapshot().errors.storage;
    failing = true;
    const r = await dcmtk('storescu', ['-v', '-aet', 'MODALITY', '-aec', AE, ...at(), path], { timeoutMs: 60_000 });
    failing = false;
    assert.match(r.out, /Received Store Response \(Refused: OutOfResources\)/, r.out);
    assert.deepEqual(await filesUnder(t.blobDir), [], 'no blob, no partial file');
    assert.equal(await rows(), 0, 'no index rows');
    assert.ok(
      t.events.some((e) => e.action === 'dicom-store' && e.outcome === 'failure' && /ENOSPC/.test(e.detail ?? '')),
      'the failure is audited with its cause',
    );
    assert.equal(srv.metrics.snapshot().errors.storage - storageErrors, 1, 'and counted as the site failing to store');
    // The site is still up, and the same file goes through once the store works again.
    const again = await dcmtk('storescu', ['-v', '-aet', 'MODALITY', '-aec', AE, ...at(), path], { timeoutMs: 60_000 });
    assert.match(again.out, /Received Store Response \(Success\)/, again.out);
    assert.equal(await rows(), 1);
    assert.deepEqual(crashes, []);
  });

  it('closes the connection at once when a DCMTK peer aborts, so it does not wait out its timer', async () => {
    const before = srv.metrics.snapshot().aborts.peer;
    for (const [tool, extra] of [
      ['echoscu', []],
      ['storescu', [`${PYDICOM}/test_files/CT_small.dcm`]],
    ] as const) {
      const started = Date.now();
      const r = await dcmtk(tool, ['--abort', '-aet', 'MODALITY', '-aec', AE, ...at(), ...extra], { timeoutMs: 60_000 });
      const took = Date.now() - started;
      assert.equal(r.code, 0, r.out);
      // Without the close, DCMTK waits for it for its 30 s ACSE timeout.
      assert.ok(took < 10_000, `${tool} --abort took ${took} ms`);
    }
    assert.equal(srv.metrics.snapshot().aborts.peer - before, 2);
    await until('the slots to be freed', () => srv.activeAssociations() === 0);
  });

  it('takes what DCMTK sends whatever transfer syntax it proposes first (deflated, big endian, implicit)', async () => {
    const files = ['CT_small.dcm', 'MR_small_bigendian.dcm', 'image_dfl.dcm', 'MR_small.dcm'].map(
      (f) => `${PYDICOM}/test_files/${f}`,
    );
    const syntaxes = new Set<string>();
    for (const proposal of ['-xd', '-xb', '-xi', '-x=']) {
      const r = await dcmtk('storescu', ['-v', proposal, '-aet', 'MODALITY', '-aec', AE, ...at(), ...files], {
        timeoutMs: 60_000,
      });
      assert.equal(r.code, 0, `${proposal}: ${r.out}`);
      assert.equal((r.out.match(/Received Store Response \(Success\)/g) ?? []).length, files.length, r.out);
    }
    const held = await t.db.query<{ sop_instance_uid: string; transfer_syntax_uid: string }>(
      'SELECT sop_instance_uid, transfer_syntax_uid FROM imaging_instance',
    );
    for (const row of held.rows) {
      syntaxes.add(row.transfer_syntax_uid);
      const back = await t.store.read(row.sop_instance_uid);
      assert.ok(back.ok, JSON.stringify(back));
      assert.ok(checkStructure(back.value.file).ok, row.sop_instance_uid);
    }
    for (const ts of ['1.2.840.10008.1.2.1.99', '1.2.840.10008.1.2.2', '1.2.840.10008.1.2'])
      assert.ok(syntaxes.has(ts), `stored as sent in ${ts}`);
    assert.deepEqual(crashes, []);
  });

  it('aborts and closes an association whose peer sends what is not DICOM, and serves the next one', async () => {
    const before = srv.metrics.snapshot();
    const socket = createConnection({ host: '127.0.0.1', port: srv.port });
    const closed = new Promise<Buffer>((resolve) => {
      const got: Buffer[] = [];
      socket.on('data', (b: Buffer) => got.push(b));
      socket.on('close', () => resolve(Buffer.concat(got)));
      socket.on('error', () => undefined);
    });
    socket.write(Buffer.from('GET / HTTP/1.1\r\nHost: medmesh\r\n\r\n'));
    let gone = false;
    void closed.then(() => (gone = true));
    try {
      await until('the site to close the connection', () => gone);
    } finally {
      socket.destroy();
    }
    const after = srv.metrics.snapshot();
    assert.equal(after.errors.network - before.errors.network, 1);
    assert.equal((await dcmtk('echoscu', ['-aet', 'MODALITY', '-aec', AE, ...at()])).code, 0);
  });

  it('answers an operation whose audit entry throws with a failure status, not a crash', async () => {
    const own = await startDimseServer({
      store: t.store,
      siteId: 'B',
      aeTitle: AE,
      port: 0,
      remoteAes: { MODALITY: { host: '127.0.0.1', port: 1 } },
      audit: (e) => (e.action === 'dicom-associate' ? Promise.resolve(true) : Promise.reject(new Error('audit log gone'))),
    });
    try {
      const echo = await dcmtk('echoscu', ['-v', '-aet', 'MODALITY', '-aec', AE, '127.0.0.1', String(own.port)]);
      assert.match(echo.out, /Received Echo Response \(Unknown Status: 0x110\)/, echo.out);
      const store = await dcmtk('storescu', [
        '-v',
        '-aet',
        'MODALITY',
        '-aec',
        AE,
        '127.0.0.1',
        String(own.port),
        `${PYDICOM}/test_files/MR_small.dcm`,
      ]);
      assert.match(store.out, /Received Store Response \(Unknown Status: 0x110\)/, store.out);
    } finally {
      await own.close();
    }
    assert.deepEqual(crashes, []);
  });
});
