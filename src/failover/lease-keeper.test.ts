// The site's lease keeper against a witness in process (testing-witness.ts), on real time with
// short leases, two sites B and C of the example region each on its own database: B, home of
// guangzhou, writes it under epoch 1; cut off from the witness, it stops at its stop time before
// the witness's expiry; C takes guangzhou over with epoch 2; B, back, records C as the holder and
// sends writes there; forged votes are refused; both chain copies equal the witness's.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Patient } from '@medplum/fhirtypes';
import { silentLogging } from '../common/index.ts';
import { packHlc, type Hlc } from '../clock/index.ts';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { exampleRegion } from '../region/testing.ts';
import { openTestStore, type TestStore } from '../records/testing.ts';
import { LeaseKeeper } from './lease-keeper.ts';
import { testKey } from './testing-votes.ts';
import { inProcessWitness, type InProcessWitness } from './testing-witness.ts';
import { VoteChain } from './vote-chain.ts';
import { signVote, voteHash } from './vote.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
/** A patient of shard guangzhou (division 440106): home site B, then C. */
const patient = (seq: number): Patient => ({
  resourceType: 'Patient',
  name: [{ family: '陈' }],
  identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440106', birthDate: '1975-06-07', sequence: seq }) }],
});

const LEASE_MS = 1500;
const MARGIN_MS = 200;

async function until<T>(what: string, f: () => Promise<T | undefined | false> | T | undefined | false, ms = 10_000): Promise<T> {
  const deadline = performance.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

interface TestSite {
  t: TestStore;
  keeper: LeaseKeeper;
  logging: ReturnType<typeof silentLogging>;
}

describe(`lease keeper (${testBackend()})`, () => {
  let witness: InProcessWitness;
  const sites = new Map<string, TestSite>();
  // Positions: B writes up to `written`; C has applied B's feed up to `applied` (lag 0 by default).
  let written: Hlc = packHlc(Date.UTC(2025, 0, 1), 0);
  const applied = new Map<string, Hlc>();

  const open = async (siteId: string): Promise<TestSite> => {
    const region = await exampleRegion();
    const t = await openTestStore({ siteId, leases: { activeSiteFor: (shard) => keeper.activeSiteFor(shard) } });
    const logging = silentLogging();
    const keeper: LeaseKeeper = new LeaseKeeper({
      siteId,
      shards: region.shards.filter((s) => s.residency.includes(siteId)),
      db: t.db,
      witness: witness.client(siteId),
      witnessKey: witness.w.key.publicKey,
      leaseMs: LEASE_MS,
      renewEveryMs: 100,
      safetyMarginMs: MARGIN_MS,
      positions: {
        own: () => Promise.resolve(written),
        applied: (_shard, holder) => Promise.resolve(applied.get(holder) ?? written),
      },
      log: logging.log,
    });
    const site = { t, keeper, logging };
    sites.set(siteId, site);
    await keeper.start();
    return site;
  };
  const site = (id: string) => sites.get(id)!;
  const row = async (id: string, shard: string) =>
    (
      await site(id).t.db.query<{ holder: string; epoch: string; withdrawn: boolean; valid: boolean }>(
        `SELECT holder, epoch::text AS epoch, valid_until = '-infinity' AS withdrawn, valid_until > clock_timestamp() AS valid
           FROM shard_lease WHERE shard = $1`,
        [shard],
      )
    ).rows[0];
  const metric = (id: string, name: string) => {
    const line = site(id)
      .keeper.prometheus(id)
      .split('\n')
      .find((l) => l.startsWith(name));
    return line ? Number(line.split(' ').at(-1)) : 0;
  };
  const held = (id: string, shard: string, epoch: number) =>
    site(id)
      .keeper.status()
      .some((s) => s.shard === shard && s.holder === id && s.epoch === epoch && s.writing);

  before(async () => {
    const region = await exampleRegion();
    witness = inProcessWitness({
      shards: region.shards.map((s) => ({ id: s.id, residency: s.residency })),
      leaseMs: LEASE_MS,
      maxLagMs: 1000,
    });
    await open('B');
    await open('C');
  });
  after(async () => {
    for (const s of sites.values()) await s.keeper.close();
    for (const s of sites.values()) await s.t.close();
  });

  it('grants the home site epoch 1; its writes carry it, the standby sends writes to it', async () => {
    await until('B to hold guangzhou at epoch 1', () => held('B', 'guangzhou', 1));
    const r = await row('B', 'guangzhou');
    assert.deepEqual({ ...r, valid: r?.valid }, { holder: 'B', epoch: '1', withdrawn: false, valid: true });
    const created = await site('B').t.store.create('Patient', patient(1));
    assert.ok(created.ok, JSON.stringify(created));
    const { rows } = await site('B').t.db.query<{ epoch: string }>(
      `SELECT epoch::text AS epoch FROM resource_history WHERE resource_type = 'Patient' AND id = $1`,
      [created.value.resource.id],
    );
    assert.deepEqual(
      rows.map((x) => x.epoch),
      ['1'],
    );
    // C learned B holds guangzhou from its reports: its row names B, and a write there is sent to B.
    await until('C to record B as the holder', async () => (await row('C', 'guangzhou'))?.holder === 'B');
    const misdirected = await site('C').t.store.create('Patient', patient(2));
    assert.equal(!misdirected.ok && misdirected.error.kind, 'misdirected');
    assert.equal(!misdirected.ok && misdirected.error.activeSite?.id, 'B');
    await until('C to hold its home shard shenzhen', () => held('C', 'shenzhen', 1));
  });

  it('cut off from the witness, stops writing at its stop time, before the lease expires at the witness', async (t) => {
    witness.partitioned.add('B');
    const now = witness.now();
    const expiresAt = now + witness.w.book.view('guangzhou', now)!.expiresInMs;
    const withdrawnAt = await until('B to withdraw guangzhou', async () =>
      (await row('B', 'guangzhou'))?.withdrawn ? witness.now() : undefined,
    );
    assert.ok(withdrawnAt < expiresAt, `withdrawn at ${withdrawnAt}, the witness's lease expires at ${expiresAt}`);
    t.diagnostic(`withdrawn ${Math.round(expiresAt - withdrawnAt)} ms before the witness's expiry`);
    // Not long before: the whole usable lease was used (the stop time counts from the last renewal sent).
    assert.ok(expiresAt - withdrawnAt < MARGIN_MS + LEASE_MS * 0.01 + 150, `withdrawn ${expiresAt - withdrawnAt} ms early`);
    const refused = await site('B').t.store.create('Patient', patient(3));
    assert.equal(!refused.ok && refused.error.kind, 'fenced');
    assert.ok(metric('B', 'medmesh_lease_withdrawals_total') >= 1);
    assert.equal(metric('B', 'medmesh_witness_unreachable'), 1);
  });

  it('the standby claims after the expiry with epoch 2 and writes under it', async () => {
    await until('C to take guangzhou over at epoch 2', () => held('C', 'guangzhou', 2));
    const claim = witness.w.chain.votes().find((v) => v.kind === 'claim' && v.shard === 'guangzhou');
    assert.equal(claim?.site, 'C');
    assert.equal(claim?.epoch, 2);
    const created = await site('C').t.store.create('Patient', patient(4));
    assert.ok(created.ok, JSON.stringify(created));
    const { rows } = await site('C').t.db.query<{ epoch: string }>(
      `SELECT epoch::text AS epoch FROM outbox WHERE resource_type = 'Patient' AND resource_id = $1`,
      [created.value.resource.id],
    );
    assert.deepEqual(
      rows.map((x) => x.epoch),
      ['2'],
    );
    // B, still cut off, writes nothing.
    const refused = await site('B').t.store.create('Patient', patient(5));
    assert.equal(!refused.ok && refused.error.kind, 'fenced');
  });

  it('the old holder, hearing the witness again, records the new holder and sends writes there (421)', async () => {
    witness.partitioned.delete('B');
    await until('B to record C as the holder at epoch 2', async () => {
      const r = await row('B', 'guangzhou');
      return r?.holder === 'C' && r.epoch === '2';
    });
    assert.equal(site('B').keeper.activeSiteFor('guangzhou'), 'C');
    const misdirected = await site('B').t.store.create('Patient', patient(6));
    assert.equal(!misdirected.ok && misdirected.error.kind, 'misdirected');
    assert.equal(!misdirected.ok && misdirected.error.activeSite?.id, 'C');
    assert.match(!misdirected.ok ? misdirected.error.issues[0]!.message : '', /written at site C/);
    // And it no longer renews it: the witness holds C's lease.
    const renewalsBefore = witness.calls.get('renew') ?? 0;
    await until('more renewals', () => (witness.calls.get('renew') ?? 0) > renewalsBefore + 4);
    assert.equal(witness.w.book.writerAt('guangzhou', witness.now()), 'C');
    assert.equal(metric('B', 'medmesh_witness_unreachable'), 0);
  });

  it('refuses a forged vote in the chain feed: counted, not stored, and serves on', async () => {
    const head = witness.w.chain.head;
    const forged = signVote(
      {
        ...witness.w.chain.draft(
          {
            kind: 'claim',
            shard: 'guangzhou',
            site: 'B',
            epoch: 99,
            detail: { appliedPosition: '0'.repeat(16), holderPosition: '0'.repeat(16), lagMs: 0 },
          },
          { at: new Date().toISOString(), witnessKey: witness.w.keyId },
        ),
      },
      testKey('mallory'),
    );
    witness.injected.push(forged);
    for (const id of ['B', 'C']) {
      await until(
        `${id} to refuse the forged vote`,
        () => metric(id, 'medmesh_witness_vote_refusals_total{site="' + id + '",code="forged"}') === 1,
      );
      const { rows } = await site(id).t.db.query('SELECT 1 FROM witness_vote WHERE seq = $1', [forged.seq]);
      assert.equal(rows.length, 0, `${id} stored the forged vote`);
      assert.equal(site(id).keeper.chain().head.seq, head.seq);
      assert.ok(
        site(id)
          .logging.counts.entries()
          .some((e) => e.level === 'error'),
      );
    }
    // Served again and again, it is alarmed once; the site keeps its leases meanwhile.
    await until('more renewals', () => held('C', 'guangzhou', 2));
    assert.equal(metric('C', 'medmesh_witness_vote_refusals_total{site="C",code="forged"}'), 1);
    witness.injected.length = 0;
  });

  it('hands a shard over (planned switchover): the successor takes it at once, zero loss', async () => {
    written = packHlc(Date.UTC(2025, 0, 1) + 5000, 0);
    const handed = await site('C').keeper.handOver('guangzhou', 'B');
    assert.ok(handed.ok, !handed.ok ? handed.error.message : '');
    const refused = await site('C').t.store.create('Patient', patient(7));
    assert.equal(!refused.ok && refused.error.kind, 'fenced');
    await until('B to take guangzhou at epoch 3', () => held('B', 'guangzhou', 3));
    const switchover = witness.w.chain.votes().at(-1);
    assert.equal(switchover?.kind, 'switchover');
    await until('C to record B as the holder', async () => (await row('C', 'guangzhou'))?.holder === 'B');
    const created = await site('B').t.store.create('Patient', patient(8));
    assert.ok(created.ok, JSON.stringify(created));
  });

  it('keeps at each site a copy of the chain that verifies and equals the witness’s', async () => {
    const want = witness.w.chain.head.seq;
    for (const id of ['B', 'C']) {
      await until(`${id}'s copy to reach the witness's head`, () => site(id).keeper.chain().head.seq >= want);
      const { rows } = await site(id).t.db.query<{ hash: string; body: unknown }>(
        'SELECT hash, body FROM witness_vote ORDER BY seq',
      );
      const verified = VoteChain.verify(
        rows.map((r) => r.body),
        { witnessKeys: () => witness.w.key.publicKey },
      );
      assert.ok(verified.ok, JSON.stringify(!verified.ok && verified.error));
      // Summaries may have been added meanwhile: the copy equals the witness's chain up to its head.
      const witnessVotes = witness.w.chain.votes().slice(0, rows.length).map(voteHash);
      assert.deepEqual(
        rows.map((r) => r.hash),
        witnessVotes,
      );
      assert.deepEqual(verified.value.votes().map(voteHash), witnessVotes);
      assert.ok(rows.length >= want);
    }
  });
});
