// C-MOVE from medmesh to a real Orthanc, asked for by DCMTK's movescu: the data sets arrive
// byte for byte as medmesh holds them (compressed ones included), unknown destinations are
// refused with the DICOM status for it, and each move is audited.
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { testBackend } from '../db/test-db.ts';
import { checkStructure } from './dicom-structure.ts';
import { startDimseServer, type DimseServer } from './dimse-server.ts';
import { dcmtk, openTestImaging, sample, type TestImaging } from './testing.ts';
import { startOrthanc, type TestOrthanc } from './testing-orthanc.ts';

const CT_STUDY = '1.3.6.1.4.1.5962.1.2.1.20040119072730.12322';
const NM_STUDY = '1.3.6.1.4.1.5962.1.2.8.20040826185059.5457';

describe(`C-MOVE to Orthanc and C-GET (${testBackend()})`, () => {
  let t: TestImaging;
  let srv: DimseServer;
  let orthanc: TestOrthanc;
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
    srv = await startDimseServer({
      store: t.store,
      siteId: 'B',
      aeTitle: 'MEDMESH_B',
      port: 0,
      remoteAes: { PACS: { host: '127.0.0.1', port: 1 }, ORTHANC: { host: '127.0.0.1', port: orthanc.dicomPort } },
      audit: t.audit,
    });
    for (const f of ['CT_small.dcm', 'JPEG2000.dcm', 'JPEG-lossy.dcm'])
      assert.ok((await t.store.ingest(await sample(f), { source: 'test' })).ok);
  });
  after(async () => {
    await srv?.close();
    await orthanc?.close();
    await t?.close();
  });

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

  it('refuses an unknown destination with its DICOM status', async () => {
    const r = await move(CT_STUDY, 'NOWHERE');
    assert.match(r.out, /Received Final Move Response \(Refused: MoveDestinationUnknown\)/, r.out);
    assert.ok(
      t.events.some((e) => e.action === 'dicom-move' && e.outcome === 'failure' && /NOWHERE is not known/.test(e.detail ?? '')),
    );
  });
});
