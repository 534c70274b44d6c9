// One poison record must never stop a site's changefeed (issue 22 finding 4). Site C pulls
// site B over HTTP with its real puller. Records B's door would refuse are written into B's
// tables by SQL, as an old or hostile record would be: a Patient nested 2,000 levels deep
// (every pull of B's feed used to answer 500 from then on), and a version receivers would
// refuse, followed by a later change of the same resource. Every other write still reaches
// C; the unsendable change is parked at B with its reason, counted and shown to operators;
// the later change of its resource waits until an operator settles it; the puller and B's
// feed keep running throughout.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { Patient } from '@medplum/fhirtypes';
import { packHlc } from '../clock/index.ts';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
let seq = 0;
const patient = (): Patient => {
  seq++;
  return {
    resourceType: 'Patient',
    name: [{ family: '蔡', given: [`${seq}`] }],
    birthDate: '1959-09-09',
    identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440104', birthDate: '1959-09-09', sequence: seq }) }],
  };
};

describe(`a poison record in a site's changefeed (${testBackend()})`, () => {
  let b: TestServer;
  let c: TestServer;
  const errors: string[] = [];

  before(async () => {
    b = await startTestServer({ siteId: 'B' });
    c = await startTestServer({ siteId: 'C' });
    await b.site.identity.registerService({ id: 'C', kind: 'site', publicKey: c.site.kms.signingKey()!.key.publicKey });
    await c.site.identity.registerService({ id: 'B', kind: 'site', publicKey: b.site.kms.signingKey()!.key.publicKey });
    c.site.peers.clear();
    c.site.peers.set('B', b.base);
    c.site.startReplication({ waitSeconds: 1, onError: (_peer, m) => errors.push(m) });
  });
  after(async () => {
    await c.close();
    await b.close();
  });

  const create = async () => {
    const r = await fetch(`${b.fhir}/Patient`, {
      method: 'POST',
      headers: { ...b.auth, 'content-type': 'application/fhir+json' },
      body: JSON.stringify(patient()),
    });
    assert.equal(r.status, 201, await r.clone().text());
    return (await r.json()) as Patient;
  };
  const versionsAtC = async (id: string) =>
    (
      await c.db.query<{ version_id: string }>(
        "SELECT version_id FROM resource_history WHERE resource_type = 'Patient' AND id = $1 ORDER BY hlc",
        [id],
      )
    ).rows.map((r) => r.version_id);
  const eventually = async (what: string, check: () => Promise<boolean>) => {
    const until = Date.now() + 20_000;
    while (!(await check())) {
      assert.ok(Date.now() < until, `timed out waiting for ${what}; puller errors: ${errors.slice(-3).join(' | ')}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  /** A new version of a patient written into B's outbox by SQL (no check of any kind), as a hostile or old row. */
  const sqlVersion = async (p: Patient, o: { versionId?: string; content: Record<string, unknown>; parent: string }) => {
    const hlc = packHlc(Date.now(), 1);
    const versionId = o.versionId ?? `${hlc.toString(16).padStart(16, '0')}-B`;
    const changeId = randomUUID();
    await b.db.query(
      `INSERT INTO outbox (change_id, origin_site, hlc, parent_hlc, epoch, shard, data_class,
                          resource_type, resource_id, version_id, deleted, payload)
       SELECT $1, 'B', $2, hlc, epoch, shard, data_class, resource_type, id, $3, false, $4::jsonb
         FROM resource_history WHERE resource_type = 'Patient' AND id = $5 AND version_id = $6`,
      [changeId, hlc, versionId, JSON.stringify({ ...p, ...o.content, meta: { versionId } }), p.id, o.parent],
    );
    return { changeId, versionId };
  };

  it('carries every other change past it, parks it at the sender for operators, and never stops', async () => {
    const first = await create();
    await eventually('the first patient at C', async () => (await versionsAtC(first.id!)).length === 1);

    // The record: extension nested 2,000 levels.
    let extension: Record<string, unknown> = { url: 'urn:x:leaf', valueString: 'leaf' };
    for (let i = 0; i < 2000; i++) extension = { url: 'urn:x:nested', extension: [extension] };
    const deepTarget = await create();
    const deep = await sqlVersion(deepTarget, { content: { extension: [extension] }, parent: deepTarget.meta!.versionId! });
    // A version id receivers refuse (their page schema allows 80 characters), then a later, valid version.
    const target = await create();
    const poison = await sqlVersion(target, {
      versionId: 'v'.repeat(100),
      content: { gender: 'male' },
      parent: target.meta!.versionId!,
    });
    const laterHlc = packHlc(Date.now() + 1, 2);
    const laterVersion = `${laterHlc.toString(16).padStart(16, '0')}-B`;
    const later = randomUUID();
    await b.db.query(
      `INSERT INTO outbox (change_id, origin_site, hlc, parent_hlc, epoch, shard, data_class,
                          resource_type, resource_id, version_id, deleted, payload)
       SELECT $1, origin_site, $2, hlc, epoch, shard, data_class, resource_type, resource_id, $3, false, payload || $4::jsonb
         FROM outbox WHERE change_id = $5`,
      [later, laterHlc, laterVersion, JSON.stringify({ gender: 'female', meta: { versionId: laterVersion } }), poison.changeId],
    );
    const after = [await create(), await create()];

    for (const p of after) await eventually(`patient ${p.id} at C`, async () => (await versionsAtC(p.id!)).length === 1);
    await eventually('the deep record at C', async () => (await versionsAtC(deepTarget.id!)).includes(deep.versionId));
    assert.deepEqual(await versionsAtC(target.id!), [target.meta!.versionId], 'the later version waits behind the parked one');

    const ops = b.as(['operator']);
    const letters = (await (await fetch(`${b.base}/replication/feed/dead-letters`, { headers: ops })).json()) as Array<{
      changeId: string;
      status: string;
      error?: string;
    }>;
    assert.deepEqual(
      letters.map((l) => [l.changeId, l.status]),
      [
        [poison.changeId, 'parked'],
        [later, 'waiting'],
      ],
    );
    assert.match(letters[0]!.error!, /receivers would refuse it: versionId/);
    assert.equal((await fetch(`${b.base}/replication/feed/dead-letters`, { headers: b.auth })).status, 403);
    const metrics = await (await fetch(`${b.base}/metrics`)).text();
    assert.match(metrics, /^medmesh_replication_feed_dead_letters\{site="B"\} 2$/m);
    assert.match(metrics, /^medmesh_replication_feed_parked_total\{site="B"\} [1-9]/m);
    const health = (await (await fetch(`${b.base}/healthz`)).json()) as { status: string; degraded: unknown[] };
    assert.equal(health.status, 'degraded');
    assert.deepEqual(health.degraded, [{ kind: 'dead-letters', direction: 'sent', count: 2 }]);

    // The puller never stopped: C's link to B is up and a new write still arrives.
    const cMetrics = await (await fetch(`${c.base}/metrics`)).text();
    assert.match(cMetrics, /^medmesh_replication_link_up\{site="C",peer="B"\} 1$/m);
    const last = await create();
    await eventually('a write after the poison at C', async () => (await versionsAtC(last.id!)).length === 1);

    // Retrying cannot help this one (409, still parked); skipping it releases the later version, in order.
    const retry = await fetch(`${b.base}/replication/feed/dead-letters/${poison.changeId}/retry`, {
      method: 'POST',
      headers: ops,
    });
    assert.equal(retry.status, 409);
    const skip = await fetch(`${b.base}/replication/feed/dead-letters/${poison.changeId}/skip`, {
      method: 'POST',
      headers: { ...ops, 'content-type': 'application/json' },
      body: JSON.stringify({ reason: 'hostile row written by SQL, not a real version' }),
    });
    assert.equal(skip.status, 200, await skip.clone().text());
    assert.deepEqual(await skip.json(), { ok: true, released: 1, stillWaiting: 0 });
    await eventually('the released version at C', async () => (await versionsAtC(target.id!)).includes(laterVersion));
    assert.ok(!(await versionsAtC(target.id!)).includes(poison.versionId), 'the skipped version is never sent');
    const healed = (await (await fetch(`${b.base}/healthz`)).json()) as { status: string };
    assert.equal(healed.status, 'ok');
  });
});
