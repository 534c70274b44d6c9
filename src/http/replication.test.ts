// Two sites over real HTTP: the puller at C long-polls B's changefeed with C's service
// assertion, opens pages sealed to C's key and applies them; only peers get in, pages do not
// open for anyone else, one API node per site pulls a peer, and a stopped puller resumes.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Patient } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { feedAad, LinkKeyReceiver, openPage, Puller, type ApplyReport } from '../replication/index.ts';
import { Sm2PrivateKey } from '../security/crypto/index.ts';
import { serviceAssertion } from '../security/identity/index.ts';
import { pullUntilCaughtUp } from '../replication/testing.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
const patient = (seq: number): Patient => ({
  resourceType: 'Patient',
  name: [{ family: '何', given: [`${seq}`] }],
  birthDate: '1980-01-01',
  identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440104', birthDate: '1980-01-01', sequence: seq }) }],
});

describe(`replication over HTTP (${testBackend()})`, () => {
  let b: TestServer;
  let c: TestServer;
  const pullers: Puller[] = [];
  const keyOf = (s: TestServer) => s.site.kms.signingKey()!.key;
  const pullerAtC = (reports: ApplyReport[]) => {
    const p = new Puller({
      peer: { id: 'B', url: b.base },
      key: () => c.site.kms.signingKey()?.key,
      peerKey: () => Promise.resolve(keyOf(b).publicKey),
      waitSeconds: 1,
      leaseSeconds: 30,
      backoff: { minMs: 50, maxMs: 500 },
      apply: { db: c.db, siteId: 'C', region: c.site.ctx.region, clock: c.site.ctx.clock, records: c.site.ctx },
      onReport: (r) => reports.push(r),
      metrics: c.site.replication,
    });
    pullers.push(p);
    return p;
  };
  const create = async (seq: number) => {
    const r = await fetch(`${b.fhir}/Patient`, {
      method: 'POST',
      headers: { ...b.auth, 'content-type': 'application/fhir+json' },
      body: JSON.stringify(patient(seq)),
    });
    assert.equal(r.status, 201);
    return (await r.json()) as Patient;
  };
  const atC = async (id: string) =>
    (
      await c.db.query<{ version_id: string }>(
        "SELECT version_id FROM resource_current WHERE resource_type = 'Patient' AND id = $1",
        [id],
      )
    ).rows[0];
  const eventually = async (check: () => Promise<boolean>, what: string) => {
    const until = Date.now() + 10_000;
    while (Date.now() < until) {
      if (await check()) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.fail(`timed out waiting for ${what}`);
  };

  before(async () => {
    b = await startTestServer({ siteId: 'B' });
    c = await startTestServer({ siteId: 'C' });
    await b.site.identity.registerService({ id: 'C', kind: 'site', publicKey: keyOf(c).publicKey });
    await c.site.identity.registerService({ id: 'B', kind: 'site', publicKey: keyOf(b).publicKey });
  });
  after(async () => {
    for (const p of pullers) await p.stop();
    await c.close();
    await b.close();
  });

  it('lets only peer sites read the feed', async () => {
    const url = `${b.base}/replication/changes?after=0:0`;
    assert.equal((await fetch(url)).status, 401);
    assert.equal((await fetch(url, { headers: b.auth })).status, 403, 'a user token is not a site');
    const stranger = Sm2PrivateKey.generate();
    assert.equal(
      (
        await fetch(url, {
          headers: { authorization: `MedmeshService ${serviceAssertion({ serviceId: 'A', key: stranger, site: 'B' })}` },
        })
      ).status,
      401,
      'an unregistered site',
    );
    const asC = { authorization: `MedmeshService ${serviceAssertion({ serviceId: 'C', key: keyOf(c), site: 'B' })}` };
    const refusal = async (query: string) => {
      const r = await fetch(`${b.base}/replication/changes?${query}`, { headers: asC });
      return [r.status, ((await r.json()) as { code: string; message: string }).message] as const;
    };
    assert.deepEqual(await refusal('after=x'), [400, 'querystring.after: a cursor <txid>:<pos>']);
    assert.deepEqual(await refusal('after=0:0&limit=5001'), [400, 'querystring.limit: an integer from 1 to 5000']);
    assert.deepEqual(await refusal('wait=26'), [400, 'querystring.wait: seconds from 0 to 25']);
  });

  it('seals pages so that only the receiving site, at the cursor it asked for, can open them', async () => {
    await create(1);
    const asC = { authorization: `MedmeshService ${serviceAssertion({ serviceId: 'C', key: keyOf(c), site: 'B' })}` };
    const start = { txid: '0', pos: '0' };
    const fromB = keyOf(b).publicKey;
    const linkBC = { from: 'B', to: 'C', keys: new LinkKeyReceiver() };
    let frame = new Uint8Array();
    // The feed stops below the server's oldest running transaction (other test files share it): ask until the write shows.
    await eventually(async () => {
      frame = new Uint8Array(
        await (await fetch(`${b.base}/replication/changes?after=0:0&wait=1`, { headers: asC })).arrayBuffer(),
      );
      const page = openPage(frame, { ...linkBC, key: keyOf(c), senderKey: fromB, aad: feedAad('B', 'C', start) });
      return page.ok && page.page.changes.length >= 1;
    }, 'the write in the feed');
    assert.ok(
      !openPage(frame, { ...linkBC, key: keyOf(b), senderKey: fromB, aad: feedAad('B', 'C', start) }).ok,
      'not with another key',
    );
    assert.ok(
      !openPage(frame, { ...linkBC, key: keyOf(c), senderKey: fromB, aad: feedAad('B', 'C', { txid: '0', pos: '7' }) }).ok,
      'not for another cursor',
    );
    assert.ok(
      !openPage(frame, { ...linkBC, key: keyOf(c), senderKey: keyOf(c).publicKey, aad: feedAad('B', 'C', start) }).ok,
      'not as if another site had sent it',
    );
    const flipped = Uint8Array.from(frame);
    flipped[flipped.length - 3]! ^= 1;
    const bad = openPage(flipped, { ...linkBC, key: keyOf(c), senderKey: fromB, aad: feedAad('B', 'C', start) });
    assert.ok(!bad.ok && bad.error.kind === 'auth-failed');
  });

  it('brings a write at B to C within the long poll, one puller per peer per site, and resumes after a stop', async () => {
    const reports: ApplyReport[][] = [[], []];
    const [p1, p2] = [pullerAtC(reports[0]!), pullerAtC(reports[1]!)];
    p1.start();
    await eventually(
      async () => (await c.db.query("SELECT 1 FROM replication_lease WHERE peer = 'B'")).rows.length === 1,
      'the first puller to hold the lease',
    );
    p2.start(); // a second API node of site C: the lease keeps it idle
    const t0 = Date.now();
    const written = await create(2);
    await eventually(async () => (await atC(written.id!))?.version_id === written.meta!.versionId, 'the write at C');
    assert.ok(Date.now() - t0 < 3000, `replicated in ${Date.now() - t0} ms`);
    assert.equal(reports[1]!.filter((r) => r.applied > 0).length, 0, 'the second node did not pull');
    const metrics = await (await fetch(`${c.base}/metrics`)).text();
    assert.match(metrics, /medmesh_replication_link_up\{site="C",peer="B"\} 1/);
    assert.ok(Number(/medmesh_replication_applied_total\{site="C",peer="B"\} (\d+)/.exec(metrics)?.[1]) >= 1, metrics);
    assert.match(metrics, /medmesh_replication_dead_letters\{site="C"\} 0/);
    const health = (await (await fetch(`${c.base}/healthz`)).json()) as { replication: Array<{ peer: string; up: boolean }> };
    assert.deepEqual(
      health.replication.map((l) => [l.peer, l.up]),
      [['B', true]],
    );
    await p1.stop();
    await p2.stop();
    const during = [await create(3), await create(4)];
    assert.equal(await atC(during[0]!.id!), undefined, 'nothing moves while the link is down');
    const again: ApplyReport[] = [];
    const p3 = pullerAtC(again);
    assert.deepEqual(
      (await c.db.query("SELECT holder FROM replication_lease WHERE peer = 'B'")).rows,
      [],
      'a stopped puller hands its lease back',
    );
    p3.start();
    await eventually(async () => (await atC(during[1]!.id!)) !== undefined, 'catch-up after the break');
    assert.equal(
      again.reduce((n, r) => n + r.duplicates, 0),
      0,
      'resumed from the cursor: nothing delivered twice',
    );
    await p3.stop(); // the next test drives the links itself
  });

  it('lists concurrent edits to those who may read them, and a resolution closes them at both sites', async () => {
    const pull = async (from: TestServer, to: TestServer, fromId: 'B' | 'C', toId: 'B' | 'C') => {
      const p = new Puller({
        peer: { id: fromId, url: from.base },
        key: () => to.site.kms.signingKey()?.key,
        peerKey: () => Promise.resolve(keyOf(from).publicKey),
        waitSeconds: 0,
        apply: { db: to.db, siteId: toId, region: to.site.ctx.region, clock: to.site.ctx.clock, records: to.site.ctx },
      });
      await pullUntilCaughtUp(from, to, fromId, () => p.pullOnce());
    };
    const put = (s: TestServer, id: string, name: string) =>
      fetch(`${s.fhir}/Organization/${id}`, {
        method: 'PUT',
        headers: { ...s.auth, 'content-type': 'application/fhir+json' },
        body: JSON.stringify({ resourceType: 'Organization', id, name }),
      });
    const created = await fetch(`${b.fhir}/Organization`, {
      method: 'POST',
      headers: { ...b.auth, 'content-type': 'application/fhir+json' },
      body: JSON.stringify({ resourceType: 'Organization', name: '检验科' }),
    });
    const id = ((await created.json()) as { id: string }).id;
    await pull(b, c, 'B', 'C');
    assert.equal((await put(b, id, '检验科（东院）')).status, 200);
    assert.equal((await put(c, id, '医学检验科')).status, 200);
    await pull(b, c, 'B', 'C');
    await pull(c, b, 'C', 'B');
    const admin = b.as(['administrator']);
    const open = (await (
      await fetch(`${b.base}/conflicts?resourceType=Organization&id=${id}`, { headers: admin })
    ).json()) as Array<{ versions: string[] }>;
    assert.equal(open.length, 1);
    assert.equal((await fetch(`${b.base}/conflicts`, { headers: b.as(['janitor']) })).status, 403);
    const bad = await fetch(`${b.base}/conflicts/resolve`, {
      method: 'POST',
      headers: { ...admin, 'content-type': 'application/json' },
      body: JSON.stringify({ resourceType: 'Organization', id }),
    });
    assert.equal(bad.status, 400);
    const resolved = await fetch(`${b.base}/conflicts/resolve`, {
      method: 'POST',
      headers: { ...admin, 'content-type': 'application/json' },
      body: JSON.stringify({ resourceType: 'Organization', id, resource: { name: '医学检验科（东院）' } }),
    });
    assert.equal(resolved.status, 200);
    assert.equal(((await resolved.json()) as { resolved: number }).resolved, 1);
    await pull(b, c, 'B', 'C');
    const atC = (await (
      await fetch(`${c.base}/conflicts?resolved=true&resourceType=Organization&id=${id}`, { headers: c.as(['administrator']) })
    ).json()) as Array<{ resolutionVersion?: string }>;
    assert.ok(atC[0]?.resolutionVersion, 'the resolution closed the conflict at C too');
    const openAtC = (await (
      await fetch(`${c.base}/conflicts?resourceType=Organization&id=${id}`, { headers: c.as(['administrator']) })
    ).json()) as unknown[];
    assert.equal(openAtC.length, 0);
  });

  it('gives operators the dead letters, and nobody else', async () => {
    const admin = b.as(['administrator']);
    const list = await fetch(`${b.base}/replication/dead-letters`, { headers: admin });
    assert.equal(list.status, 200);
    assert.deepEqual(await list.json(), []);
    assert.equal((await fetch(`${b.base}/replication/dead-letters`, { headers: b.as(['doctor']) })).status, 403);
    const skip = (id: string, reason: string) =>
      fetch(`${b.base}/replication/dead-letters/${id}/skip`, {
        method: 'POST',
        headers: { ...admin, 'content-type': 'application/json' },
        body: JSON.stringify({ reason }),
      });
    const short = await skip(crypto.randomUUID(), 'short');
    assert.equal(short.status, 400);
    assert.deepEqual(await short.json(), {
      code: 'bad-request',
      message: 'body.reason: say why this change is skipped (at least 10 characters)',
      issues: ['body.reason: say why this change is skipped (at least 10 characters)'],
    });
    const unknown = await skip(crypto.randomUUID(), 'no such change, checking the answer');
    assert.equal(unknown.status, 404);
    assert.equal(((await unknown.json()) as { code: string }).code, 'not-found');
    const malformed = await skip('not-a-change', 'checking a malformed change id');
    assert.equal(malformed.status, 400);
    assert.equal(((await malformed.json()) as { message: string }).message, 'params.changeId: a change id (a UUID)');
    const nobody = await fetch(`${b.base}/replication/feed/dead-letters/not-a-change/skip`, {
      method: 'POST',
      headers: { ...b.as(['doctor']), 'content-type': 'application/json' },
      body: '{}',
    });
    assert.equal(nobody.status, 403, 'route access answers before the schemas');
  });
  it('checks consistency with a peer over HTTP, repairs on request and exports the result as metrics', async () => {
    c.site.peers.set('B', b.base);
    b.site.peers.set('C', c.base);
    const ops = (s: TestServer) => ({ ...s.as(['administrator']), 'content-type': 'application/json' });
    const verify = async (s: TestServer, body: object) => {
      const r = await fetch(`${s.base}/replication/verify`, { method: 'POST', headers: ops(s), body: JSON.stringify(body) });
      assert.equal(r.status, 200, await r.clone().text());
      return (await r.json()) as Array<{
        peer: string;
        divergent: Array<{ resource: string }>;
        accuracy: number;
        resources: number;
        repair?: { fetched: number };
        divergentBeforeRepair?: number;
      }>;
    };
    const pull = new Puller({
      peer: { id: 'B', url: b.base },
      key: () => c.site.kms.signingKey()?.key,
      peerKey: () => Promise.resolve(keyOf(b).publicKey),
      waitSeconds: 0,
      apply: { db: c.db, siteId: 'C', region: c.site.ctx.region, clock: c.site.ctx.clock, records: c.site.ctx },
    });
    await pullUntilCaughtUp(b, c, 'B', () => pull.pullOnce());
    const [clean] = await verify(c, { peers: ['B'], graceSeconds: 0 });
    assert.ok(clean!.resources >= 4 && clean!.accuracy === 1, JSON.stringify(clean));
    const victim = (
      await c.db.query<{ id: string }>(
        "SELECT id FROM resource_history WHERE resource_type = 'Patient' AND origin_site = 'B' ORDER BY id LIMIT 1",
      )
    ).rows[0]!.id;
    await c.db.query("DELETE FROM resource_history WHERE resource_type = 'Patient' AND id = $1", [victim]);
    const [found] = await verify(c, { peers: ['B'], graceSeconds: 0 });
    assert.deepEqual(
      found!.divergent.map((d) => d.resource),
      [`Patient/${victim}`],
    );
    const metrics = await (await fetch(`${c.base}/metrics`)).text();
    assert.match(metrics, /medmesh_replication_verify_divergent_resources\{site="C",peer="B"\} 1/);
    const [repaired] = await verify(c, { peers: ['B'], graceSeconds: 0, repair: true });
    assert.deepEqual(
      [repaired!.divergentBeforeRepair, repaired!.repair?.fetched, repaired!.divergent.length, repaired!.accuracy],
      [1, 1, 0, 1],
    );
    assert.match(await (await fetch(`${c.base}/metrics`)).text(), /medmesh_replication_verify_accuracy\{site="C",peer="B"\} 1/);
    // Bad input and strangers.
    const notAPeer = await fetch(`${c.base}/replication/verify`, {
      method: 'POST',
      headers: ops(c),
      body: JSON.stringify({ peers: ['Z'] }),
    });
    assert.deepEqual(
      [notAPeer.status, await notAPeer.json()],
      [400, { code: 'bad-request', message: 'peers: Z is not another site of region guangdong' }],
    );
    const badGrace = await fetch(`${c.base}/replication/verify`, {
      method: 'POST',
      headers: ops(c),
      body: JSON.stringify({ graceSeconds: -1 }),
    });
    assert.equal(badGrace.status, 400);
    assert.match(((await badGrace.json()) as { message: string }).message, /^body\.graceSeconds: /);
    assert.equal(
      (
        await fetch(`${c.base}/replication/verify`, {
          method: 'POST',
          headers: { ...c.as(['doctor']), 'content-type': 'application/json' },
          body: '{}',
        })
      ).status,
      403,
    );
    assert.equal(
      (
        await fetch(`${b.base}/replication/digests`, {
          method: 'POST',
          headers: { ...b.auth, 'content-type': 'application/json' },
          body: '{"watermark":"1","buckets":4}',
        })
      ).status,
      403,
      'digests are for peer sites only',
    );
    const asC = {
      authorization: `MedmeshService ${serviceAssertion({ serviceId: 'C', key: keyOf(c), site: 'B' })}`,
      'content-type': 'application/json',
    };
    const badScope = await fetch(`${b.base}/replication/digests`, {
      method: 'POST',
      headers: asC,
      body: '{"watermark":"zz","buckets":4}',
    });
    assert.equal(badScope.status, 400);
    assert.match(((await badScope.json()) as { message: string }).message, /^body\.watermark: /);
  });
});
