// The ended epoch's tail, end to end (DESIGN.md §6, issue 24 items 3 and 4): two real sites B and
// C of the example region (openSite through startTestServer, each on its own database) under one
// witness in process (1.5 s leases), with the production wiring of each site's lease keeper
// (positions from replication, onEpochCuts -> recordEpochCuts) and replication by the apply path
// (syncSites). B holds guangzhou (epoch 1) and writes Patient P v1, replicated to C; cut off from C
// it writes v2 (acknowledged); cut off from the witness too, it stops at its stop time; C claims
// (epoch 2) with its applied position (v1) and writes v3. The links heal: v2 is fenced out at both
// sites, both end with v3 current, nothing is lost, and B sends writes to C. B learns the chain
// before receiving v3 in one run and after it in the other.
import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import type { Patient } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { listFencedOut, type Result } from '../records/index.ts';
import type { TestStore } from '../records/testing.ts';
import { makeResidentId } from '../region/index.ts';
import { exampleRegion } from '../region/testing.ts';
import { appliedPositionOf } from '../replication/index.ts';
import { syncSites } from '../replication/testing.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';
import { inProcessWitness, type InProcessWitness } from './testing-witness.ts';
import { detailOf, positionOf } from './vote.ts';
import type { WitnessApi } from './witness-api.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
const LEASE_MS = 1500;
const SHARD = 'guangzhou';

/** A patient of shard guangzhou (division 440106): home site B, then C. */
const patient = (seq: number, given: string): Patient => ({
  resourceType: 'Patient',
  name: [{ family: '梁', given: [given] }],
  identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440106', birthDate: '1968-09-10', sequence: seq }) }],
});

async function until<T>(what: string, f: () => Promise<T | undefined | false> | T | undefined | false, ms = 15_000): Promise<T> {
  const deadline = performance.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** The replication helpers' view of a running site. */
const storeOf = (s: TestServer): TestStore => ({
  store: s.site.store,
  ctx: s.site.ctx,
  db: s.db,
  counts: () => s.counts(),
  close: () => s.close(),
});

type Order = 'chain-first' | 'v3-first';

async function story(t: TestContext, order: Order): Promise<void> {
  const region = await exampleRegion();
  const witness: InProcessWitness = inProcessWitness({
    shards: region.shards.map((s) => ({ id: s.id, residency: s.residency })),
    leaseMs: LEASE_MS,
    maxLagMs: 5000,
  });
  // When the witness granted C's claim, on its (and this test's) monotonic clock.
  let claimGrantedAt: number | undefined;
  const clientOf = (id: string): WitnessApi => {
    const c = witness.client(id);
    return {
      ...c,
      claim: async (req) => {
        const r = await c.claim(req);
        if (r.ok && r.value.answers.some((a) => a.ok && a.lease.holder === id)) claimGrantedAt ??= witness.now();
        return r;
      },
    };
  };
  const open = (siteId: string) =>
    startTestServer({
      siteId,
      witness: {
        urls: ['http://witness.invalid'],
        publicKey: witness.w.key.publicKey,
        leaseMs: LEASE_MS,
        renewEveryMs: 100,
        safetyMarginMs: 200,
        client: clientOf(siteId),
      },
    });
  // Opening a site holds this process's event loop for seconds (and the witness is in it): nothing
  // is granted before both are open. C is cut off from the witness until B is, so a stalled
  // renewal of B's (a loaded machine) cannot let C take the shard over before the story has it so.
  witness.reachable = false;
  witness.partitioned.add('C');
  const b = await open('B');
  const c = await open('C').catch(async (e: unknown) => {
    await b.close();
    throw e;
  });
  witness.reachable = true;
  try {
    const B = storeOf(b);
    const C = storeOf(c);
    const writing = (s: TestServer, epoch: number) =>
      s.site.leases!.status().some((x) => x.shard === SHARD && x.writing && x.epoch === epoch && x.holder === s.site.siteId);
    const current = async (s: TestServer, id: string) =>
      (
        await s.db.query<{ version_id: string }>(
          "SELECT version_id FROM resource_current WHERE resource_type = 'Patient' AND id = $1",
          [id],
        )
      ).rows[0]?.version_id;
    const conflictsWith = async (s: TestServer, version: string) =>
      (
        await s.db.query<{ n: number }>(
          'SELECT count(*)::int AS n FROM resource_conflict WHERE version_a = $1 OR version_b = $1',
          [version],
        )
      ).rows[0]!.n;
    const cutRecorded = async (s: TestServer) =>
      (await s.db.query(`SELECT 1 FROM epoch_cut WHERE shard = $1 AND epoch = 1 AND holder = 'B'`, [SHARD])).rows.length > 0;
    /** A write of B's before the story's cut: retried if a stalled renewal let B's lease lapse (nobody else can take it). */
    const atB = async <T>(write: () => Promise<Result<T>>): Promise<T> => {
      for (let i = 0; ; i++) {
        await until('B to hold guangzhou at epoch 1', () => writing(b, 1));
        const r = await write();
        if (r.ok) return r.value;
        assert.ok(r.error.kind === 'fenced' && i < 5, JSON.stringify(r));
      }
    };
    const fencedOut = async (s: TestServer) =>
      (await listFencedOut(s.db, { shard: SHARD, limit: 10_000 })).map((v) => `${v.resourceType}/${v.id}/${v.versionId}`);

    // B holds guangzhou at epoch 1; P (v1) and Q are written there and replicated to C.
    const p1 = await atB(() => B.store.create('Patient', patient(1, 'v1')));
    const q1 = await atB(() => B.store.create('Patient', patient(2, 'q')));
    const P = p1.resource.id!;
    const Q = q1.resource.id!;
    const v1 = p1.resource.meta!.versionId!;
    await syncSites(B, C);
    assert.equal(await current(c, P), v1);

    // Cut off from C (no more syncing), B writes v2 under its lease: acknowledged.
    const p2 = await atB(() => B.store.update('Patient', P, { ...p1.resource, name: [{ family: '梁', given: ['v2'] }] }));
    const v2 = p2.resource.meta!.versionId!;

    // Cut off from the witness too: B writes Q until its lease stops, never after its stop time.
    witness.partitioned.add('B');
    witness.partitioned.delete('C');
    const now = witness.now();
    const expiresAt = now + witness.w.book.view(SHARD, now)!.expiresInMs;
    let stopped = false;
    const watchRow = (async (): Promise<number | undefined> => {
      let last: number | undefined;
      for (;;) {
        const { rows } = await b.db.query<{ withdrawn: boolean; until_ms: string | null }>(
          `SELECT valid_until = '-infinity' AS withdrawn,
                  CASE WHEN valid_until > '-infinity' THEN (extract(epoch FROM valid_until) * 1000)::text END AS until_ms
             FROM shard_lease WHERE shard = $1`,
          [SHARD],
        );
        if (rows[0]?.withdrawn) {
          stopped = true;
          return last;
        }
        if (rows[0]?.until_ms) last = Number(rows[0].until_ms);
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    const attempts: Array<{ startedWall: number; ackedMono: number; ok: boolean; versionId?: string; kind?: string }> = [];
    let q = q1.resource;
    for (let i = 0; !stopped || attempts.filter((a) => !a.ok).length < 5; i++) {
      assert.ok(witness.now() < expiresAt + 5000, 'B never stopped writing');
      const startedWall = Date.now();
      const r = await B.store.update('Patient', Q, { ...q, name: [{ family: '梁', given: [`q${i}`] }] });
      if (r.ok) q = r.value.resource;
      attempts.push({
        startedWall,
        ackedMono: witness.now(),
        ok: r.ok,
        ...(r.ok ? { versionId: r.value.resource.meta!.versionId! } : { kind: r.error.kind }),
      });
      await new Promise((res) => setTimeout(res, 15));
    }
    const stopWallMs = await watchRow;
    assert.ok(stopWallMs !== undefined, "B's lease row was withdrawn before its stop time was seen");
    const accepted = attempts.filter((a) => a.ok);
    assert.ok(accepted.length > 0, 'B wrote nothing between the cut and its stop time: the check below proves nothing');
    assert.deepEqual(
      attempts.filter((a) => a.ok && a.startedWall > stopWallMs),
      [],
      `writes accepted at B after its stop time ${new Date(stopWallMs).toISOString()}`,
    );
    assert.ok(
      attempts.filter((a) => !a.ok).every((a) => a.kind === 'fenced'),
      JSON.stringify(attempts.filter((a) => !a.ok)),
    );
    // B's stop time (the database's clock) on the witness's monotonic clock: before the witness's expiry.
    const stopMono = stopWallMs - Date.now() + witness.now();
    assert.ok(stopMono < expiresAt, `B stopped ${Math.round(stopMono - expiresAt)} ms after the witness's expiry`);
    const lastAck = Math.max(...accepted.map((a) => a.ackedMono));
    t.diagnostic(
      `${order}: B wrote Q ${accepted.length} times after the cut, stopped ${Math.round(expiresAt - stopMono)} ms ` +
        `before the witness's expiry (last acknowledgement ${Math.round(expiresAt - lastAck)} ms before it)`,
    );

    // C claims with its applied position (v1: it never received v2) and writes v3 on v1.
    await until('C to take guangzhou over at epoch 2', () => writing(c, 2));
    assert.ok(claimGrantedAt !== undefined && claimGrantedAt >= expiresAt);
    const claim = witness.w.chain.votes().find((v) => v.kind === 'claim' && v.shard === SHARD)!;
    assert.deepEqual([claim.site, claim.epoch], ['C', 2]);
    const cut = positionOf(detailOf({ ...claim, kind: 'claim' }).appliedPosition);
    assert.equal(cut, await appliedPositionOf(c.db, 'B'));
    const hlcOf = (versionId: string) => BigInt(`0x${versionId.split('-')[0]}`);
    assert.ok(hlcOf(v1) <= cut && cut < hlcOf(v2), `cut ${cut} between v1 and v2`);
    t.diagnostic(`${order}: C claimed ${Math.round(claimGrantedAt - expiresAt)} ms after the witness's expiry`);
    const p1AtC = await C.store.read('Patient', P);
    assert.ok(p1AtC.ok);
    assert.equal(p1AtC.value.meta!.versionId, v1);
    const p3 = await C.store.update('Patient', P, { ...p1AtC.value, name: [{ family: '梁', given: ['v3'] }] });
    assert.ok(p3.ok, JSON.stringify(p3));
    const v3 = p3.value.resource.meta!.versionId!;
    assert.ok(hlcOf(v3) > hlcOf(v2), 'v3 is later by the clock: without the cut it would not need to win');

    // The B-C link heals one way: C receives v2 (and Q's tail), fenced out; its current stays v3.
    await until("C's keeper to record its claim's cut", () => cutRecorded(c));
    await syncSites(B, C);
    assert.equal(await current(c, P), v3);
    const tailVersions = [`Patient/${P}/${v2}`, ...accepted.map((a) => `Patient/${Q}/${a.versionId}`)].sort();
    assert.deepEqual((await fencedOut(c)).sort(), tailVersions);

    if (order === 'v3-first') {
      // B receives v3 while it has not yet learned the claim: v2 and v3 are concurrent there.
      await syncSites(C, B);
      assert.equal(await current(b, P), v3);
      assert.ok((await conflictsWith(b, v2)) > 0, 'before the cut, v2 and v3 are a conflict pair at B');
      assert.equal(await cutRecorded(b), false);
    }
    // B hears the witness again: the renewal is refused naming C, and the chain copy brings the claim.
    witness.partitioned.delete('B');
    await until("B's keeper to record C as the holder", () => b.site.leases!.activeSiteFor(SHARD) === 'C');
    await until("B's keeper to record the claim's cut", () => cutRecorded(b));
    if (order === 'chain-first') {
      assert.equal(await current(b, P), v1, "B's own v2 is fenced out: its current goes back to v1");
      assert.equal((await fencedOut(b)).includes(`Patient/${P}/${v2}`), true);
      await syncSites(C, B);
    }
    await syncSites(B, C);
    await syncSites(C, B);

    // Both sites agree: v3 current, the same tail under review, no conflict pair for v2, nothing lost.
    for (const [name, s] of [
      ['B', b],
      ['C', c],
    ] as const) {
      assert.equal(await current(s, P), v3, `${name}: current version of P`);
      assert.deepEqual((await fencedOut(s)).sort(), tailVersions, `${name}: fenced-out list`);
      const ofP = (await listFencedOut(s.db, { shard: SHARD })).filter((v) => v.id === P);
      assert.deepEqual(
        ofP.map((v) => [v.versionId, v.epoch, v.originSite, v.currentVersion]),
        [[v2, '1', 'B', v3]],
        `${name}: P's version under review`,
      );
      assert.equal(await conflictsWith(s, v2), 0, `${name}: a conflict pair names v2`);
      const read = await s.site.store.vread('Patient', P, v2);
      assert.ok(read.ok, `${name}: vread of v2: ${JSON.stringify(read)}`);
      assert.equal((read.value as Patient).name?.[0]?.given?.[0], 'v2');
      for (const a of accepted) assert.ok((await s.site.store.vread('Patient', Q, a.versionId!)).ok, `${name}: Q ${a.versionId}`);
    }

    // B sends writes of guangzhou to C: the store says misdirected naming C, HTTP 421.
    const refused = await B.store.update('Patient', P, { ...p3.value.resource, name: [{ family: '梁', given: ['v4'] }] });
    assert.equal(!refused.ok && refused.error.kind, 'misdirected');
    assert.equal(!refused.ok && refused.error.activeSite?.id, 'C');
    const put = await fetch(`${b.fhir}/Patient/${P}`, {
      method: 'PUT',
      headers: { ...b.auth, 'content-type': 'application/fhir+json' },
      body: JSON.stringify({ ...p3.value.resource, name: [{ family: '梁', given: ['v4'] }] }),
    });
    assert.equal(put.status, 421, await put.clone().text());
    assert.match(await put.text(), /site C/);
    assert.equal(await current(b, P), v3);
  } finally {
    await b.close();
    await c.close();
  }
}

describe(`the ended epoch's tail, end to end (${testBackend()})`, () => {
  it('B learns the claim from the chain before it receives v3', (t) => story(t, 'chain-first'));
  it('B receives v3 before it learns the claim from the chain', (t) => story(t, 'v3-first'));
});
