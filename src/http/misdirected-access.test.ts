// A write at the wrong site (issue 22, finding 9): the access check comes first, so a write the
// caller may not make is a plain 403 that says nothing of the patient's shard, site or
// existence; a permitted one is told where to go, at the address this node reaches that site.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { OperationOutcome } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { Puller } from '../replication/index.ts';
import { pullUntilCaughtUp } from '../replication/testing.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
const FHIR = { 'content-type': 'application/fhir+json' };

describe(`writes for a shard written elsewhere (${testBackend()})`, () => {
  let b: TestServer;
  let c: TestServer;
  let outside: string; // a Shenzhen patient in nobody's care at B
  let inCare: string; // a Shenzhen patient with an encounter at cardiology

  const send = async (s: TestServer, method: string, path: string, headers: Record<string, string>, body: unknown) => {
    const res = await fetch(`${s.fhir}${path}`, { method, headers: { ...headers, ...FHIR }, body: JSON.stringify(body) });
    return { status: res.status, headers: res.headers, text: await res.text() };
  };
  const observation = (patient: string, id?: string) => ({
    resourceType: 'Observation',
    ...(id ? { id } : {}),
    status: 'final',
    code: { text: 'pulse' },
    subject: { reference: `Patient/${patient}` },
  });

  before(async () => {
    [b, c] = [await startTestServer({ siteId: 'B' }), await startTestServer({ siteId: 'C' })];
    await b.site.identity.registerService({ id: 'C', kind: 'site', publicKey: c.site.kms.signingKey()!.key.publicKey });
    await c.site.identity.registerService({ id: 'B', kind: 'site', publicKey: b.site.kms.signingKey()!.key.publicKey });
    const created: string[] = [];
    for (const sequence of [31, 33]) {
      const r = await send(c, 'POST', '/Patient', c.auth, {
        resourceType: 'Patient',
        identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440304', birthDate: '1970-07-07', sequence }) }],
      });
      assert.equal(r.status, 201, r.text);
      created.push((JSON.parse(r.text) as { id: string }).id);
    }
    [outside, inCare] = created as [string, string];
    const enc = await send(c, 'POST', '/Encounter', c.auth, {
      resourceType: 'Encounter',
      status: 'finished',
      class: { code: 'AMB' },
      subject: { reference: `Patient/${inCare}` },
      serviceProvider: { reference: 'Organization/cardiology' },
    });
    assert.equal(enc.status, 201, enc.text);
    const pull = new Puller({
      peer: { id: 'C', url: c.base },
      key: () => b.site.kms.signingKey()?.key,
      peerKey: () => b.site.identity.servicePublicKey('C'),
      waitSeconds: 0,
      apply: { db: b.db, siteId: 'B', region: b.site.ctx.region, clock: b.site.ctx.clock, records: b.site.ctx },
    });
    await pullUntilCaughtUp(c, b, 'C', () => pull.pullOnce());
    // Like the demo: B reaches C where C actually listens, not at the region file's port.
    b.site.peers.set('C', c.base);
  });
  after(async () => {
    await b?.close();
    await c?.close();
  });

  it('refuses an out-of-scope write with a plain 403 before saying where the patient lives', async () => {
    const doctor = b.as(['doctor'], { department: 'cardiology' });
    const attempts = [
      await send(b, 'POST', '/Observation', doctor, observation(outside)),
      await send(b, 'PUT', '/Observation/obs-upsert-1', doctor, observation(outside, 'obs-upsert-1')),
      await send(b, 'POST', '', doctor, {
        resourceType: 'Bundle',
        type: 'transaction',
        entry: [{ resource: observation(outside), request: { method: 'POST', url: 'Observation' } }],
      }),
      await send(b, 'POST', '/Observation', doctor, observation('no-such-patient')),
    ];
    for (const r of attempts) {
      assert.equal(r.status, 403, r.text);
      assert.equal(r.headers.get('x-medmesh-active-site'), null);
      assert.doesNotMatch(r.text, /shenzhen|site C|7102|not known/, 'nothing about the patient or its home');
    }
  });

  it('names the active site at the address this node reaches it, in the body and the headers', async () => {
    const r = await send(b, 'POST', '/Observation', b.as(['doctor'], { department: 'cardiology' }), observation(inCare));
    assert.equal(r.status, 421, r.text);
    assert.equal(r.headers.get('x-medmesh-active-site'), 'C');
    assert.equal(r.headers.get('x-medmesh-active-site-url'), c.base);
    assert.match(
      (JSON.parse(r.text) as OperationOutcome).issue[0]!.diagnostics!,
      new RegExp(`shard shenzhen is written at site C \\(${c.base.replaceAll('.', '\\.')}\\)`),
    );
    assert.notEqual(new URL(c.base).port, '7102', 'the test site listens elsewhere than the region file says');
  });
});
