// The witness service over a real coordination store: the embedded store (PGlite, or PostgreSQL
// with MEDMESH_TEST_DB=postgres) and etcd (a real server, skipped with a message when etcd is not
// installed, except under CI). The same suite on each: grants, renewals, claims on the witness's
// (injected) monotonic clock, the chain in the store, a restarted witness that rebuilds it and
// waits a whole lease, two witnesses on one store (one acts), and a takeover when the acting
// one's store link is cut or it closes, with the chain intact and epochs still increasing.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, beforeEach, describe, it } from 'node:test';
import pg from 'pg';
import { packHlc } from '../clock/index.ts';
import { silentLogger, type Result } from '../common/index.ts';
import { openPglite, openPostgres, quoteIdent, type Db } from '../db/index.ts';
import { TEST_POSTGRES_URL, testBackend } from '../db/test-db.ts';
import type { CoordinationStore } from './coordination.ts';
import { openEmbeddedStore } from './embedded-store.ts';
import { openEtcdStore } from './etcd-store.ts';
import { cuttableDb, etcdBinary, eventually, startEtcd, TcpLink, type EtcdServer } from './testing.ts';
import { TEST_SHARDS, testKey } from './testing-votes.ts';
import { VoteChain } from './vote-chain.ts';
import { chainKey, loadStoredVotes, Witness, type WitnessOptions } from './witness.ts';
import type { WitnessAnswer, WitnessError } from './witness-api.ts';

const log = silentLogger();
const LEASE_MS = 3000;
const key = testKey('witness');
const pos = (ms: number) => packHlc(1_750_000_000_000 + ms, 0);

interface Backend {
  label: string;
  /** Starts a test on an empty store (no chain, no leader). */
  fresh(): Promise<void>;
  open(): Promise<CoordinationStore>;
  /** A store whose link to the backend can be cut (a partition). */
  openCuttable(): Promise<{ store: CoordinationStore; cut(): void }>;
}

/** A monotonic clock the test moves by hand (shared by the witnesses of a test, like one machine's). */
function testClock(start = 1_000) {
  const c = { t: start, now: () => c.t };
  return c;
}

function witness(store: CoordinationStore, url: string, clock: { now: () => number }, more: Partial<WitnessOptions> = {}) {
  const w = new Witness({
    store,
    url,
    key,
    shards: TEST_SHARDS,
    leaseMs: LEASE_MS,
    maxLagMs: 1000,
    summaryEveryMs: 60_000,
    log,
    now: clock.now,
    leaderTtlMs: 1000,
    ...more,
  });
  w.start();
  return w;
}

function answered(r: Result<WitnessAnswer, WitnessError>, what: string) {
  assert.ok(r.ok, `${what}: ${r.ok ? '' : `${r.error.code}: ${r.error.message}`}`);
  return r.value;
}

function lease(r: Result<WitnessAnswer, WitnessError>, what: string) {
  const a = answered(r, what).answers[0]!;
  assert.ok(a.ok, `${what}: refused ${a.ok ? '' : `${a.refusal.code}: ${a.refusal.message}`}`);
  return a.lease;
}

function refusal(r: Result<WitnessAnswer, WitnessError>, what: string) {
  const a = answered(r, what).answers[0]!;
  assert.ok(!a.ok, `${what}: expected a refusal, got epoch ${a.ok ? a.lease.epoch : ''}`);
  return a.refusal;
}

async function acting(ws: Witness[]): Promise<Witness> {
  await eventually('one witness to act', () => ws.filter((w) => w.acting).length === 1);
  return ws.find((w) => w.acting)!;
}

function witnessSuite(b: Backend) {
  describe(`witness service (${b.label})`, () => {
    beforeEach(() => b.fresh());

    it('grants the home site epoch 1, renews the holder without votes, grants a claim only after expiry', async () => {
      const store = await b.open();
      const clock = testClock();
      const w = witness(store, 'http://w1.test', clock);
      try {
        await acting([w]);
        const granted = lease(await w.renew({ site: 'B', shards: [{ shard: 'north', position: pos(0) }] }), 'first renewal');
        assert.deepEqual([granted.epoch, granted.holder, granted.basis], [1, 'B', 'renewed']);
        // The DR twin is not the home site: it gets nothing first.
        assert.equal(refusal(await w.renew({ site: 'B', shards: [{ shard: 'south', position: pos(0) }] }), 'B').code, 'no-lease');
        clock.t += 1000;
        const renewed = await w.renew({ site: 'B', shards: [{ shard: 'north', position: pos(1000) }] });
        assert.equal(lease(renewed, 'renewal').expiresInMs, LEASE_MS);
        assert.equal(answered(renewed, 'renewal').head.seq, 1, 'a renewal writes no vote');
        assert.equal((await store.list('chain/')).entries.length, 1);
        const early = refusal(await w.claim({ site: 'C', shard: 'north', appliedPosition: pos(900) }), 'early claim');
        assert.equal(early.code, 'lease-unexpired');
        assert.equal(early.retryInMs, LEASE_MS);
        clock.t += LEASE_MS;
        const claimed = lease(await w.claim({ site: 'C', shard: 'north', appliedPosition: pos(900) }), 'claim');
        assert.deepEqual([claimed.epoch, claimed.holder], [2, 'C']);
        // The old holder learns it is fenced.
        const old = refusal(await w.renew({ site: 'B', shards: [{ shard: 'north', position: pos(2000) }] }), 'old holder');
        assert.deepEqual([old.code, old.lease?.epoch, old.lease?.holder], ['not-holder', 2, 'C']);
        const votes = await loadStoredVotes(store);
        assert.deepEqual(
          votes.map((v) => (v as { kind: string }).kind),
          ['grant', 'claim'],
        );
        const chain = await w.chain({ after: 0 });
        assert.ok(chain.ok);
        assert.deepEqual(chain.value.votes, votes);
        assert.ok(VoteChain.verify(votes, { witnessKeys: (id) => (id === w.keyId ? key.publicKey : undefined) }).ok);
      } finally {
        await w.close();
        await store.close();
      }
    });

    it('a restarted witness rebuilds the same chain and epochs from the store and waits a whole lease', async () => {
      const store = await b.open();
      const clock = testClock();
      let w = witness(store, 'http://w1.test', clock);
      try {
        await acting([w]);
        lease(await w.renew({ site: 'B', shards: [{ shard: 'north', position: pos(0) }] }), 'grant north');
        lease(await w.renew({ site: 'C', shards: [{ shard: 'south', position: pos(0) }] }), 'grant south');
        clock.t += LEASE_MS + 1;
        lease(await w.claim({ site: 'C', shard: 'north', appliedPosition: pos(0) }), 'claim north');
        const before = await w.leases();
        assert.ok(before.ok);
        await w.close();
        // A new process: its monotonic clock starts again elsewhere.
        const clock2 = testClock(50);
        w = witness(store, 'http://w1.test', clock2);
        await acting([w]);
        const after = await w.leases();
        assert.ok(after.ok);
        assert.deepEqual(after.value.head, before.value.head);
        assert.deepEqual(
          after.value.leases.map((l) => [l.shard, l.epoch, l.holder, l.basis, l.expiresInMs]),
          before.value.leases.map((l) => [l.shard, l.epoch, l.holder, l.epoch ? 'restart' : 'none', l.epoch ? LEASE_MS : 0]),
        );
        clock2.t += LEASE_MS - 1;
        const r = refusal(await w.claim({ site: 'B', shard: 'north', appliedPosition: pos(0) }), 'claim after restart');
        assert.deepEqual([r.code, r.retryInMs], ['lease-unexpired', 1]);
        clock2.t += 1;
        assert.equal(lease(await w.claim({ site: 'B', shard: 'north', appliedPosition: pos(0) }), 'claim').epoch, 3);
      } finally {
        await w.close();
        await store.close();
      }
    });

    it('two witnesses on one store: one acts, the other answers not-leader; a cut or closed leader is taken over', async () => {
      const clock = testClock();
      const cuttable = await b.openCuttable();
      const other = await b.open();
      const third = await b.open();
      const w1 = witness(cuttable.store, 'http://w1.test', clock);
      await acting([w1]); // w1 first, so the cut hits the acting one
      const w2 = witness(other, 'http://w2.test', clock);
      let w3: Witness | undefined;
      try {
        const renew = (w: Witness, site: string, shard: string) => w.renew({ site, shards: [{ shard, position: pos(0) }] });
        assert.equal(lease(await renew(w1, 'B', 'north'), 'grant').epoch, 1);
        const nl = await renew(w2, 'B', 'north');
        assert.ok(!nl.ok);
        assert.deepEqual([nl.error.code, nl.error.leader], ['not-leader', 'http://w1.test']);
        assert.equal(w2.acting, false);

        // The acting witness's link to its store is cut: it stops acting, the other takes over.
        const cutAt = performance.now();
        cuttable.cut();
        await eventually('w2 to take over', () => w2.acting && !w1.acting, 20_000);
        const takeoverMs = Math.round(performance.now() - cutAt);
        const r1 = await renew(w1, 'B', 'north');
        assert.ok(!r1.ok && r1.error.code !== 'bad-request', 'the cut witness decides nothing');
        const l2 = await w2.leases();
        assert.ok(l2.ok);
        assert.equal(l2.value.head.seq, 1, 'the chain is intact');
        assert.equal(l2.value.leases.find((l) => l.shard === 'north')?.basis, 'restart');
        // Epochs go on from the chain: a claim after a whole lease is epoch 2.
        clock.t += LEASE_MS;
        assert.equal(lease(await w2.claim({ site: 'C', shard: 'north', appliedPosition: pos(0) }), 'claim').epoch, 2);

        // A third witness waits; the acting one closes: the third takes over at once, epochs go on.
        w3 = witness(third, 'http://w3.test', clock);
        const nl3 = await renew(w3, 'C', 'north');
        assert.ok(!nl3.ok && nl3.error.code === 'not-leader' && nl3.error.leader === 'http://w2.test');
        const closedAt = performance.now();
        await w2.close();
        await acting([w3]);
        const handoverMs = Math.round(performance.now() - closedAt);
        clock.t += LEASE_MS;
        assert.equal(lease(await w3.claim({ site: 'B', shard: 'north', appliedPosition: pos(0) }), 'claim').epoch, 3);
        const votes = await loadStoredVotes(third);
        assert.deepEqual(
          votes.map((v) => (v as { epoch: number }).epoch),
          [1, 2, 3],
        );
        assert.ok(VoteChain.verify(votes, { witnessKeys: () => key.publicKey }).ok);
        assert.ok((await third.get(chainKey(3))) !== undefined);
        console.log(`witness takeover (${b.label}): cut link ${takeoverMs} ms, closed leader ${handoverMs} ms`);
      } finally {
        await Promise.all([w1.close(), w2.close(), w3?.close()]);
        await Promise.all([cuttable.store.close(), other.close(), third.close()]);
      }
    });

    it('the store unreachable: the answer is unavailable and nothing is applied', async () => {
      const clock = testClock();
      const cuttable = await b.openCuttable();
      const store = cuttable.store;
      const w = witness(store, 'http://w1.test', clock);
      try {
        await acting([w]);
        cuttable.cut();
        const r = await w.renew({ site: 'B', shards: [{ shard: 'east', position: pos(0) }] });
        assert.ok(!r.ok, 'no grant without the store');
        assert.ok(['unavailable', 'not-leader'].includes(r.error.code), r.error.code);
      } finally {
        await w.close();
        await store.close();
      }
    });
  });
}

// ---- the embedded store --------------------------------------------------------------------------

const backend = testBackend();
let db: Db;
let schema = '';
before(async () => {
  if (backend === 'postgres') {
    schema = `t_witness_${randomBytes(5).toString('hex')}`;
    db = await openPostgres({ connectionString: TEST_POSTGRES_URL, schema, maxConnections: 10 });
  } else db = await openPglite();
});
after(async () => {
  await db.close();
  if (schema) {
    const admin = new pg.Client({ connectionString: TEST_POSTGRES_URL });
    await admin.connect();
    await admin.query(`DROP SCHEMA IF EXISTS ${quoteIdent(schema)} CASCADE`);
    await admin.end();
  }
});

witnessSuite({
  label: `embedded, ${backend}`,
  // A fresh database per test would cost more: the chain keys are cleared instead.
  fresh: async () => void (await db.query("DELETE FROM coord_kv WHERE key LIKE 'chain/%'").catch(() => undefined)),
  open: () => openEmbeddedStore({ db, log, pollMs: 50 }),
  async openCuttable() {
    const link = cuttableDb(db);
    return { store: await openEmbeddedStore({ db: link.db, log, pollMs: 50 }), cut: () => link.cut() };
  },
});

// ---- etcd ------------------------------------------------------------------------------------------

const binary = etcdBinary();
const ci = process.env.CI === 'true' || process.env.CI === '1';
if (!binary && !ci) {
  describe('witness service (etcd)', () => {
    it('needs an etcd server', (t) => t.skip('SKIPPED: etcd is not installed (apt-get install etcd-server)'));
  });
} else {
  let etcd: EtcdServer;
  const links: TcpLink[] = [];
  let namespace = '';
  before(async () => {
    if (!binary) throw new Error('etcd is not installed, and under CI the etcd tests must run');
    etcd = await startEtcd(binary);
  });
  after(async () => {
    await Promise.all(links.map((l) => l.close()));
    await etcd?.stop();
  });
  const open = (endpoint: string) => openEtcdStore({ endpoints: [endpoint], namespace, log, callTimeoutMs: 500 });
  witnessSuite({
    label: 'etcd',
    // A namespace per test keeps their chains apart.
    fresh() {
      namespace = `w-${randomBytes(4).toString('hex')}/`;
      return Promise.resolve();
    },
    open: () => Promise.resolve(open(etcd.endpoint)),
    async openCuttable() {
      const link = await TcpLink.open(etcd.endpoint);
      links.push(link);
      return { store: open(link.url), cut: () => link.cut() };
    },
  });
}
