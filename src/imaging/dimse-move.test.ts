// C-MOVE from medmesh to a real Orthanc, asked for by DCMTK's movescu: the data sets arrive
// byte for byte as medmesh holds them (compressed and deflated ones included), unknown
// destinations are refused with the DICOM status for it, and each move is audited. C-GET by
// getscu, whatever it proposes. A destination or caller that cannot take a file, or aborts,
// gets a final answer with the failure counted (never silence, never a crashed site).
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { testBackend } from '../db/test-db.ts';
import { checkStructure } from './dicom-structure.ts';
import { startDimseServer, type DimseServer } from './dimse-server.ts';
import { dcmtk, makeInstances, openTestImaging, sample, type TestImaging } from './testing.ts';
import { startOrthanc, type TestOrthanc } from './testing-orthanc.ts';

const CT_STUDY = '1.3.6.1.4.1.5962.1.2.1.20040119072730.12322';
const NM_STUDY = '1.3.6.1.4.1.5962.1.2.8.20040826185059.5457';
const DEFLATED_STUDY = '1.3.6.1.4.1.5962.1.2.0.977067310.6001.0';
const DEFLATED_SOP = '1.3.6.1.4.1.5962.1.1.0.0.0.977067309.6001.0';
const PRIVATE_STUDY = '1.2.826.0.1.3680043.10.1519.31';

/**
 * A free TCP port on 127.0.0.1 for a DCMTK listener, below the kernel's ephemeral range (32768
 * and up): a port from there can be taken meanwhile by any outgoing connection.
 */
async function freePort(): Promise<number> {
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const free = await new Promise<boolean>((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (free) return port;
  }
}

describe(`C-MOVE to Orthanc and C-GET (${testBackend()})`, () => {
  let t: TestImaging;
  let srv: DimseServer;
  let orthanc: TestOrthanc;
  /** storescp that aborts every association once a C-STORE request has arrived. */
  let aborter: ChildProcess;
  let aborterDir: string;
  const move = (study: string, destination: string) =>
    dcmtk('movescu', [
      '-v',
      '-aet',
      'PACS',
      '-aec',
      'MEDMESH_B',
      '-aem',
      destination,
      '-S',
      '-k',
      'QueryRetrieveLevel=STUDY',
      '-k',
      `StudyInstanceUID=${study}`,
      '127.0.0.1',
      String(srv.port),
    ]);
  const orthancFiles = async () => {
    const ids = (await (await fetch(`${orthanc.http}/instances`)).json()) as string[];
    return Promise.all(
      ids.map(async (id) => Buffer.from(await (await fetch(`${orthanc.http}/instances/${id}/file`)).arrayBuffer())),
    );
  };
  const dataset = (f: Buffer) => {
    const s = checkStructure(f);
    assert.ok(s.ok, s.ok ? '' : s.error);
    return f.subarray(s.value.datasetOffset);
  };
  const pixels = (f: Buffer) => {
    const s = checkStructure(f);
    assert.ok(s.ok && s.value.pixelData);
    return f.subarray(s.value.pixelData.offset, s.value.pixelData.offset + s.value.pixelData.length);
  };
  before(async () => {
    t = await openTestImaging();
    orthanc = await startOrthanc();
    aborterDir = await mkdtemp(join(tmpdir(), 'medmesh-storescp-'));
    const aborterPort = await freePort();
    aborter = spawn('storescp', ['--abort-after', '-od', aborterDir, '-aet', 'ABORTER', String(aborterPort)], {
      env: { ...process.env, TCP_NODELAY: '1' },
      stdio: 'ignore',
    });
    for (const until = Date.now() + 10_000; ;) {
      if ((await dcmtk('echoscu', ['-aec', 'ABORTER', '127.0.0.1', String(aborterPort)])).code === 0) break;
      assert.ok(Date.now() < until, 'storescp did not start');
    }
    srv = await startDimseServer({
      store: t.store,
      siteId: 'B',
      aeTitle: 'MEDMESH_B',
      port: 0,
      remoteAes: {
        PACS: { host: '127.0.0.1', port: 1 },
        ORTHANC: { host: '127.0.0.1', port: orthanc.dicomPort },
        ABORTER: { host: '127.0.0.1', port: aborterPort },
      },
      audit: t.audit,
    });
    for (const f of ['CT_small.dcm', 'JPEG2000.dcm', 'JPEG-lossy.dcm', 'image_dfl.dcm'])
      assert.ok((await t.store.ingest(await sample(f), { source: 'test' })).ok);
    // An instance of a private SOP class: no caller proposes a presentation context for it.
    const [priv] = await makeInstances({ studyUid: PRIVATE_STUDY, date: '20261101', patientId: 'P31', count: 1 });
    const privDir = await mkdtemp(join(tmpdir(), 'medmesh-private-'));
    try {
      await writeFile(join(privDir, 'p.dcm'), priv!);
      const r = await dcmtk('dcmodify', ['-nb', '-m', 'SOPClassUID=1.2.826.0.1.3680043.10.1519.999', join(privDir, 'p.dcm')]);
      assert.equal(r.code, 0, r.out);
      assert.ok((await t.store.ingest(await readFile(join(privDir, 'p.dcm')), { source: 'test' })).ok);
    } finally {
      await rm(privDir, { recursive: true, force: true });
    }
  });
  after(async () => {
    aborter?.kill();
    await srv?.close();
    await orthanc?.close();
    await t?.close();
    if (aborterDir) await rm(aborterDir, { recursive: true, force: true });
  });
  const get = async (study: string, extra: string[], dir: string) =>
    dcmtk('getscu', [
      '-v',
      ...extra,
      '-aet',
      'PACS',
      '-aec',
      'MEDMESH_B',
      '-S',
      '-k',
      'QueryRetrieveLevel=STUDY',
      '-k',
      `StudyInstanceUID=${study}`,
      '-od',
      dir,
      '127.0.0.1',
      String(srv.port),
    ]);

  it('sends a study to a known destination, data sets byte for byte', async () => {
    const r = await move(CT_STUDY, 'ORTHANC');
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /Received Final Move Response \(Success\)/);
    const [got] = await orthancFiles();
    const held = await t.store.read('1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322');
    assert.ok(held.ok);
    assert.ok(dataset(got!).equals(dataset(held.value.file)), 'the data set Orthanc stored is the one medmesh holds');
  });

  it('moves compressed studies without transcoding', async () => {
    const r = await move(NM_STUDY, 'ORTHANC');
    assert.match(r.out, /Received Final Move Response \(Success\)/, r.out);
    const files = await orthancFiles();
    assert.equal(files.length, 3);
    for (const sop of ['1.3.6.1.4.1.5962.1.1.8.1.3.20040826185059.5457', '1.3.6.1.4.1.5962.1.1.8.1.5.20040826185059.5457']) {
      const held = await t.store.read(sop);
      assert.ok(held.ok);
      // Orthanc writes sequences with explicit lengths when it stores; the compressed pixel
      // data (and its transfer syntax) must arrive untouched.
      const match = files.find((f) => f.includes(Buffer.from(sop)));
      assert.ok(match, sop);
      const ts = checkStructure(match);
      assert.ok(
        ts.ok && ts.value.transferSyntaxUid === held.value.instance.transferSyntaxUid,
        `${sop} kept ${held.value.instance.transferSyntaxUid}`,
      );
      assert.ok(pixels(match).equals(pixels(held.value.file)), `${sop}: pixel data byte for byte`);
    }
    const moves = t.events.filter((e) => e.action === 'dicom-move' && e.outcome === 'success');
    assert.equal(moves.length, 2);
    assert.match(moves[1]!.detail!, /2 sent to ORTHANC, 0 failed/);
  });

  it('answers C-GET from DCMTK getscu with the study on the same association', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'medmesh-getscu-'));
    try {
      const r = await dcmtk('getscu', [
        '-v',
        '-aet',
        'PACS',
        '-aec',
        'MEDMESH_B',
        '-S',
        '-k',
        'QueryRetrieveLevel=STUDY',
        '-k',
        `StudyInstanceUID=${CT_STUDY}`,
        '-od',
        dir,
        '127.0.0.1',
        String(srv.port),
      ]);
      assert.match(r.out, /Received Final C-GET Response|Final Get Response|Success/i, r.out);
      const got = await readdir(dir);
      assert.equal(got.length, 1, r.out);
      const held = await t.store.read('1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322');
      assert.ok(held.ok);
      // getscu writes sequences with undefined lengths when it saves; the pixels are as held.
      assert.ok(pixels(await readFile(join(dir, got[0]!))).equals(pixels(held.value.file)));
      assert.ok(
        t.events.some((e) => e.action === 'dicom-get' && e.outcome === 'success' && /1 sent, 0 failed/.test(e.detail ?? '')),
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('moves a study stored deflated to Orthanc, as stored', async () => {
    const r = await move(DEFLATED_STUDY, 'ORTHANC');
    assert.match(r.out, /Received Final Move Response \(Success\)/, r.out);
    const got = (await orthancFiles()).find((f) => f.includes(Buffer.from(DEFLATED_SOP)));
    assert.ok(got, 'Orthanc holds the instance');
    const s = checkStructure(got);
    assert.ok(s.ok && s.value.transferSyntaxUid === '1.2.840.10008.1.2.1.99', 'kept deflated');
    assert.ok(t.events.some((e) => e.action === 'dicom-move' && /1 sent to ORTHANC, 0 failed/.test(e.detail ?? '')));
  });

  it(
    'answers C-GET of a deflated study whatever getscu proposes: ' + 'sent when it takes deflated, a counted failure when not',
    async () => {
      const dir = await mkdtemp(join(tmpdir(), 'medmesh-getscu-'));
      try {
        const taken = await get(DEFLATED_STUDY, ['+xd'], dir);
        assert.match(taken.out, /Number of Completed Suboperations : 1/, taken.out);
        assert.equal((await readdir(dir)).length, 1);
        // getscu proposing only uncompressed syntaxes: medmesh does not transcode, so it fails the
        // sub-operation and says so in the final response (before: no answer at all).
        const refused = await get(DEFLATED_STUDY, [], dir);
        assert.match(refused.out, /Number of Failed Suboperations\s*: 1/, refused.out);
        assert.match(refused.out, /Received C-GET Response \(Warning: SubOperationsCompleteOneOrMoreFailures\)/, refused.out);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  );

  it('answers C-GET of a SOP class the caller proposed no context for, instead of never answering', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'medmesh-getscu-'));
    try {
      const r = await get(PRIVATE_STUDY, [], dir);
      assert.match(r.out, /Number of Failed Suboperations\s*: 1/, r.out);
      assert.ok(
        t.events.some((e) => e.action === 'dicom-get' && /no presentation context accepted for SOP class/.test(e.detail ?? '')),
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('answers a move promptly when the destination aborts the association', async () => {
    const started = Date.now();
    const r = await move(CT_STUDY, 'ABORTER');
    const took = Date.now() - started;
    assert.match(r.out, /Received Final Move Response \(Warning: SubOperationsCompleteOneOrMoreFailures\)/, r.out);
    // Without closing on the destination's A-ABORT, medmesh and DCMTK wait for each other 30 s.
    assert.ok(took < 10_000, `the move took ${took} ms`);
    assert.ok(t.events.some((e) => e.action === 'dicom-move' && /ABORTER aborted the association/.test(e.detail ?? '')));
  });

  it('refuses an unknown destination with its DICOM status', async () => {
    const r = await move(CT_STUDY, 'NOWHERE');
    assert.match(r.out, /Received Final Move Response \(Refused: MoveDestinationUnknown\)/, r.out);
    assert.ok(
      t.events.some((e) => e.action === 'dicom-move' && e.outcome === 'failure' && /NOWHERE is not known/.test(e.detail ?? '')),
    );
  });
});
