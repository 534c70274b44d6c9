// Synchronous classes (DESIGN.md §6): a write of a class the region marks critical is answered
// only once the shard's DR twin has applied it (RPO 0 for the class); when the twin does not
// confirm in time, the class's policy decides: refuse (503, outcome unknown to the client) or
// degrade (answered, flagged and alarmed). Two sites over real HTTP, C pulling B's feed.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Observation, Patient, ServiceRequest } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId, Region } from '../region/index.ts';
import { exampleRegion } from '../region/testing.ts';
import { Puller } from '../replication/index.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
const FHIR = { 'content-type': 'application/fhir+json' };
const EMERGENCY = { system: 'http://medmesh.example/priority', code: 'emergency' };

describe(`synchronous classes (${testBackend()})`, () => {
  let b: TestServer;
  let c: TestServer;
  let puller: Puller | undefined;
  let patient: Patient;
  const keyOf = (s: TestServer) => s.site.kms.signingKey()!.key;
  const startPuller = () => {
    puller = new Puller({
      peer: { id: 'B', url: b.base },
      key: () => c.site.kms.signingKey()?.key,
      peerKey: () => Promise.resolve(keyOf(b).publicKey),
      waitSeconds: 1,
      leaseSeconds: 30,
      backoff: { minMs: 50, maxMs: 500 },
      apply: { db: c.db, siteId: 'C', region: c.site.ctx.region, clock: c.site.ctx.clock, records: c.site.ctx },
      metrics: c.site.replication,
    });
    puller.start();
  };
  const post = async (type: string, body: object) => {
    const r = await fetch(`${b.fhir}/${type}`, { method: 'POST', headers: { ...b.auth, ...FHIR }, body: JSON.stringify(body) });
    return { status: r.status, sync: r.headers.get('x-medmesh-sync'), json: (await r.json()) as Record<string, unknown> };
  };
  const atC = async (type: string, id: string) =>
    (
      await c.db.query<{ version_id: string }>('SELECT version_id FROM resource_current WHERE resource_type = $1 AND id = $2', [
        type,
        id,
      ])
    ).rows[0]?.version_id;
  const order = (tagged: boolean): ServiceRequest => ({
    resourceType: 'ServiceRequest',
    status: 'active',
    intent: 'order',
    code: { text: '急诊 CT 头颅平扫' },
    subject: { reference: `Patient/${patient.id}` },
    ...(tagged ? { meta: { tag: [EMERGENCY] } } : {}),
  });
  const icuObservation = (): Observation => ({
    resourceType: 'Observation',
    status: 'final',
    code: { text: '心率' },
    subject: { reference: `Patient/${patient.id}` },
    valueQuantity: { value: 128, unit: '/min' },
    meta: { tag: [{ code: 'icu' }] },
  });

  before(async () => {
    const base = await exampleRegion();
    const region = new Region({
      ...base.config,
      policies: {
        ...base.config.policies,
        synchronous: [
          {
            name: 'emergency-orders',
            resourceTypes: ['ServiceRequest'],
            tags: [EMERGENCY],
            timeoutMs: 1500,
            onTimeout: 'refuse',
          },
          {
            name: 'icu-observations',
            resourceTypes: ['Observation'],
            tags: [{ code: 'icu' }],
            timeoutMs: 500,
            onTimeout: 'degrade',
          },
        ],
      },
    });
    b = await startTestServer({ siteId: 'B', region });
    c = await startTestServer({ siteId: 'C', region });
    await b.site.identity.registerService({ id: 'C', kind: 'site', publicKey: keyOf(c).publicKey });
    await c.site.identity.registerService({ id: 'B', kind: 'site', publicKey: keyOf(b).publicKey });
    startPuller();
    const p = await post('Patient', {
      resourceType: 'Patient',
      name: [{ family: '急' }],
      identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440106', birthDate: '1969-09-09', sequence: 7 }) }],
    });
    assert.equal(p.status, 201);
    patient = p.json as unknown as Patient;
  });
  after(async () => {
    await puller?.stop();
    await c.close();
    await b.close();
  });

  it('answers an emergency order only once the DR twin has applied it', async () => {
    const r = await post('ServiceRequest', order(true));
    assert.equal(r.status, 201, JSON.stringify(r.json));
    assert.equal(r.sync, 'confirmed; site=C');
    // RPO 0: the moment the client has its answer, the twin holds the version.
    assert.equal(await atC('ServiceRequest', String(r.json.id)), (r.json.meta as { versionId: string }).versionId);
  });

  it('answers writes outside the class as usual, without waiting for the twin', async () => {
    const r = await post('ServiceRequest', order(false));
    assert.equal(r.status, 201);
    assert.equal(r.sync, null);
  });

  it('with the twin not applying: refuses (503, outcome unknown) or degrades (flagged and alarmed), per class', async () => {
    await puller!.stop();
    const t0 = performance.now();
    const refused = await post('ServiceRequest', order(true));
    const waited = performance.now() - t0;
    assert.equal(refused.status, 503);
    const issue = (refused.json as unknown as { issue: Array<{ code: string; diagnostics: string }> }).issue[0]!;
    assert.equal(issue.code, 'transient');
    assert.match(issue.diagnostics, /DR twin C did not confirm it .* Treat the outcome as unknown/);
    assert.ok(waited >= 1400 && waited < 10_000, `waited ${Math.round(waited)} ms for a 1500 ms class`);

    const degraded = await post('Observation', icuObservation());
    assert.equal(degraded.status, 201);
    assert.equal(degraded.sync, 'degraded; site=C');
    const metrics = await (await fetch(`${b.base}/metrics`)).text();
    assert.match(metrics, /medmesh_log_problems_total\{[^}]*component="sync"[^}]*level="error"[^}]*\} [1-9]/);

    // The twin catches up: what the refusal could not confirm was written, and arrives.
    startPuller();
    const id = String((await post('ServiceRequest', order(true))).json.id);
    assert.ok(await atC('ServiceRequest', id));
  });
});
