// Active collection from a real Orthanc (the source PACS) by C-FIND and C-MOVE into medmesh's
// own C-STORE SCP: checkpoints across restarts, retries, a study the site refuses, and the
// completeness report that lists exactly what is missing and why.
import { silentLogger } from '../common/index.ts';
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { testBackend } from '../db/test-db.ts';
import { CollectionScheduler, type SourceRun } from './collection-scheduler.ts';
import { Collector } from './collector.ts';
import { startDimseServer, type DimseServer } from './dimse-server.ts';
import { makeInstances, openTestImaging, type TestImaging, until } from './testing.ts';
import { startOrthanc, type TestOrthanc } from './testing-orthanc.ts';

const DAY = '20261120';
const uid = (n: number) => `1.2.826.0.1.3680043.10.1519.7.${n}`;

describe(`active collection from Orthanc (${testBackend()})`, () => {
  let t: TestImaging;
  let srv: DimseServer;
  let orthanc: TestOrthanc;
  let collector: Collector;
  const collectorReport = (day: string) => collector.report(day);
  const source = () => ({ id: 'pacs-1', aeTitle: orthanc.aeTitle, host: '127.0.0.1', port: orthanc.dicomPort });
  const stores = () => t.events.filter((e) => e.action === 'dicom-store' && e.outcome === 'success').length;
  before(async () => {
    // Files above 30 kB are refused here: the CT-based study below cannot be taken.
    t = await openTestImaging({ maxFileBytes: 30_000 });
    srv = await startDimseServer({
      store: t.store,
      siteId: 'B',
      aeTitle: 'MEDMESH_B',
      port: 0,
      remoteAes: { ORTHANC: { host: '127.0.0.1', port: 0 } },
      audit: t.audit,
    });
    orthanc = await startOrthanc({ modalities: { MEDMESH_B: srv.port } });
    const studies = [
      ...(await makeInstances({ studyUid: uid(1), date: DAY, patientId: 'P1', count: 3 })),
      ...(await makeInstances({ studyUid: uid(2), date: DAY, patientId: 'P2', count: 2 })),
      // Left out: larger than this site takes (CT_small is 39 kB).
      ...(await makeInstances({ template: 'CT_small.dcm', studyUid: uid(3), date: DAY, patientId: 'P3', count: 1 })),
      ...(await makeInstances({ studyUid: uid(4), date: '20261121', patientId: 'P4', count: 1 })),
    ];
    for (const f of studies) await orthanc.upload(f);
    collector = new Collector({ db: t.db, source: source(), localAe: 'MEDMESH_B', retryDelayMs: 50, maxAttempts: 2 });
  });
  after(async () => {
    await orthanc?.close();
    await srv?.close();
    await t?.close();
  });

  it('collects a day, and reports what it could not take', async () => {
    const run = await collector.collectDay(DAY);
    assert.ok(run.ok, JSON.stringify(run));
    assert.deepEqual([run.value.studies, run.value.retrieved, run.value.skipped], [3, 2, 0]);
    assert.deepEqual(
      run.value.failed.map((f) => f.study),
      [uid(3)],
    );
    assert.match(run.value.failed[0]!.error, /C-MOVE .* ended with status|holds 0 after the retrieval/);
    const report = await collector.report(DAY);
    assert.equal(report.complete, false);
    assert.deepEqual([report.source_studies, report.held_studies, report.source_instances, report.held_instances], [3, 2, 6, 5]);
    assert.deepEqual(
      report.differences.map((d) => [d.study, d.kind, d.source_instances, d.held_instances, d.state]),
      [[uid(3), 'missing', 1, 0, 'failed']],
    );
    const held = (
      await t.db.query<{ study_uid: string; n: number }>(
        'SELECT study_uid, count(*)::int AS n FROM imaging_instance GROUP BY study_uid ORDER BY study_uid',
      )
    ).rows;
    assert.deepEqual(
      held.map((h) => [h.study_uid, h.n]),
      [
        [uid(1), 3],
        [uid(2), 2],
      ],
    );
    assert.ok(t.events.some((e) => e.action === 'dicom-store' && e.outcome === 'failure' && e.actor.id === 'ae:ORTHANC'));
  });

  it('goes on where it stopped: a restarted collector fetches only what is not yet held', async () => {
    const before = stores();
    const again = await new Collector({
      db: t.db,
      source: source(),
      localAe: 'MEDMESH_B',
      retryDelayMs: 10,
      maxAttempts: 1,
    }).collectDay(DAY);
    assert.ok(again.ok);
    assert.deepEqual([again.value.skipped, again.value.retrieved, again.value.failed.length], [2, 0, 1]);
    assert.equal(stores(), before, 'nothing already held was moved again');
    const attempts = (
      await t.db.query<{ attempts: number }>('SELECT attempts FROM imaging_collection_study WHERE study_uid = $1', [uid(3)])
    ).rows[0]!.attempts;
    assert.equal(attempts, 3, 'two attempts in the first run, one now');
  });

  it('fetches a study again when the source gains instances, and reports the day complete when all is held', async () => {
    for (const f of await makeInstances({ studyUid: uid(1), date: DAY, patientId: 'P1', count: 4 })) await orthanc.upload(f);
    const run = await collector.collectDay(DAY);
    assert.ok(run.ok);
    assert.equal(run.value.retrieved, 1);
    const report = await collector.report(DAY);
    assert.deepEqual(
      report.differences.map((d) => d.study),
      [uid(3)],
      'only the refused study is still missing',
    );
    assert.equal(report.held_instances, 6);
    const next = await collector.collectDay('20261121');
    assert.ok(next.ok && next.value.retrieved === 1);
    const day2 = await collector.report('20261121');
    assert.deepEqual([day2.complete, day2.source_instances, day2.held_instances], [true, 1, 1]);
    assert.equal((await collector.report('20261119')).complete, false, 'a day never queried is not complete');
    const bad = await collector.collectDay('2026-11-20');
    assert.ok(!bad.ok && /must be YYYYMMDD/.test(bad.error));
  });

  it('says clearly when the source cannot be reached', async () => {
    const lost = new Collector({ db: t.db, source: { ...source(), port: 1 }, localAe: 'MEDMESH_B', timeoutMs: 5000 });
    const r = await lost.collectDay(DAY);
    assert.ok(!r.ok);
    assert.match(r.error, /ORTHANC at 127\.0\.0\.1:1/);
  });
  it("goes on with the other studies of a day when one study's checkpoint cannot be written", async () => {
    const day = '20261125';
    for (const n of [30, 31])
      for (const f of await makeInstances({ studyUid: uid(n), date: day, patientId: `P${n}`, count: 1 })) await orthanc.upload(f);
    // A database that refuses every write of one study's checkpoint (the injected fault).
    const db = new Proxy(t.db, {
      get(target, name, receiver) {
        const v = Reflect.get(target, name, receiver) as unknown;
        if (typeof v !== 'function') return v;
        if (name !== 'query') return (v as (...a: unknown[]) => unknown).bind(target);
        return (sql: string, params?: unknown[]) =>
          sql.startsWith('UPDATE imaging_collection_study') && params?.includes(uid(30))
            ? Promise.reject(new Error('could not write the checkpoint'))
            : (v as (s: string, p?: unknown[]) => unknown).call(target, sql, params);
      },
    });
    const run = await new Collector({ db, source: source(), localAe: 'MEDMESH_B', maxAttempts: 1 }).collectDay(day);
    assert.ok(run.ok, JSON.stringify(run));
    assert.deepEqual(
      [run.value.retrieved, run.value.failed.map((f) => [f.study, f.error])],
      [1, [[uid(30), 'could not write the checkpoint']]],
    );
  });

  it('keeps collecting every source, period after period, when reporting a run throws', async () => {
    const crashes: unknown[] = [];
    const onCrash = (e: unknown) => void crashes.push(e);
    process.on('unhandledRejection', onCrash);
    process.on('uncaughtException', onCrash);
    const unreachable = (id: string) =>
      new Collector({
        db: t.db,
        source: { id, kind: 'dicomweb', url: 'http://127.0.0.1:1/dicom-web' },
        store: t.store,
        maxAttempts: 1,
        timeoutMs: 5000,
      });
    const seen: string[] = [];
    const scheduler = new CollectionScheduler({
      log: silentLogger(),
      db: t.db,
      collectors: [unreachable('web-a'), unreachable('web-b')],
      holder: 'node-x',
      everyMs: 20,
      onRun: (r) => {
        seen.push(`${r.source}:${r.outcome}`);
        throw new Error('the log cannot be written'); // the injected fault
      },
    });
    try {
      scheduler.start();
      const periods = () => seen.filter((x) => x.startsWith('web-b')).length;
      await until(
        () => `two periods of web-b, only ${JSON.stringify(seen)}`,
        () => periods() >= 2,
        20_000,
      );
    } finally {
      await scheduler.stop();
      process.off('unhandledRejection', onCrash);
      process.off('uncaughtException', onCrash);
    }
    assert.ok(seen.includes('web-a:failed') && seen.includes('web-b:failed'), JSON.stringify(seen));
    assert.deepEqual(crashes, []);
  });

  it('runs on a schedule, one node per source at a time, the last days each run', async () => {
    const now = () => new Date(2026, 10, 21, 3, 0); // 03:00 local on 21 November: days 20 and 21
    const node = (holder: string, runs: SourceRun[], everyMs = 60_000) =>
      new CollectionScheduler({
        log: silentLogger(),
        db: t.db,
        collectors: [new Collector({ db: t.db, source: source(), localAe: 'MEDMESH_B', retryDelayMs: 10, maxAttempts: 1 })],
        holder,
        everyMs,
        now,
        onRun: (r) => runs.push(r),
      });
    const runs1: SourceRun[] = [];
    const runs2: SourceRun[] = [];
    const [n1, n2] = [node('node-1', runs1), node('node-2', runs2)];
    assert.deepEqual(n1.days(), ['20261120', '20261121']);
    for (const f of await makeInstances({ studyUid: uid(5), date: '20261121', patientId: 'P5', count: 2 }))
      await orthanc.upload(f);
    const [a, b] = await Promise.all([n1.runOnce(), n2.runOnce()]);
    const outcomes = [a[0]!.outcome, b[0]!.outcome].sort();
    assert.deepEqual(outcomes, ['collected', 'held-elsewhere'], 'one node collected, the other left it');
    const ran = a[0]!.outcome === 'held-elsewhere' ? b[0]! : a[0]!;
    assert.deepEqual(
      ran.days.map((d) => (d.ok ? [d.value.day, d.value.retrieved, d.value.failed.length] : d.error)),
      [
        ['20261120', 0, 1],
        ['20261121', 1, 0],
      ],
    );
    assert.deepEqual((await collectorReport('20261121')).differences, [], 'the new study is held');
    // Within the period the lease stands, for both nodes; once it lapses another node may run.
    assert.equal((await n1.runOnce())[0]!.outcome, 'held-elsewhere');
    await t.db.query("UPDATE replication_lease SET expires_at = now() - interval '1 second' WHERE peer = 'collect:pacs-1'");
    const later = await (ran === a[0] ? n2 : n1).runOnce();
    assert.equal(later[0]!.outcome, 'collected');
    assert.equal(later[0]!.days.length, 2);
    // Started, it runs at once and again each period until stopped.
    await t.db.query("DELETE FROM replication_lease WHERE peer = 'collect:pacs-1'");
    const runs3: SourceRun[] = [];
    const n3 = node('node-3', runs3, 1000);
    n3.start();
    assert.ok(n3.scheduled, 'a run in flight once started');
    await until('two runs of node-3', () => runs3.length >= 2, 20_000);
    await n3.stop();
    // Runs come only from its timer: none is left, and none is in flight, so none can follow.
    assert.equal(n3.scheduled, false, 'nothing scheduled after stop');
    assert.deepEqual(runs1.length + runs2.length, 4);
  });
});
