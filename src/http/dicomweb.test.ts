// DICOMweb against a real client (the dicomweb-client package, with an XMLHttpRequest
// polyfill as it needs in Node) and raw HTTP for what a well-behaved client never sends.
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import dicomweb from 'dicomweb-client';
import XMLHttpRequest from 'xhr2';
import { testBackend } from '../db/test-db.ts';
import { checkStructure } from '../imaging/index.ts';
import { makeInstances, sample } from '../imaging/testing.ts';
import { Sm2PrivateKey } from '../security/crypto/index.ts';
import { DEFAULT_POLICIES } from '../security/access/index.ts';
import { serviceAssertion } from '../security/identity/index.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

(globalThis as { XMLHttpRequest?: unknown }).XMLHttpRequest = XMLHttpRequest;

/** The calls used here (the package's generated types mark every option required). */
interface Client {
  storeInstances(o: { datasets: ArrayBuffer[] }): Promise<unknown>;
  searchForStudies(o: { queryParams?: Record<string, string> }): Promise<unknown>;
  searchForSeries(o: { studyInstanceUID: string }): Promise<unknown>;
  searchForInstances(o: { studyInstanceUID: string; seriesInstanceUID: string }): Promise<unknown>;
  retrieveStudy(o: { studyInstanceUID: string }): Promise<unknown>;
  retrieveInstance(o: { studyInstanceUID: string; seriesInstanceUID: string; sopInstanceUID: string }): Promise<unknown>;
  retrieveInstanceMetadata(o: { studyInstanceUID: string; seriesInstanceUID: string; sopInstanceUID: string }): Promise<unknown>;
  retrieveInstanceFrames(o: {
    studyInstanceUID: string;
    seriesInstanceUID: string;
    sopInstanceUID: string;
    frameNumbers: string;
  }): Promise<unknown>;
}

const CT_STUDY = '1.3.6.1.4.1.5962.1.2.1.20040119072730.12322';
const CT_SERIES = '1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322';
const CT = '1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322';
const FILES = [
  'CT_small.dcm',
  'MR_small_bigendian.dcm',
  'JPEG2000.dcm',
  'SC_rgb_rle_2frame.dcm',
  'charset_files/chrX2.dcm',
  'liver_1frame.dcm',
];

const ab = (b: Buffer) => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
const tag = (o: Record<string, { Value?: unknown[] }>, t: string) => o[t]?.Value?.[0];

describe(`DICOMweb (${testBackend()})`, () => {
  let s: TestServer;
  let client: Client;
  const audits = async (action: string) =>
    (
      await s.db.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM audit_entry WHERE convert_from(entry, 'UTF8')::jsonb->>'action' = $1",
        [action],
      )
    ).rows[0]!.n;
  before(async () => {
    s = await startTestServer({ maxImageBytes: 1_000_000, streamImagesAboveBytes: 50_000 });
    client = new dicomweb.api.DICOMwebClient({
      url: `${s.base}/dicomweb`,
      headers: s.as(['integration']),
      verbose: false,
    } as never) as unknown as Client;
  });
  after(async () => s.close());

  it('stores with STOW-RS and answers with the references', async () => {
    const files = await Promise.all(FILES.map((f) => sample(f)));
    const answer = await client.storeInstances({ datasets: files.map(ab) });
    const rows = (await s.db.query<{ n: number }>('SELECT count(*)::int AS n FROM imaging_instance')).rows[0]!.n;
    assert.equal(rows, FILES.length);
    assert.ok(answer !== undefined);
    // The same through plain HTTP, to read status and body: all duplicates now, still 200.
    const { status, body } = await stowRaw(s, files.slice(0, 2));
    assert.equal(status, 200);
    const refs = (body['00081199'] as { Value: Array<Record<string, { Value: string[] }>> }).Value;
    assert.deepEqual(
      refs.map((r) => r['00081155']!.Value[0]).sort(),
      [CT, '1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457'].sort(),
    );
    assert.match(refs[0]!['00081190']!.Value[0]!, /\/dicomweb\/studies\/[0-9.]+\/series\/[0-9.]+\/instances\/[0-9.]+$/);
    assert.ok((await audits('dicom-store')) >= 2, 'audited');
  });

  it('answers QIDO-RS at study, series and instance level', async () => {
    const studies = (await client.searchForStudies({ queryParams: { PatientName: '*王*' } })) as Array<
      Record<string, { Value?: unknown[] }>
    >;
    assert.equal(studies.length, 1);
    assert.deepEqual(tag(studies[0]!, '00100010'), { Alphabetic: 'Wang^XiaoDong', Ideographic: '王^小东' });
    const dated = (await client.searchForStudies({
      queryParams: { StudyDate: '20040101-20041231', includefield: 'NumberOfStudyRelatedInstances' },
    })) as Array<Record<string, { Value?: unknown[] }>>;
    assert.deepEqual(
      dated.map((x) => tag(x, '0020000D')).sort(),
      [CT_STUDY, '1.3.6.1.4.1.5962.1.2.4.20040826185059.5457', '1.3.6.1.4.1.5962.1.2.8.20040826185059.5457'].sort(),
    );
    assert.ok(dated.every((x) => tag(x, '00201208') === 1));
    const series = (await client.searchForSeries({ studyInstanceUID: CT_STUDY })) as Array<Record<string, { Value?: unknown[] }>>;
    assert.deepEqual(
      series.map((x) => [tag(x, '0020000E'), tag(x, '00080060')]),
      [[CT_SERIES, 'CT']],
    );
    const instances = (await client.searchForInstances({ studyInstanceUID: CT_STUDY, seriesInstanceUID: CT_SERIES })) as Array<
      Record<string, { Value?: unknown[] }>
    >;
    assert.deepEqual(
      instances.map((x) => tag(x, '00080018')),
      [CT],
    );
    const paged = (await client.searchForStudies({ queryParams: { limit: '2', offset: '1' } })) as unknown[];
    assert.equal(paged.length, 2);
  });

  it('retrieves studies, instances, metadata and frames with WADO-RS, byte for byte', async () => {
    const [file] = (await client.retrieveStudy({ studyInstanceUID: CT_STUDY })) as ArrayBuffer[];
    assert.ok(Buffer.from(file!).equals(await sample('CT_small.dcm')));
    const instance = (await client.retrieveInstance({
      studyInstanceUID: CT_STUDY,
      seriesInstanceUID: CT_SERIES,
      sopInstanceUID: CT,
    })) as ArrayBuffer;
    assert.ok(Buffer.from(instance).equals(await sample('CT_small.dcm')));
    const meta = (await client.retrieveInstanceMetadata({
      studyInstanceUID: CT_STUDY,
      seriesInstanceUID: CT_SERIES,
      sopInstanceUID: CT,
    })) as Array<Record<string, { Value?: unknown[] }>>;
    assert.equal(tag(meta[0]!, '00080060'), 'CT');
    assert.equal(meta[0]!['7FE00010'], undefined, 'no bulk data in metadata');
    const [frame] = (await client.retrieveInstanceFrames({
      studyInstanceUID: CT_STUDY,
      seriesInstanceUID: CT_SERIES,
      sopInstanceUID: CT,
      frameNumbers: '1',
    })) as ArrayBuffer[];
    const ct = await sample('CT_small.dcm');
    const px = checkStructure(ct);
    assert.ok(px.ok && px.value.pixelData);
    assert.equal(frame!.byteLength, 128 * 128 * 2);
    assert.ok(
      Buffer.from(frame!).equals(ct.subarray(px.value.pixelData.offset, px.value.pixelData.offset + px.value.pixelData.length)),
    );
    assert.ok((await audits('dicom-retrieve')) >= 3);
  });

  it('refuses what it cannot do or may not do, clearly', async () => {
    const get = (path: string, headers: Record<string, string> = s.as(['integration'])) =>
      fetch(`${s.base}/dicomweb${path}`, { headers });
    assert.equal((await get('/studies', {})).status, 401, 'no token');
    assert.equal((await get('/studies', s.as(['researcher']))).status, 403, 'a researcher fetches no individual images');
    assert.equal((await get('/studies', s.as(['patient']))).status, 403, 'a patient account not linked to a record');
    const lab = await get('/studies', s.as(['lab']));
    assert.equal(lab.status, 403, 'the lab policy grants nothing of ImagingStudy');
    assert.match(((await lab.json()) as { message: string }).message, /ImagingStudy/);
    const unknown = await get('/studies?Bogus=1');
    assert.equal(unknown.status, 400);
    assert.match(((await unknown.json()) as { message: string }).message, /Bogus is not a matching key/);
    assert.equal((await get('/studies?StudyDate=yesterday')).status, 400);
    assert.equal((await get('/studies/1.2.3.999')).status, 404);
    assert.equal((await get('/studies/not-a-uid')).status, 400);
    const jp2 = '1.3.6.1.4.1.5962.1.2.8.20040826185059.5457';
    const asJpegLs = await get(`/studies/${jp2}`, {
      ...s.as(['integration']),
      accept: 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80',
    });
    assert.equal(asJpegLs.status, 406);
    assert.match(((await asJpegLs.json()) as { message: string }).message, /medmesh returns instances as stored/);
    const jp2Series = '1.3.6.1.4.1.5962.1.3.8.1.20040826185059.5457';
    const jp2Instance = '1.3.6.1.4.1.5962.1.1.8.1.3.20040826185059.5457';
    const frames = await get(`/studies/${jp2}/series/${jp2Series}/instances/${jp2Instance}/frames/1`);
    assert.equal(frames.status, 406, 'frames of compressed data would need transcoding');
    assert.equal((await get(`/studies/${CT_STUDY}/series/${CT_SERIES}/instances/${CT}/frames/2`)).status, 404);
    assert.equal((await get(`/studies/${CT_STUDY}`, { ...s.as(['integration']), accept: 'application/json' })).status, 406);
  });

  it('gives each caller the images of the patients whose record they may read, and audits each refusal', async () => {
    await s.site.studyLinker!.flush({ all: true });
    const patientOf = async (study: string) =>
      (await s.db.query<{ patient_ref: string | null }>('SELECT patient_ref FROM imaging_study WHERE study_uid = $1', [study]))
        .rows[0]?.patient_ref;
    const ctPatient = await patientOf(CT_STUDY);
    assert.match(ctPatient ?? '', /^Patient\//, 'the CT study is linked to its patient');
    const studiesFor = async (headers: Record<string, string>) => {
      const r = await fetch(`${s.base}/dicomweb/studies`, { headers });
      assert.equal(r.status, 200);
      return ((await r.json()) as Array<Record<string, { Value?: unknown[] }>>).map((x) => tag(x, '0020000D'));
    };
    const doctor = s.as(['doctor'], { department: 'cardiology' }, { userId: 'dr-li' });
    const wado = (study: string, headers: Record<string, string>) =>
      fetch(`${s.base}/dicomweb/studies/${study}`, {
        headers: { ...headers, accept: 'multipart/related; type="application/dicom"' },
      });
    assert.deepEqual(await studiesFor(doctor), [], "no patient of these studies is in the doctor's care");
    const denied = await wado(CT_STUDY, doctor);
    assert.equal(denied.status, 403);
    assert.match(
      ((await denied.json()) as { message: string }).message,
      new RegExp(`study ${CT_STUDY.replaceAll('.', '\\.')} belongs to a patient outside your care relationship`),
    );
    const deniedAudits = (
      await s.db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM audit_entry
          WHERE convert_from(entry, 'UTF8')::jsonb->>'action' = 'dicom-retrieve'
            AND convert_from(entry, 'UTF8')::jsonb->>'outcome' = 'deny'
            AND convert_from(entry, 'UTF8')::jsonb->>'detail' LIKE '%care relationship%'`,
      )
    ).rows[0]!.n;
    assert.ok(deniedAudits >= 1, 'the refusal is audited with its reason');
    // An encounter at cardiology puts the CT patient in the doctor's care: that study, and only it.
    const enc = await fetch(`${s.fhir}/Encounter`, {
      method: 'POST',
      headers: { ...s.as(['integration']), 'content-type': 'application/fhir+json' },
      body: JSON.stringify({
        resourceType: 'Encounter',
        status: 'finished',
        class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
        subject: { reference: ctPatient },
        serviceProvider: { reference: 'Organization/cardiology' },
      }),
    });
    assert.equal(enc.status, 201, await enc.text());
    assert.deepEqual(await studiesFor(doctor), [CT_STUDY]);
    const served = await wado(CT_STUDY, doctor);
    assert.equal(served.status, 200);
    assert.ok(Buffer.from(await served.arrayBuffer()).includes(await sample('CT_small.dcm')));
    assert.equal((await wado('1.3.6.1.4.1.5962.1.2.8.20040826185059.5457', doctor)).status, 403, "another patient's study");
    // A patient sees their own studies; the integration account every study.
    const own = s.as(['patient'], { patient: ctPatient!.slice('Patient/'.length) });
    assert.deepEqual(await studiesFor(own), [CT_STUDY]);
    assert.equal((await studiesFor(s.as(['integration']))).length, FILES.length);
    // A policy that would mask part of ImagingStudy cannot be honoured on DICOM headers: refused.
    const policy = DEFAULT_POLICIES.find((p) => p.name === 'nurse')!;
    const put = await fetch(`${s.base}/access/policies/nurse`, {
      method: 'PUT',
      headers: { ...s.as(['administrator']), 'content-type': 'application/json' },
      body: JSON.stringify({
        ...policy,
        rules: [
          ...policy.rules,
          { resourceTypes: ['ImagingStudy'], actions: ['read', 'search'], scope: 'all', fields: { subject: 'mask' } },
        ],
      }),
    });
    assert.equal(put.status, 200, await put.text());
    const nurse = await fetch(`${s.base}/dicomweb/studies`, { headers: s.as(['nurse']) });
    assert.equal(nurse.status, 403);
    assert.match(((await nurse.json()) as { message: string }).message, /with subject masked .*which medmesh does not mask/);
    // Services by kind: an edge gateway stores but does not read.
    const edgeKey = Sm2PrivateKey.generate();
    await s.site.identity.registerService({ id: 'edge-1', kind: 'edge', publicKey: edgeKey.publicKey });
    const asEdge = { authorization: `MedmeshService ${serviceAssertion({ serviceId: 'edge-1', key: edgeKey, site: 'B' })}` };
    const edgeRead = await fetch(`${s.base}/dicomweb/studies`, { headers: asEdge });
    assert.equal(edgeRead.status, 403);
    assert.match(((await edgeRead.json()) as { message: string }).message, /not for edge service accounts/);
  });

  it('takes images from a doctor only for patients in their care, as a FHIR create would', async () => {
    // Follows the test above: the CT patient is in dr-li's care through a cardiology encounter.
    const pidOf = async (study: string) =>
      (await s.db.query<{ patient_id: string }>('SELECT patient_id FROM imaging_study WHERE study_uid = $1', [study])).rows[0]!
        .patient_id;
    const inCare = await pidOf(CT_STUDY);
    const other = await pidOf('1.3.6.1.4.1.5962.1.2.4.20040826185059.5457'); // MR_small_bigendian's patient, held, not in care
    const make = (studyUid: string, patientId: string) =>
      makeInstances({ template: 'CT_small.dcm', studyUid, date: '20261120', patientId, count: 1 });
    const doctor = s.as(['doctor'], { department: 'cardiology' }, { userId: 'dr-li' });
    const instances = async () => (await s.db.query<{ n: number }>('SELECT count(*)::int AS n FROM imaging_instance')).rows[0]!.n;
    const n0 = await instances();
    const blobs0 = await blobFiles(s.blobRoot);

    const mine = await stowRaw(s, await make('1.2.826.0.1.3680043.10.543.71', inCare), '/studies', doctor);
    assert.equal(mine.status, 200, JSON.stringify(mine.body));
    const refused = await stowRaw(
      s,
      [
        ...(await make('1.2.826.0.1.3680043.10.543.72', other)),
        ...(await make('1.2.826.0.1.3680043.10.543.73', 'NO-RECORD-HERE-9')),
        ...(await make('1.2.826.0.1.3680043.10.543.74', '')),
        // 197 KB: above this server's streaming threshold, so refused on the streamed path.
        ...(await makeInstances({
          template: 'SC_rgb_jpeg_dcmd.dcm',
          studyUid: '1.2.826.0.1.3680043.10.543.76',
          date: '20261120',
          patientId: other,
          count: 1,
        })),
      ],
      '/studies',
      doctor,
    );
    assert.equal(refused.status, 409);
    const reasons = (refused.body['00081198'] as { Value: Array<Record<string, { Value: number[] }>> }).Value.map(
      (f) => f['00081197']!.Value[0],
    );
    assert.deepEqual(reasons, [0x0124, 0x0124, 0x0124, 0x0124]);
    assert.match(
      refused.warning ?? '',
      new RegExp(`part 1: a study of patient ${other} \\(Patient/[^)]+\\) belongs to a patient outside your care relationship`),
    );
    assert.match(
      refused.warning ?? '',
      /part 2: patient NO-RECORD-HERE-9 has no record at this site yet: register the patient first/,
    );
    assert.match(refused.warning ?? '', /part 3: instance [0-9.]+ carries no Patient ID/);
    assert.match(refused.warning ?? '', new RegExp(`part 4: a study of patient ${other} `));
    const audited = await s.db.query<{ outcome: string; detail: string }>(
      `SELECT e->>'outcome' AS outcome, e->>'detail' AS detail
         FROM (SELECT convert_from(entry, 'UTF8')::jsonb AS e FROM audit_entry) x
        WHERE e->>'action' = 'dicom-store' AND e->'actor'->>'id' = 'dr-li'
        ORDER BY e->>'time'`,
    );
    assert.deepEqual(
      audited.rows.map((r) => r.outcome),
      ['success', 'deny'],
      'each STOW by the doctor is audited, the refused one as a denial',
    );
    assert.match(audited.rows[1]!.detail, /stored 0, failed 4; 4 refused to this caller: a study of patient/);
    assert.equal(await instances(), n0 + 1, 'only the in-care instance is indexed');
    assert.equal(await blobFiles(s.blobRoot), blobs0 + 1, 'and only its file is kept');
    // A service account (the PACS, a modality behind an edge) is not scoped by patient.
    const fromPacs = await stowRaw(s, await make('1.2.826.0.1.3680043.10.543.75', 'NO-RECORD-HERE-9'));
    assert.equal(fromPacs.status, 200, `${JSON.stringify(fromPacs.body)} ${fromPacs.warning}`);
  });

  it('refuses bad STOW-RS bodies part by part and writes nothing for them', async () => {
    // The study linker writes a study's ImagingStudy (and a missing Patient) once the study has
    // been quiet for 2 s: link what earlier tests stored first, so only this test's writes count.
    await s.site.studyLinker!.flush({ all: true });
    const current = async () =>
      new Set(
        (await s.db.query<{ r: string }>("SELECT resource_type || '/' || id AS r FROM resource_current")).rows.map((x) => x.r),
      );
    const current0 = await current();
    const files0 = new Set(await blobNames(s.blobRoot));
    const rows = async () => (await s.db.query<{ n: number }>('SELECT count(*)::int AS n FROM imaging_instance')).rows[0]!.n;
    const n0 = await rows();
    const post = (body: Buffer, contentType: string, path = '/studies') =>
      fetch(`${s.base}/dicomweb${path}`, {
        method: 'POST',
        headers: { ...s.as(['integration']), 'content-type': contentType },
        body,
      });
    const good = await sample('MR_small.dcm');
    const badBoundary = await post(multipart([good], 'abc'), 'multipart/related; type="application/dicom"; boundary=xyz');
    assert.equal(badBoundary.status, 400);
    assert.match(((await badBoundary.json()) as { message: string }).message, /never contains the boundary xyz/);
    assert.equal((await post(good, 'application/json')).status, 415);
    const noBoundary = await post(good, 'multipart/related; type="application/dicom"');
    assert.equal(noBoundary.status, 400);
    // One truncated file among good ones: 202, the good one stored, the bad one listed with a reason.
    const mixed = await stowRaw(s, [await sample('MR_truncated.dcm'), good]);
    assert.equal(mixed.status, 202);
    assert.deepEqual(
      (mixed.body['00081198'] as { Value: Array<Record<string, { Value: number[] }>> }).Value.map((f) => f['00081197']!.Value[0]),
      [0xc000],
    );
    assert.match(mixed.warning ?? '', /part 1: truncated: \(7FE0,0010\) declares 8192 bytes but 8130 remain/);
    const wrongStudy = await stowRaw(s, [await sample('waveform_ecg.dcm')], `/studies/${CT_STUDY}`);
    assert.equal(wrongStudy.status, 409);
    assert.deepEqual(
      (wrongStudy.body['00081198'] as { Value: Array<Record<string, { Value: unknown[] }>> }).Value.map(
        (f) => f['00081197']!.Value[0],
      ),
      [0xa900],
    );
    const tooBig = await stowRaw(s, [Buffer.alloc(1_100_000)]);
    assert.equal(tooBig.status, 409);
    assert.deepEqual(
      (tooBig.body['00081198'] as { Value: Array<Record<string, { Value: unknown[] }>> }).Value.map(
        (f) => f['00081197']!.Value[0],
      ),
      [0xa700],
    );
    const noBoundaryInBody = await post(Buffer.alloc(3_000_000), 'multipart/related; type="application/dicom"; boundary=b');
    assert.equal(noBoundaryInBody.status, 400);
    assert.match(((await noBoundaryInBody.json()) as { message: string }).message, /no boundary b within the first 65536 bytes/);
    // Cut off inside the second part: the first is stored whole, the second leaves nothing.
    const cut = multipart([good, await sample('waveform_ecg.dcm')], 'cut').subarray(0, good.length + 200_000);
    const cutOff = await post(cut, 'multipart/related; type="application/dicom"; boundary=cut');
    assert.equal(cutOff.status, 202);
    assert.match(cutOff.headers.get('warning') ?? '', /part 2 has no closing boundary/);
    assert.equal(await rows(), n0 + 1, 'only the good file');
    // The good file's study is linked (now, or by the linker's timer if this test ran long):
    // the only records written are that study's ImagingStudy and, if it had none, its Patient.
    await s.site.studyLinker!.flush({ all: true });
    const {
      rows: [study],
    } = await s.db.query<{ study_uid: string; patient_ref: string | null }>(
      `SELECT st.study_uid, st.patient_ref FROM imaging_study st JOIN imaging_instance i USING (study_uid)
        WHERE i.sop_instance_uid = $1`,
      [(mixed.body['00081199'] as { Value: Array<Record<string, { Value: string[] }>> }).Value[0]!['00081155']!.Value[0]],
    );
    const written = [...(await current())].filter((r) => !current0.has(r));
    assert.ok(
      written.every((r) => r === `ImagingStudy/${study!.study_uid}` || r === study!.patient_ref),
      `only the good file's study reached the record: ${written.join(', ')}`,
    );
    const added = (await blobNames(s.blobRoot)).filter((f) => !files0.has(f));
    assert.equal(added.length, 1, `no blob without its index row; added: ${added.join(', ')}`);
    assert.equal(await blobFiles(s.blobRoot), n0 + 1, 'no blob without its index row');
  });

  it('streams large parts into the store as they arrive', async () => {
    const big = await sample('SC_rgb_jpeg_dcmd.dcm'); // 197 KB: above this server's 50 KB streaming threshold
    const small = await sample('MR_small_expb.dcm');
    const boundary = 'slow-upload';
    const whole = multipart([big, small], boundary);
    // Sent in 4 KB pieces, as a slow link would: the parser never sees more than one at a time.
    const pieces = new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < whole.length; i += 4096) c.enqueue(whole.subarray(i, i + 4096));
        c.close();
      },
    });
    const r = await fetch(`${s.base}/dicomweb/studies`, {
      method: 'POST',
      headers: { ...s.as(['integration']), 'content-type': `multipart/related; type="application/dicom"; boundary=${boundary}` },
      body: pieces,
      duplex: 'half',
    });
    assert.equal(r.status, 200);
    const refs = ((await r.json()) as { '00081199': { Value: Array<Record<string, { Value: string[] }>> } })['00081199'].Value;
    for (const [i, file] of [big, small].entries()) {
      const back = await fetch(refs[i]!['00081190']!.Value[0]!, {
        headers: { ...s.as(['integration']), accept: 'multipart/related; type="application/dicom"' },
      });
      assert.equal(back.status, 200);
      assert.ok(Buffer.from(await back.arrayBuffer()).includes(file), `instance ${i + 1} comes back byte for byte`);
    }
  });
});

describe(`DICOMweb on an S3-compatible blob store (${testBackend()})`, () => {
  it('stores into the bucket and serves the files back byte for byte', async () => {
    const s = await startTestServer({ imageStore: 's3', streamImagesAboveBytes: 50_000 });
    try {
      // One file held in memory on the way, one streamed (above 50 kB), both encrypted into S3.
      const files = [await sample('CT_small.dcm'), await sample('SC_rgb_jpeg_dcmd.dcm')];
      const stored = await stowRaw(s, files);
      assert.equal(stored.status, 200, JSON.stringify(stored.body));
      const held = (
        await s.db.query<{ study_uid: string; size_bytes: string | number }>(
          'SELECT study_uid, size_bytes FROM imaging_instance ORDER BY size_bytes',
        )
      ).rows;
      assert.equal(held.length, 2);
      for (const h of held) {
        const back = await fetch(`${s.base}/dicomweb/studies/${h.study_uid}`, {
          headers: { ...s.as(['integration']), accept: 'multipart/related; type="application/dicom"' },
        });
        assert.equal(back.status, 200);
        assert.ok(
          Buffer.from(await back.arrayBuffer()).includes(files.find((f) => f.length === Number(h.size_bytes))!),
          'byte for byte',
        );
      }
      const objects = (await readdir(s.blobRoot, { recursive: true })).filter((f) => f.endsWith('.mmf._S3rver_object'));
      assert.equal(objects.length, 2, 'two encrypted objects in the bucket');
      const plain = await Promise.all(objects.map((f) => readFile(join(s.blobRoot, f))));
      assert.ok(
        plain.every((o) => o.subarray(0, 4).toString() === 'MMF1' && !o.includes(files[0]!.subarray(1000, 1100))),
        'what the bucket holds is encrypted',
      );
    } finally {
      await s.close();
    }
  });
});

describe(`DICOMweb on a sealed site (${testBackend()})`, () => {
  it('serves no images while the audit log cannot record the access', async () => {
    const s = await startTestServer({ kms: 'uninitialized' });
    try {
      const r = await fetch(`${s.base}/dicomweb/studies`);
      assert.equal(r.status, 503);
      assert.match(await r.text(), /is sealed/);
    } finally {
      await s.close();
    }
  });
});

async function blobFiles(root: string): Promise<number> {
  return (await blobNames(root)).length;
}

async function blobNames(root: string): Promise<string[]> {
  return (await readdir(root, { recursive: true, withFileTypes: true }))
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name));
}

function multipart(files: Buffer[], boundary: string): Buffer {
  return Buffer.concat([
    ...files.flatMap((f) => [Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`), f, Buffer.from('\r\n')]),
    Buffer.from(`--${boundary}--\r\n`),
  ]);
}

async function stowRaw(
  s: TestServer,
  files: Buffer[],
  path = '/studies',
  as = s.as(['integration']),
): Promise<{ status: number; body: Record<string, unknown>; warning: string | null }> {
  const boundary = 'medmesh-test-boundary';
  const r = await fetch(`${s.base}/dicomweb${path}`, {
    method: 'POST',
    headers: { ...as, 'content-type': `multipart/related; type="application/dicom"; boundary=${boundary}` },
    body: multipart(files, boundary),
  });
  return { status: r.status, body: (await r.json()) as Record<string, unknown>, warning: r.headers.get('warning') };
}
