// The collection report API: who may read it, what it refuses, and a report that lists what
// the source holds and this site does not. (Collection itself runs against a real Orthanc in
// src/imaging/collector.test.ts; here the checkpoint rows stand in for a run.)
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { testBackend } from '../db/test-db.ts';
import { createServer } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openTestDb } from '../db/test-db.ts';
import { makeInstances, sample } from '../imaging/testing.ts';
import { startOrthanc } from '../imaging/testing-orthanc.ts';
import type { SourceRun } from '../imaging/index.ts';
import { exampleRegion } from '../region/testing.ts';
import { Sm2PrivateKey } from '../security/crypto/index.ts';
import { openSite } from '../site/index.ts';
import { startTestServer, tokensOf, type TestServer } from '../site/testing.ts';

const CT_STUDY = '1.3.6.1.4.1.5962.1.2.1.20040119072730.12322';
const MISSING = '1.2.826.0.1.3680043.10.1519.9.1';

describe(`collection reports (${testBackend()})`, () => {
  let s: TestServer;
  const get = (path: string, headers: Record<string, string> = s.as(['administrator'])) =>
    fetch(`${s.base}/imaging/collection${path}`, { headers });
  before(async () => {
    s = await startTestServer();
    const stored = await s.site.imaging!.ingest(await sample('CT_small.dcm'), { source: 'test' });
    assert.ok(stored.ok);
    await s.db.query(
      "INSERT INTO imaging_collection_day (source, study_date, queried_at, studies) VALUES ('pacs-1', '20040119', now(), 2)",
    );
    await s.db.query(
      `INSERT INTO imaging_collection_study (source, study_uid, study_date, source_instances, state, attempts, last_error)
       VALUES ('pacs-1', $1, '20040119', 1, 'retrieved', 1, NULL),
              ('pacs-1', $2, '20040119', 4, 'failed', 3, 'C-MOVE ended with status 0xA701')`,
      [CT_STUDY, MISSING],
    );
  });
  after(async () => s.close());

  it('reports a day: source versus held, the missing study and why', async () => {
    const r = await get('/pacs-1/20040119');
    assert.equal(r.status, 200);
    const report = (await r.json()) as {
      complete: boolean;
      source_studies: number;
      held_studies: number;
      source_instances: number;
      held_instances: number;
      differences: Array<{ study: string; kind: string; last_error: string }>;
    };
    assert.deepEqual(
      [report.complete, report.source_studies, report.held_studies, report.source_instances, report.held_instances],
      [false, 2, 1, 5, 1],
    );
    assert.deepEqual(
      report.differences.map((d) => [d.study, d.kind, d.last_error]),
      [[MISSING, 'missing', 'C-MOVE ended with status 0xA701']],
    );
    const list = (await (await get('/', s.as(['auditor']))).json()) as {
      sources: Array<{ id: string; configured: boolean; days: Array<{ day: string; studies: number }> }>;
    };
    assert.deepEqual(
      list.sources.map((x) => [x.id, x.configured, x.days.map((d) => [d.day, d.studies])]),
      [['pacs-1', false, [['20040119', 2]]]],
    );
  });

  it('refuses the wrong callers and bad requests clearly', async () => {
    assert.equal((await get('/pacs-1/20040119', {})).status, 401);
    assert.equal((await get('/pacs-1/20040119', s.as(['doctor']))).status, 403);
    const day = await get('/pacs-1/2004-01-19');
    assert.equal(day.status, 400);
    assert.deepEqual(await day.json(), {
      code: 'bad-request',
      message: 'params.day: must be YYYYMMDD',
      issues: ['params.day: must be YYYYMMDD'],
    });
    assert.equal((await get('/pacs-1/2004-01-19', s.as(['doctor']))).status, 403, 'route access answers before the schemas');
    const unknown = await get('/nowhere/20040119');
    assert.equal(unknown.status, 404);
    assert.match(
      ((await unknown.json()) as { message: string }).message,
      /no collection source nowhere here \(configured: none\)/,
    );
  });
});

describe(`a site collecting on its own (${testBackend()})`, () => {
  it('collects today from a real Orthanc once started, by DIMSE and by DICOMweb, and reports the day complete', async () => {
    const dimsePort = await freePort();
    const orthanc = await startOrthanc({ modalities: { MEDMESH_B: dimsePort }, dicomweb: true });
    const db = await openTestDb({ migrated: false });
    const blobRoot = await mkdtemp(join(tmpdir(), 'medmesh-collect-'));
    try {
      const now = new Date();
      const today = `${now.getFullYear()}${String(now.getMonth() + 1).padStart(2, '0')}${String(now.getDate()).padStart(2, '0')}`;
      for (const f of await makeInstances({
        studyUid: '1.2.826.0.1.3680043.10.1519.9.2',
        date: today,
        patientId: 'C1',
        count: 2,
      }))
        await orthanc.upload(f);
      const runs: SourceRun[] = [];
      const opened = await openSite({
        region: await exampleRegion(),
        siteId: 'B',
        db,
        imaging: {
          blobRoot,
          dicom: {
            aeTitle: 'MEDMESH_B',
            host: '127.0.0.1',
            port: dimsePort,
            remoteAes: { [orthanc.aeTitle]: { host: '127.0.0.1', port: orthanc.dicomPort } },
          },
          collect: {
            sources: [
              { id: 'orthanc', aeTitle: orthanc.aeTitle, host: '127.0.0.1', port: orthanc.dicomPort },
              { id: 'orthanc-web', kind: 'dicomweb', url: `${orthanc.http}/dicom-web` },
            ],
            days: 1,
            onRun: (r) => runs.push(r),
          },
        },
      });
      assert.ok(opened.ok);
      const { site } = opened;
      try {
        await site.kms.init({
          custodians: ['one', 'two'].map((name) => ({ name, publicKey: Sm2PrivateKey.generate().publicKey })),
          threshold: 2,
        });
        site.collection!.start();
        const until = Date.now() + 30_000;
        while (runs.length < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
        assert.deepEqual(
          runs.map((r) => [r.source, r.outcome]).sort(),
          [
            ['orthanc', 'collected'],
            ['orthanc-web', 'collected'],
          ],
          JSON.stringify(runs),
        );
        for (const source of ['orthanc', 'orthanc-web']) {
          const report = await site.app.inject({
            method: 'GET',
            url: `/imaging/collection/${source}/${today}`,
            headers: tokensOf(site)(['administrator']),
          });
          assert.equal(report.statusCode, 200, report.body);
          const r = report.json<{ complete: boolean; source_instances: number; held_instances: number }>();
          assert.deepEqual([r.complete, r.source_instances, r.held_instances], [true, 2, 2], source);
        }
        // Orthanc's C-MOVE sub-operations came in on an association the site counts.
        const metrics = await site.app.inject({ method: 'GET', url: '/metrics' });
        assert.match(metrics.body, /medmesh_dimse_associations_total\{site="B",outcome="accepted"\} [1-9]/, metrics.body);
        assert.match(metrics.body, /medmesh_dimse_errors_total\{site="B",kind="operation"\} 0/);
      } finally {
        await site.close();
      }
    } finally {
      await orthanc.close();
      await db.close();
      await rm(blobRoot, { recursive: true, force: true });
    }
  });
});

/**
 * A port to hand Orthanc before this site listens on it. Taken below the kernel's ephemeral
 * range (32768 and up here): a port from there can be taken meanwhile by any outgoing
 * connection of the tests running in parallel.
 */
async function freePort(): Promise<number> {
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const free = await new Promise<boolean>((resolve) => {
      const srv = createServer();
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (free) return port;
  }
}
