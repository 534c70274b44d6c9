// Active collection over DICOMweb from a real Orthanc (its DICOMweb plugin): QIDO-RS by study
// date, WADO-RS of each study streamed into the store, the same checkpoints and completeness
// report as the DIMSE path, and the bytes held equal to the bytes the source sent.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createConnection, createServer } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { testBackend } from '../db/test-db.ts';
import { Collector, type CollectionSource } from './collector.ts';
import type { ImagingStore } from './imaging-store.ts';
import { makeInstances, openTestImaging, type TestImaging } from './testing.ts';
import { orthancDicomwebPlugin, startOrthanc, type TestOrthanc } from './testing-orthanc.ts';

const DAY = '20261118';
const uid = (n: number) => `1.2.826.0.1.3680043.10.1519.8.${n}`;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe(
  `active collection from Orthanc over DICOMweb (${testBackend()})`,
  {
    skip:
      orthancDicomwebPlugin() || process.env.CI ? false : 'orthanc-dicomweb is not installed (apt-get install orthanc-dicomweb)',
  },
  () => {
    let t: TestImaging;
    let orthanc: TestOrthanc;
    const sent = new Map<string, string>();
    const source = (url = `${orthanc.http}/dicom-web`): CollectionSource => ({ id: 'pacs-web', kind: 'dicomweb', url });
    before(async () => {
      // Files above 30 kB are refused here: the CT study below cannot be taken.
      t = await openTestImaging({ maxFileBytes: 30_000 });
      orthanc = await startOrthanc({ dicomweb: true });
      const files = [
        ...(await makeInstances({ studyUid: uid(1), date: DAY, patientId: 'W1', count: 3 })),
        ...(await makeInstances({ studyUid: uid(2), date: DAY, patientId: 'W2', count: 2 })),
        ...(await makeInstances({ template: 'CT_small.dcm', studyUid: uid(3), date: DAY, patientId: 'W3', count: 1 })),
        ...(await makeInstances({ studyUid: uid(4), date: '20261117', patientId: 'W4', count: 1 })),
      ];
      for (const f of files) {
        await orthanc.upload(f);
        sent.set(sha(f), 'sent');
      }
    });
    after(async () => {
      await orthanc?.close();
      await t?.close();
    });

    it('collects a day by QIDO-RS and WADO-RS, byte for byte, and reports the study it could not take', async () => {
      const collector = new Collector({ db: t.db, source: source(), store: t.store, retryDelayMs: 20, maxAttempts: 2 });
      const run = await collector.collectDay(DAY);
      assert.ok(run.ok, JSON.stringify(run));
      assert.deepEqual([run.value.studies, run.value.retrieved, run.value.skipped], [3, 2, 0]);
      assert.deepEqual(
        run.value.failed.map((f) => f.study),
        [uid(3)],
      );
      assert.match(run.value.failed[0]!.error, /refused 1 instance\(s\): part 1: .*at most 30000/);
      const held = (
        await t.db.query<{ study_uid: string; sha256: string; source: string }>(
          'SELECT study_uid, sha256, source FROM imaging_instance WHERE current ORDER BY study_uid',
        )
      ).rows;
      assert.deepEqual(
        held.map((h) => h.study_uid),
        [uid(1), uid(1), uid(1), uid(2), uid(2)],
        'nothing of another day, nothing of the refused study',
      );
      assert.ok(
        held.every((h) => sent.has(h.sha256)),
        'each file held is byte for byte one the source sent',
      );
      assert.ok(held.every((h) => h.source === 'dicomweb:pacs-web'));
      const report = await collector.report(DAY);
      assert.deepEqual(
        [report.complete, report.source_studies, report.held_studies, report.source_instances, report.held_instances],
        [false, 3, 2, 6, 5],
      );
      assert.deepEqual(
        report.differences.map((d) => [d.study, d.kind, d.state]),
        [[uid(3), 'missing', 'failed']],
      );
      // Run again: what is held is not fetched again; the other day is complete on its own.
      const again = await collector.collectDay(DAY);
      assert.ok(again.ok);
      assert.deepEqual([again.value.skipped, again.value.retrieved, again.value.failed.length], [2, 0, 1]);
      const other = await collector.collectDay('20261117');
      assert.ok(other.ok && other.value.retrieved === 1);
      assert.equal((await collector.report('20261117')).complete, true);
    });

    it('survives a source that closes its connection while an answer is unread (Orthanc, Connection: close)', async () => {
      // Orthanc answers WADO-RS with Connection: close and no Content-Length, and closes once it
      // has sent everything. When the connection closes while 64 KiB of the answer wait unread
      // (the store busy with a part), the HTTP client bundled with Node 24 threw an uncatchable
      // AssertionError and ended the process (nodejs/undici#5360). A relay in front of Orthanc
      // makes that moment certain: it holds back the last 64 KiB of Orthanc's answer until the
      // store has stopped reading, then sends them with the close.
      const day = '20261119';
      for (const f of await makeInstances({ template: 'CT_small.dcm', studyUid: uid(5), date: day, patientId: 'W5', count: 3 }))
        await orthanc.upload(f);
      const crashes: unknown[] = [];
      const onCrash = (e: unknown) => crashes.push(e);
      process.on('uncaughtException', onCrash);
      const gate = await holdBackTail(orthanc.http, 65_536);
      const own = await openTestImaging();
      try {
        let first = true;
        const slow = Object.create(own.store) as ImagingStore;
        slow.missingFiles = (where) => own.store.missingFiles(where);
        slow.receive = async (body, o) => {
          if (first) {
            first = false;
            await gate.releaseAndWaitForClose(); // the store busy: nothing reads the answer meanwhile
          }
          return own.store.receive(body, o);
        };
        const run = await new Collector({
          db: own.db,
          source: { id: 'pacs-web', kind: 'dicomweb', url: `${gate.url}/dicom-web` },
          store: slow,
          maxAttempts: 1,
        }).collectDay(day);
        assert.deepEqual(crashes, []);
        assert.ok(run.ok && run.value.retrieved === 1, JSON.stringify(run));
        const held = await own.db.query('SELECT 1 FROM imaging_instance WHERE study_uid = $1 AND current', [uid(5)]);
        assert.equal(held.rows.length, 3);
      } finally {
        process.off('uncaughtException', onCrash);
        gate.close();
        await own.close();
      }
    });

    it('says clearly when the source cannot be reached or is not DICOMweb', async () => {
      const down = await new Collector({
        db: t.db,
        source: source('http://127.0.0.1:1/dicom-web'),
        store: t.store,
        timeoutMs: 5000,
      }).collectDay(DAY);
      assert.ok(!down.ok);
      assert.match(down.error, /QIDO-RS http:\/\/127\.0\.0\.1:1\/dicom-web\/studies: fetch failed/);
      const wrong = await new Collector({ db: t.db, source: source(`${orthanc.http}/not-dicom-web`), store: t.store }).collectDay(
        DAY,
      );
      assert.ok(!wrong.ok);
      assert.match(wrong.error, /answered 404/);
    });
  },
);

/**
 * An HTTP relay in front of `target` that passes answers through whole, except a
 * multipart/related one: that is sent but for its last `tail` bytes, which follow with the
 * close once `releaseAndWaitForClose` is called (it resolves when the client has closed).
 */
async function holdBackTail(
  target: string,
  tail: number,
): Promise<{ url: string; releaseAndWaitForClose(): Promise<void>; close(): void }> {
  const to = new URL(target);
  let release: () => void = () => undefined;
  const released = new Promise<void>((r) => (release = r));
  let clientClosed: () => void = () => undefined;
  const closedByClient = new Promise<void>((r) => (clientClosed = r));
  const server = createServer((inbound) => {
    inbound.on('error', () => undefined);
    const outbound = createConnection({ host: to.hostname, port: Number(to.port) });
    outbound.on('error', () => inbound.destroy());
    inbound.pipe(outbound);
    const answer: Buffer[] = [];
    outbound.on('data', (b: Buffer) => answer.push(b));
    outbound.on('end', () => {
      const all = Buffer.concat(answer);
      if (!all.subarray(0, all.indexOf('\r\n\r\n')).toString('latin1').includes('multipart/related')) {
        inbound.end(all);
        return;
      }
      inbound.write(all.subarray(0, all.length - tail));
      inbound.on('close', clientClosed);
      void released.then(() => inbound.end(all.subarray(all.length - tail)));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    releaseAndWaitForClose: () => {
      release();
      let timer: NodeJS.Timeout | undefined;
      return Promise.race([
        closedByClient,
        new Promise<void>((_, reject) => {
          timer = setTimeout(() => reject(new Error('the client never closed the connection')), 20_000);
        }),
      ]).finally(() => clearTimeout(timer));
    },
    close: () => server.close(),
  };
}
