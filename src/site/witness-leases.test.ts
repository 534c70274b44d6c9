// A site opened under a witness (SiteOptions.witness) runs its lease keeper: FHIR writes of a
// shard it holds are accepted with the lease's epoch, /metrics shows the keeper, and cut off from
// the witness the site answers 503 once the lease's stop time passed; without the option nothing
// is fenced (the rest of the suite).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { testBackend } from '../db/test-db.ts';
import { inProcessWitness, type InProcessWitness } from '../failover/testing-witness.ts';
import { makeResidentId } from '../region/index.ts';
import { exampleRegion } from '../region/testing.ts';
import { startTestServer, type TestServer } from './testing.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
const patient = (seq: number) => ({
  resourceType: 'Patient',
  name: [{ family: '黄' }],
  identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440106', birthDate: '1990-01-02', sequence: seq }) }],
});

async function until(what: string, f: () => Promise<boolean> | boolean, ms = 15_000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!(await f())) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe(`a site under a witness (${testBackend()})`, () => {
  let witness: InProcessWitness;
  let s: TestServer;

  before(async () => {
    const region = await exampleRegion();
    witness = inProcessWitness({ shards: region.shards.map((x) => ({ id: x.id, residency: x.residency })), leaseMs: 1500 });
    s = await startTestServer({
      siteId: 'B',
      witness: {
        urls: ['http://witness.invalid'],
        publicKey: witness.w.key.publicKey,
        leaseMs: 1500,
        renewEveryMs: 100,
        safetyMarginMs: 200,
        client: witness.client('B'),
      },
    });
  });
  after(() => s.close());

  it('writes a shard it holds under the lease, shows the keeper in /metrics, and answers 503 once cut off', async () => {
    assert.ok(s.site.leases);
    assert.equal(s.site.ctx.leases, s.site.leases);
    await until('B to hold guangzhou', () => s.site.leases!.status().some((x) => x.shard === 'guangzhou' && x.writing));
    const post = () =>
      fetch(`${s.fhir}/Patient`, {
        method: 'POST',
        headers: { ...s.auth, 'content-type': 'application/fhir+json' },
        body: JSON.stringify(patient(Math.floor(Math.random() * 1000))),
      });
    const created = await post();
    assert.equal(created.status, 201, await created.clone().text());
    const metrics = await (await fetch(`${s.base}/metrics`)).text();
    assert.match(metrics, /medmesh_lease_writing\{site="B",shard="guangzhou"\} 1/);
    assert.match(metrics, /medmesh_lease_renewals_total\{site="B",outcome="ok"\} \d+/);

    witness.partitioned.add('B');
    await until('the lease to be withdrawn', () => !s.site.leases!.status().some((x) => x.shard === 'guangzhou' && x.writing));
    const refused = await post();
    assert.equal(refused.status, 503, await refused.clone().text());
    await refused.body?.cancel();
  });
});
