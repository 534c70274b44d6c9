// The witness over HTTP with its client, on the embedded store (PGlite, or PostgreSQL with
// MEDMESH_TEST_DB=postgres): a trusted site renews; an untrusted site, a wrong key and a site
// speaking for another are 401; bad bodies are 400 naming the field; the chain pages and verifies;
// the leases view; a client sent to a witness that does not act follows it to the leader.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { packHlc } from '../clock/index.ts';
import { silentLogger } from '../common/index.ts';
import type { Db } from '../db/index.ts';
import { openTestDb } from '../db/test-db.ts';
import {
  openEmbeddedStore,
  VoteChain,
  Witness,
  WitnessClient,
  type CoordinationStore,
  type WitnessAnswer,
  type WitnessError,
} from '../failover/index.ts';
import { eventually, freePort } from '../failover/testing.ts';
import { TEST_SHARDS, testKey } from '../failover/testing-votes.ts';
import type { Result } from '../common/index.ts';
import { serviceAssertion } from '../security/identity/index.ts';
import { buildWitnessApp } from './witness-app.ts';

const log = silentLogger();
const key = testKey('witness');
const siteKeys = { B: testKey('site:B'), C: testKey('site:C'), D: testKey('site:D') };
const pos = (ms: number) => packHlc(1_750_000_000_000 + ms, 0);

let db: Db;
let stores: CoordinationStore[] = [];
const witnesses: Witness[] = [];
const apps: FastifyInstance[] = [];
let base = '';

/** A witness behind its HTTP server on a free port (its advertised URL). */
async function start(): Promise<{ witness: Witness; base: string }> {
  const store = await openEmbeddedStore({ db, log, pollMs: 50 });
  stores.push(store);
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const witness = new Witness({ store, url, key, shards: TEST_SHARDS, log, leaderTtlMs: 1000 });
  witnesses.push(witness);
  const app = await buildWitnessApp({ witness, log });
  apps.push(app);
  await app.listen({ port, host: '127.0.0.1' });
  witness.start();
  return { witness, base: url };
}

const client = (site: keyof typeof siteKeys, o: { urls?: string[]; key?: keyof typeof siteKeys } = {}) =>
  new WitnessClient({ urls: o.urls ?? [base], siteId: site, key: siteKeys[o.key ?? site] });

function lease(r: Result<WitnessAnswer, WitnessError>) {
  assert.ok(r.ok, r.ok ? '' : `${r.error.code}: ${r.error.message}`);
  const a = r.value.answers[0]!;
  assert.ok(a.ok, a.ok ? '' : `${a.refusal.code}: ${a.refusal.message}`);
  return a.lease;
}

before(async () => {
  db = await openTestDb({ migrated: false });
  const first = await start();
  base = first.base;
  await eventually('the witness to act', () => first.witness.acting);
  await first.witness.trustSite('B', siteKeys.B.publicKey);
  await first.witness.trustSite('C', siteKeys.C.publicKey);
});

after(async () => {
  for (const w of witnesses) await w.close();
  for (const a of apps) await a.close();
  for (const s of stores) await s.close();
  stores = [];
  await db.close();
});

describe('witness HTTP API', () => {
  it('a trusted site renews and is granted; the leases view and health show it', async () => {
    const l = lease(await client('B').renew({ site: 'B', shards: [{ shard: 'north', position: pos(0) }] }));
    assert.deepEqual([l.epoch, l.holder, l.leaseMs], [1, 'B', 3000]);
    const c = lease(await client('C').renew({ site: 'C', shards: [{ shard: 'south', position: pos(0) }] }));
    assert.deepEqual([c.epoch, c.holder], [1, 'C']);
    const view = await client('B').leases();
    assert.ok(view.ok);
    assert.equal(view.value.leader, base);
    assert.deepEqual(
      view.value.leases.map((x) => [x.shard, x.epoch, x.holder]),
      [
        ['north', 1, 'B'],
        ['south', 1, 'C'],
        ['east', 0, null],
      ],
    );
    const h = await fetch(`${base}/healthz`);
    assert.equal(h.status, 200);
    assert.deepEqual(((await h.json()) as { leader: boolean }).leader, true);
  });

  it('refuses an untrusted site, a wrong key and a site speaking for another (401)', async () => {
    const untrusted = await client('D').renew({ site: 'D', shards: [{ shard: 'east', position: pos(0) }] });
    assert.ok(!untrusted.ok);
    assert.equal(untrusted.error.code, 'unauthorized');
    assert.match(untrusted.error.message, /not trusted/);
    const wrongKey = await client('B', { key: 'D' }).renew({ site: 'B', shards: [{ shard: 'north', position: pos(1) }] });
    assert.ok(!wrongKey.ok && wrongKey.error.code === 'unauthorized', JSON.stringify(wrongKey));
    const other = await client('B').claim({ site: 'C', shard: 'north', appliedPosition: pos(0) });
    assert.ok(!other.ok && other.error.code === 'unauthorized' && /may not speak for site C/.test(other.error.message));
    // An assertion for another audience (a site) is not one for the witness.
    const forSite = serviceAssertion({ serviceId: 'B', key: siteKeys.B, site: 'C' });
    const r = await fetch(`${base}/witness/v1/renew`, {
      method: 'POST',
      headers: { authorization: `Bearer ${forSite}`, 'content-type': 'application/json' },
      body: JSON.stringify({ site: 'B', shards: [{ shard: 'north', position: '0000000000000001' }] }),
    });
    assert.equal(r.status, 401);
    assert.equal(((await r.json()) as { code: string }).code, 'unauthorized');
    const none = await fetch(`${base}/witness/v1/renew`, { method: 'POST' });
    assert.equal(none.status, 401);
  });

  it('bad bodies are 400 naming the field, and change nothing', async () => {
    const token = serviceAssertion({ serviceId: 'B', key: siteKeys.B, site: 'witness' });
    const post = (path: string, body: unknown) =>
      fetch(`${base}/witness/v1${path}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      }).then(async (r) => ({ status: r.status, body: (await r.json()) as { code: string; message: string } }));
    const cases: Array<[string, unknown, RegExp]> = [
      ['/renew', { site: 'B', shards: [{ shard: 'east', position: 'xyz' }] }, /body\.shards\.0\.position/],
      ['/renew', { shards: [{ shard: 'east', position: '0000000000000001' }] }, /body\.site/],
      ['/renew', { site: 'B', shards: [], extra: 1 }, /body/],
      ['/claim', { site: 'B', shard: 'north' }, /body\.appliedPosition/],
      ['/release', { site: 'B', shard: 'north', successor: 'C', finalPosition: 12 }, /body\.finalPosition/],
    ];
    for (const [path, body, field] of cases) {
      const r = await post(path, body);
      assert.equal(r.status, 400, `${path} ${JSON.stringify(body)}`);
      assert.equal(r.body.code, 'bad-request');
      assert.match(r.body.message, field);
    }
    const q = await fetch(`${base}/witness/v1/chain?after=-1`);
    assert.equal(q.status, 400);
    assert.match(((await q.json()) as { message: string }).message, /querystring\.after/);
    const view = await client('B').leases();
    assert.ok(view.ok);
    assert.equal(view.value.leases.find((l) => l.shard === 'east')?.epoch, 0, 'nothing was granted');
  });

  it('pages the chain, which verifies from genesis with the witness key', async () => {
    lease(await client('B').renew({ site: 'B', shards: [{ shard: 'east', position: pos(0) }] }));
    const c = client('C');
    const page1 = await c.chain({ after: 0, limit: 2 });
    assert.ok(page1.ok);
    assert.deepEqual(
      page1.value.votes.map((v) => v.seq),
      [1, 2],
    );
    assert.equal(page1.value.head.seq, 3);
    const page2 = await c.chain({ after: 2, limit: 2 });
    assert.ok(page2.ok);
    assert.deepEqual(
      page2.value.votes.map((v) => [v.seq, v.shard, v.kind]),
      [[3, 'east', 'grant']],
    );
    const empty = await c.chain({ after: 3 });
    assert.ok(empty.ok && empty.value.votes.length === 0);
    const copy = VoteChain.verify([...page1.value.votes, ...page2.value.votes], {
      witnessKeys: (id) => (id === witnesses[0]!.keyId ? key.publicKey : undefined),
    });
    assert.ok(copy.ok);
    assert.deepEqual(copy.value.head, page2.value.head);
  });

  it('a client sent to a witness that does not act follows it to the leader; a dead URL is passed over', async () => {
    const second = await start();
    const nl = await fetch(`${second.base}/witness/v1/leases`);
    assert.equal(nl.status, 503);
    const body = (await nl.json()) as { code: string; leader: string };
    assert.deepEqual([body.code, body.leader], ['not-leader', base]);
    const h = await fetch(`${second.base}/healthz`);
    assert.equal(h.status, 200);
    assert.equal(((await h.json()) as { leader: boolean }).leader, false);
    const dead = 'http://127.0.0.1:9'; // discard port: connection refused
    const r = await client('B', { urls: [dead, second.base] }).renew({
      site: 'B',
      shards: [{ shard: 'north', position: pos(5) }],
    });
    assert.equal(lease(r).holder, 'B');
  });
});
