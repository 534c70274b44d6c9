// Studies into the FHIR record: the Patient found by resident ID or the sender's patient ID
// (created, tagged as made from DICOM, when missing), an ImagingStudy per study kept in step
// as instances arrive, and a clear note when the record cannot be written at this site.
import { LogCounts, silentLogger } from '../common/index.ts';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import type { ImagingStudy, Patient } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { openTestStore, type TestStore } from '../records/testing.ts';
import { makeResidentId } from '../region/index.ts';
import { DICOM_PATIENT_ID_SYSTEM, StudyLinker } from './fhir-link.ts';
import { ImageResidency } from './image-residency.ts';
import { ImagingStore } from './imaging-store.ts';
import { blobCount } from './testing.ts';
import { makeInstances, openTestImaging, type TestImaging, until } from './testing.ts';

const uid = (n: number) => `1.2.826.0.1.3680043.10.1519.8.${n}`;

describe(`imaging studies in the FHIR record (${testBackend()})`, () => {
  let t: TestImaging;
  let r: TestStore;
  let linker: StudyLinker;
  const ingest = async (o: Parameters<typeof makeInstances>[0]) => {
    for (const f of await makeInstances(o)) assert.ok((await t.store.ingest(f, { source: 'ae:MODALITY' })).ok);
  };
  before(async () => {
    t = await openTestImaging();
    r = await openTestStore({ db: t.db, siteId: 'B' });
    linker = new StudyLinker({
      log: silentLogger(),
      db: t.db,
      holder: 'node-1',
      records: r.store,
      region: r.ctx.region,
      siteId: 'B',
      quietMs: 60_000,
    });
  });
  after(async () => t.close());

  it('creates the missing Patient (placed by resident ID) and the ImagingStudy', async () => {
    const rid = makeResidentId({ divisionCode: '440106', birthDate: '1975-06-01', sequence: 12 }); // Guangzhou: active at B
    await ingest({ studyUid: uid(1), date: '20261120', patientId: rid, count: 2 });
    assert.deepEqual(await linker.flush(), [], 'nothing while the study is still arriving');
    const [out] = await linker.flush({ all: true });
    assert.ok(out?.patient && out.imagingStudy, JSON.stringify(out));
    const p = await r.store.read('Patient', out.patient.split('/')[1]!);
    assert.ok(p.ok);
    const patient = p.value as Patient;
    assert.deepEqual(
      patient.identifier?.map((i) => i.system),
      ['urn:oid:2.16.156.10011.1.3', DICOM_PATIENT_ID_SYSTEM],
    );
    assert.equal(patient.meta?.tag?.[0]?.code, 'created-from-dicom');
    assert.equal(patient.meta?.source, `ae:MODALITY#study/${uid(1)}`);
    assert.equal(patient.name?.[0]?.family, 'CompressedSamples');
    assert.equal(patient.gender, 'female');
    const shard = (
      await t.db.query<{ shard: string }>("SELECT shard FROM resource_current WHERE resource_type = 'Patient' AND id = $1", [
        patient.id,
      ])
    ).rows[0]!.shard;
    assert.equal(shard, 'guangzhou', 'placed by the resident ID');
    const s = await r.store.read('ImagingStudy', uid(1));
    assert.ok(s.ok);
    const study = s.value as ImagingStudy;
    assert.equal(study.subject.reference, out.patient);
    assert.deepEqual(
      [study.numberOfSeries, study.numberOfInstances, study.series?.[0]?.instance?.length, study.modality?.[0]?.code],
      [1, 2, 2, 'MR'],
    );
    assert.equal(study.started, '2026-11-20T18:50:59+08:00');
  });

  it('keeps the ImagingStudy in step and finds the Patient again instead of making another', async () => {
    const rid = makeResidentId({ divisionCode: '440106', birthDate: '1975-06-01', sequence: 12 });
    await ingest({ studyUid: uid(1), date: '20261120', patientId: rid, count: 3 }); // a third instance
    await ingest({ studyUid: uid(2), date: '20261121', patientId: rid, count: 1 }); // and a second study
    const outs = await linker.flush({ all: true });
    assert.equal(outs.length, 2);
    assert.equal(new Set(outs.map((o) => o.patient)).size, 1, 'one patient');
    const patients = await r.store.search('Patient', [['identifier', `urn:oid:2.16.156.10011.1.3|${rid}`]], { baseUrl: 'urn:x' });
    assert.ok(patients.ok && patients.value.entry?.length === 1);
    const s = await r.store.read('ImagingStudy', uid(1));
    assert.ok(s.ok && (s.value as ImagingStudy).numberOfInstances === 3);
    assert.equal(s.value.meta?.versionId !== undefined, true);
    assert.deepEqual(await linker.flush({ all: true }), [], 'nothing left to do');
  });

  it('links to a Patient the record already has under the sender’s patient ID', async () => {
    const existing = await r.store.create('Patient', {
      resourceType: 'Patient',
      identifier: [{ system: DICOM_PATIENT_ID_SYSTEM, value: 'MRN-77' }],
      name: [{ family: '李', given: ['雷'] }],
    });
    assert.ok(existing.ok);
    await ingest({ studyUid: uid(3), date: '20261121', patientId: 'MRN-77', count: 1 });
    const [out] = await linker.flush({ all: true });
    assert.equal(out?.patient, `Patient/${existing.value.resource.id!}`);
  });

  it("links a study once when flushes overlap (the timer's and a caller's)", async () => {
    const rid = makeResidentId({ divisionCode: '440106', birthDate: '1981-02-03', sequence: 31 });
    await ingest({ studyUid: uid(7), date: '20261122', patientId: rid, count: 1 });
    const outs = (
      await Promise.all([linker.flush({ all: true }), linker.flush({ all: true }), linker.flush({ all: true })])
    ).flat();
    assert.deepEqual(
      outs.map((o) => o.study),
      [uid(7)],
      'one flush links it; the others find nothing left',
    );
    const { rows } = await t.db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM resource_current WHERE resource_type = 'Patient' AND content::text LIKE $1",
      [`%${rid}%`],
    );
    assert.equal(rows[0]!.n, 1, 'one Patient made from the study, not one per flush');
  });

  it(
    'links on one API node at a time: ' +
      'two nodes linking at once make one Patient per new patient, and the other takes over once the first stops',
    async () => {
      const rid = makeResidentId({ divisionCode: '440106', birthDate: '1986-07-08', sequence: 52 });
      for (const n of [20, 21, 22]) await ingest({ studyUid: uid(n), date: '20261123', patientId: rid, count: 1 });
      const other = new StudyLinker({
        log: silentLogger(),
        db: t.db,
        holder: 'node-2',
        records: r.store,
        region: r.ctx.region,
        siteId: 'B',
        quietMs: 60_000,
      });
      const [mine, theirs] = await Promise.all([linker.flush({ all: true }), other.flush({ all: true })]);
      assert.deepEqual(mine.map((o) => o.study).sort(), [uid(20), uid(21), uid(22)], 'the lease holder links every study');
      assert.deepEqual(theirs, [], 'the other node links nothing while the lease is held');
      const patients = await t.db.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM resource_current WHERE resource_type = 'Patient' AND content::text LIKE $1",
        [`%${rid}%`],
      );
      assert.equal(patients.rows[0]!.n, 1, 'one Patient for the three studies');
      await ingest({ studyUid: uid(23), date: '20261123', patientId: rid, count: 1 });
      await linker.stop(); // gives the lease back
      const [taken] = await other.flush({ all: true });
      assert.equal(taken?.study, uid(23), 'the other node links once the first has stopped');
      await other.stop();
    },
  );

  it('keeps running when a timer pass fails (the database away): no crash, the next pass links', async () => {
    let away = true;
    const flaky = {
      ...t.db,
      query: ((...a: Parameters<typeof t.db.query>) =>
        away ? Promise.reject(new Error('database away')) : t.db.query(...a)) as typeof t.db.query,
    };
    const counts = new LogCounts();
    const failedPasses = () => counts.entries().reduce((n, e) => n + (e.level === 'warn' ? e.count : 0), 0);
    const timed = new StudyLinker({
      log: silentLogger(counts),
      db: flaky,
      holder: 'node-1',
      records: r.store,
      region: r.ctx.region,
      siteId: 'B',
      quietMs: 0,
    }); // the same node's timer
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => void unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    try {
      const rid = makeResidentId({ divisionCode: '440106', birthDate: '1983-04-05', sequence: 41 });
      await ingest({ studyUid: uid(8), date: '20261122', patientId: rid, count: 1 });
      timed.start(20);
      // Each failed pass is logged and counted (a background loop's failures are never silent).
      await until('several failed passes, logged', () => failedPasses() >= 3);
      away = false;
      await until('the study linked once the database was back', async () => (await r.store.read('ImagingStudy', uid(8))).ok);
    } finally {
      await timed.stop();
      process.off('unhandledRejection', onUnhandled);
    }
    assert.deepEqual(unhandled, [], 'no failed pass escaped as an unhandled rejection');
  });

  it('links the other studies when one cannot be linked, and tries that one again after them', async () => {
    // A record store that refuses anything about one patient (the injected fault).
    let poisoned = true;
    const records = new Proxy(r.store, {
      get(target, name, receiver) {
        const v = Reflect.get(target, name, receiver) as unknown;
        if (typeof v !== 'function') return v;
        return (...args: unknown[]) => {
          if (poisoned && JSON.stringify(args).includes('POISON-1')) throw new Error('the record store refuses this patient');
          return (v as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    });
    const own = new StudyLinker({
      log: silentLogger(),
      db: t.db,
      holder: 'node-1',
      records,
      region: r.ctx.region,
      siteId: 'B',
      quietMs: 60_000,
    });
    await ingest({ studyUid: uid(20), date: '20261123', patientId: 'POISON-1', count: 1 });
    await ingest({ studyUid: uid(21), date: '20261123', patientId: 'FINE-1', count: 1 });
    const first = new Map((await own.flush({ all: true })).map((o) => [o.study, o]));
    assert.match(first.get(uid(20))?.note ?? '', /^link failed: the record store refuses this patient/);
    assert.ok(first.get(uid(21))?.imagingStudy, 'the study after it is linked in the same pass');
    // A study arriving later is linked before the one that failed is tried again.
    await ingest({ studyUid: uid(22), date: '20261123', patientId: 'FINE-2', count: 1 });
    const order = (await own.flush({ all: true })).map((o) => o.study);
    assert.deepEqual(order, [uid(22), uid(20)]);
    poisoned = false;
    const healed = await own.flush({ all: true });
    assert.ok(healed.find((o) => o.study === uid(20))?.imagingStudy, JSON.stringify(healed));
  });

  it('writes nothing at a site that is not the active one for the patient, and says why', async () => {
    const before = await r.counts();
    const shenzhen = makeResidentId({ divisionCode: '440305', birthDate: '1980-01-01', sequence: 3 }); // active at C
    await ingest({ studyUid: uid(4), date: '20261121', patientId: shenzhen, count: 1 });
    await ingest({ studyUid: uid(5), date: '20261121', patientId: '', count: 1 });
    const outs = await linker.flush({ all: true });
    const byStudy = new Map(outs.map((o) => [o.study, o]));
    assert.match(byStudy.get(uid(4))?.note ?? '', /cannot be created here: .*site C/);
    assert.match(byStudy.get(uid(5))?.note ?? '', /no Patient ID/);
    const after = await r.counts();
    assert.equal(after.resource_current, before.resource_current);
    const notes = (
      await t.db.query<{ link_note: string | null }>('SELECT link_note FROM imaging_study WHERE study_uid = $1', [uid(4)])
    ).rows[0]!;
    assert.match(notes.link_note!, /site C/);
  });

  it("keeps image bytes only where the patient's data may live", async () => {
    // Site A (public cloud) may hold no core data; B holds every shard of the example region.
    const atSite = (siteId: string) => {
      const residency = new ImageResidency({ records: r.store, region: r.ctx.region, siteId });
      return new ImagingStore({ db: t.db, blobs: t.blobs, kms: t.kms, admit: (a) => residency.refusal(a.patientId) });
    };
    const rows = async () => (await t.db.query<{ n: number }>('SELECT count(*)::int AS n FROM imaging_instance')).rows[0]!.n;
    const before = { rows: await rows(), blobs: await blobCount(t.blobs) };
    const guangzhou = makeResidentId({ divisionCode: '440106', birthDate: '1990-02-02', sequence: 5 });
    const [atA] = await makeInstances({ studyUid: uid(6), date: '20261121', patientId: guangzhou, count: 1 });
    const refused = await atSite('A').ingest(atA!, { source: 'ae:MODALITY' });
    assert.ok(!refused.ok && refused.error.kind === 'not-held-here', JSON.stringify(refused));
    assert.match(refused.error.message, /belongs to shard guangzhou, whose data site A may not hold; send to site B/);
    const [noId] = await makeInstances({ studyUid: uid(7), date: '20261121', patientId: 'VISITOR-1', count: 1 });
    const unplaced = await atSite('A').ingestStream(Readable.from([noId!]), { source: 'ae:MODALITY' });
    assert.ok(!unplaced.ok && /site A cannot place patient VISITOR-1/.test(unplaced.error.message));
    assert.deepEqual({ rows: await rows(), blobs: await blobCount(t.blobs) }, before, 'nothing kept at A');
    // active at C, replicated to B
    const shenzhen = makeResidentId({ divisionCode: '440305', birthDate: '1990-02-02', sequence: 6 });
    const [atB] = await makeInstances({ studyUid: uid(8), date: '20261121', patientId: shenzhen, count: 1 });
    assert.ok((await atSite('B').ingest(atB!, { source: 'ae:MODALITY' })).ok);
  });
});
