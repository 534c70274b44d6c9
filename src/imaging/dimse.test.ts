// The DIMSE side against DCMTK's own tools (echoscu, dcmsend, findscu) and a dcmjs-dimse
// client for what DCMTK will not send (a data set without its UIDs, a held association).
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import dimse from './dimse.ts';
import { testBackend } from '../db/test-db.ts';
import { startDimseServer, type DimseServer } from './dimse-server.ts';
import { checkStructure } from './dicom-structure.ts';
import { blobCount, dcmtk, openTestImaging, PYDICOM, type TestImaging, until } from './testing.ts';

const AE = 'MEDMESH_B';
const FILES = [
  'CT_small.dcm',
  'MR_small_bigendian.dcm',
  'JPEG2000.dcm',
  'JPEG-lossy.dcm',
  'SC_rgb_rle_2frame.dcm',
  'image_dfl.dcm',
  'waveform_ecg.dcm',
  'rtplan.dcm',
]
  .map((f) => `${PYDICOM}/test_files/${f}`)
  .concat([`${PYDICOM}/charset_files/chrX2.dcm`]);

describe(`DIMSE with DCMTK (${testBackend()})`, () => {
  let t: TestImaging;
  let srv: DimseServer;
  const known = { host: '127.0.0.1', port: 1 };
  const at = () => ['127.0.0.1', String(srv.port)];
  before(async () => {
    t = await openTestImaging();
    // Instances above 20 kB stream into the store (CT_small, the ECG, the RT plan); smaller ones are held.
    srv = await startDimseServer({
      store: t.store,
      siteId: 'B',
      aeTitle: AE,
      port: 0,
      maxAssociations: 1,
      streamAboveBytes: 20_000,
      remoteAes: { MODALITY: known, PACS: known },
      audit: t.audit,
    });
  });
  after(async () => {
    await srv.close();
    await t.close();
  });

  it('answers C-ECHO from a known AE and refuses unknown calling or called AEs, audited', async () => {
    assert.equal((await dcmtk('echoscu', ['-aet', 'MODALITY', '-aec', AE, ...at()])).code, 0);
    const stranger = await dcmtk('echoscu', ['-aet', 'STRANGER', '-aec', AE, ...at()]);
    assert.notEqual(stranger.code, 0);
    assert.match(stranger.out, /Calling AE Title Not Recognized/);
    const wrongCalled = await dcmtk('echoscu', ['-aet', 'MODALITY', '-aec', 'SOMEONE_ELSE', ...at()]);
    assert.match(wrongCalled.out, /Called AE Title Not Recognized/);
    const denied = t.events
      .filter((e) => e.action === 'dicom-associate' && e.outcome === 'deny')
      .map((e) => [e.actor.id, e.detail]);
    assert.deepEqual(denied, [
      ['ae:STRANGER', 'calling AE STRANGER is not known'],
      ['ae:MODALITY', 'called AE SOMEONE_ELSE is not MEDMESH_B'],
    ]);
    assert.ok(t.events.some((e) => e.action === 'dicom-echo' && e.actor.id === 'ae:MODALITY' && e.outcome === 'success'));
  });

  it('stores what dcmsend sends, in the transfer syntax it was sent in', async () => {
    const r = await dcmtk('dcmsend', ['-aet', 'MODALITY', '-aec', AE, '--decompress-never', ...at(), ...FILES], {
      timeoutMs: 60_000,
    });
    assert.equal(r.code, 0, r.out);
    const { rows } = await t.db.query<{
      sop_class_uid: string;
      transfer_syntax_uid: string;
      charset: string | null;
      number_of_frames: number | null;
      source: string;
    }>(
      `SELECT sop_class_uid, transfer_syntax_uid, charset, number_of_frames, source FROM imaging_instance
        ORDER BY transfer_syntax_uid, sop_class_uid`,
    );
    assert.equal(rows.length, FILES.length);
    const syntaxes = new Set(rows.map((x) => x.transfer_syntax_uid));
    for (const ts of ['1.2.840.10008.1.2.4.91', '1.2.840.10008.1.2.4.51', '1.2.840.10008.1.2.5', '1.2.840.10008.1.2.1.99'])
      assert.ok(syntaxes.has(ts), `compressed ${ts} kept as sent`);
    assert.ok(rows.some((x) => x.charset === 'GB18030'));
    assert.ok(rows.some((x) => x.number_of_frames === 2));
    assert.ok(rows.every((x) => x.source === 'ae:MODALITY'));
    assert.equal(t.events.filter((e) => e.action === 'dicom-store' && e.outcome === 'success').length, FILES.length);
    // A file sent as JPEG 2000 comes back with the same JPEG 2000 code stream (DCMTK may
    // re-encode sequence lengths on the wire; the compressed pixels are never touched).
    const back = await t.store.read('1.3.6.1.4.1.5962.1.1.8.1.3.20040826185059.5457');
    assert.ok(back.ok);
    const original = await readFile(`${PYDICOM}/test_files/JPEG2000.dcm`);
    const soc = Buffer.from('ff4fff51', 'hex'); // JPEG 2000 start of code stream
    assert.ok(original.indexOf(soc) > 0);
    assert.ok(
      back.value.file.subarray(back.value.file.indexOf(soc)).equals(original.subarray(original.indexOf(soc))),
      'code stream byte for byte',
    );
    // A streamed one (CT_small, 39 kB) likewise: the data set as sent, behind medmesh's File Meta group.
    const ct = await t.store.read('1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322');
    assert.ok(ct.ok);
    const sent = await readFile(`${PYDICOM}/test_files/CT_small.dcm`);
    const px = (f: Buffer) => {
      const s = checkStructure(f);
      assert.ok(s.ok && s.value.pixelData);
      return f.subarray(s.value.pixelData.offset, s.value.pixelData.offset + s.value.pixelData.length);
    };
    assert.ok(px(ct.value.file).equals(px(sent)));
    assert.equal(checkStructure(ct.value.file).ok, true);
  });

  it('answers C-FIND at study, series and image level', async () => {
    const find = async (level: string, keys: string[]) => {
      const r = await dcmtk('findscu', [
        '-aet',
        'PACS',
        '-aec',
        AE,
        '-S',
        '-k',
        `QueryRetrieveLevel=${level}`,
        ...keys.flatMap((k) => ['-k', k]),
        ...at(),
      ]);
      assert.equal(r.code, 0, r.out);
      return r.out;
    };
    const studies = await find('STUDY', ['StudyInstanceUID', 'PatientName', 'StudyDate=20040101-20041231', 'ModalitiesInStudy']);
    // CT and MR (2004-01 and 2004-08), NM (JPEG 2000 and JPEG lossy: one study); not the 2003 RT plan.
    assert.equal((studies.match(/Find Response: \d+ \(Pending\)/g) ?? []).length, 3, studies);
    assert.match(studies, /CompressedSamples\^CT1/);
    assert.doesNotMatch(studies, /Lestrade/);
    const chinese = await find('STUDY', ['SpecificCharacterSet=ISO_IR 192', 'StudyInstanceUID', 'PatientName=*王*']);
    assert.match(chinese, /Wang\^XiaoDong=王\^小东/);
    const series = await find('SERIES', [
      'StudyInstanceUID=1.3.6.1.4.1.5962.1.2.1.20040119072730.12322',
      'SeriesInstanceUID',
      'Modality',
    ]);
    assert.match(series, /\(0008,0060\) CS \[CT\]/);
    const images = await find('IMAGE', ['SOPInstanceUID', 'NumberOfFrames=2']);
    assert.equal((images.match(/Pending/g) ?? []).length, 1);
    const bad = await dcmtk('findscu', [
      '-v',
      '-aet',
      'PACS',
      '-aec',
      AE,
      '-S',
      '-k',
      'QueryRetrieveLevel=STUDY',
      '-k',
      'StudyDate=yesterday',
      ...at(),
    ]);
    assert.match(bad.out, /Received Final Find Response \(Failed: UnableToProcess\)/, bad.out);
    const level = await dcmtk('findscu', [
      '-v',
      '-aet',
      'PACS',
      '-aec',
      AE,
      '-S',
      '-k',
      'QueryRetrieveLevel=EVERYTHING',
      ...at(),
    ]);
    assert.match(level.out, /Received Final Find Response \(Error: DataSetDoesNotMatchSOPClass\)/, level.out);
    assert.ok(t.events.some((e) => e.action === 'dicom-find' && e.outcome === 'failure' && /not a date/.test(e.detail ?? '')));
  });

  it('refuses a C-STORE data set without its UIDs with a DICOM status, and stores nothing', async () => {
    const before = { rows: (await t.db.query('SELECT 1 FROM imaging_instance')).rows.length, blobs: await blobCount(t.blobs) };
    const { Client, Dataset } = dimse;
    const { CStoreRequest } = dimse.requests;
    const dataset = new Dataset(
      {
        SOPClassUID: '1.2.840.10008.5.1.4.1.1.7',
        SOPInstanceUID: '1.2.3.4.5.6.7',
        PatientName: [{ Alphabetic: 'No^Study' }],
        Modality: 'OT',
      },
      '1.2.840.10008.1.2.1',
    );
    const request = new CStoreRequest(dataset);
    const status = await new Promise<number>((resolve, reject) => {
      request.on('response', (r: { getStatus(): number }) => resolve(r.getStatus()));
      const client = new Client();
      client.addRequest(request);
      client.on('networkError', reject);
      client.send('127.0.0.1', srv.port, 'MODALITY', AE);
    });
    assert.equal(status, 0xc000, 'cannot understand');
    assert.deepEqual(
      { rows: (await t.db.query('SELECT 1 FROM imaging_instance')).rows.length, blobs: await blobCount(t.blobs) },
      before,
    );
    assert.ok(
      t.events.some((e) => e.action === 'dicom-store' && e.outcome === 'failure' && /no StudyInstanceUID/.test(e.detail ?? '')),
    );
  });

  it('bounds concurrent associations', async () => {
    const { Client } = dimse;
    const { CEchoRequest } = dimse.requests;
    // One association held open for a while (the limit here is 1) ...
    const held = new Client();
    held.addRequest(new CEchoRequest());
    const accepted = new Promise<void>((resolve) => held.on('associationAccepted', () => resolve()));
    const closed = new Promise<void>((resolve) => held.on('closed', () => resolve()));
    held.send('127.0.0.1', srv.port, 'MODALITY', AE, { associationLingerTimeout: 1500 });
    await accepted;
    // ... so the next one is turned away, transiently.
    const second = await dcmtk('echoscu', ['-aet', 'MODALITY', '-aec', AE, ...at()]);
    assert.notEqual(second.code, 0);
    assert.match(second.out, /Local Limit Exceeded/i, second.out);
    await closed;
    // The client has closed; the site frees the slot when it sees the connection end.
    await until('the held association to free its slot', () => srv.activeAssociations() === 0);
    assert.equal((await dcmtk('echoscu', ['-aet', 'MODALITY', '-aec', AE, ...at()])).code, 0, 'a slot again once it is released');
    await until('the echo to free its slot', () => srv.activeAssociations() === 0);
  });
});
