// Fencing in the data path (DESIGN.md §6): under write leases, core data of a shard is
// written only while this site holds an unexpired lease of it, checked inside the write's
// own statement, and each version carries the lease's epoch.
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import type { Patient } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { openTestStore, type TestStore } from './testing.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
/** A patient of shard guangzhou (division 440106), home site B in the example region. */
const patient = (seq: number): Patient => ({
  resourceType: 'Patient',
  name: [{ family: '林' }],
  identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440106', birthDate: '1980-02-03', sequence: seq }) }],
});
/** A patient of shard shenzhen (440304). */
const szPatient = (seq: number): Patient => ({
  ...patient(seq),
  identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440304', birthDate: '1980-02-03', sequence: seq }) }],
});

describe(`fenced writes (${testBackend()})`, () => {
  let t: TestStore;
  // The keeper's view: who holds each shard (undefined: not known, the statement decides).
  const holders = new Map<string, string>();
  const lease = (shard: string, holder: string, epoch: number, validForMs: number) =>
    t.db.query(
      `INSERT INTO shard_lease (shard, holder, epoch, valid_until) VALUES ($1, $2, $3, clock_timestamp() + $4 * interval '1 ms')
         ON CONFLICT (shard) DO UPDATE SET holder = excluded.holder, epoch = excluded.epoch, valid_until = excluded.valid_until`,
      [shard, holder, epoch, validForMs],
    );

  before(async () => {
    t = await openTestStore({ siteId: 'B', leases: { activeSiteFor: (shard) => holders.get(shard) } });
  });
  after(() => t.close());
  beforeEach(async () => {
    holders.clear();
    await t.db.query('DELETE FROM shard_lease');
  });

  it('refuses core data of a shard this site holds no lease of, and writes nothing', async () => {
    const before = await t.counts();
    const r = await t.store.create('Patient', patient(1));
    assert.equal(r.ok, false);
    assert.equal(!r.ok && r.error.kind, 'fenced');
    assert.match(!r.ok ? r.error.issues[0]!.message : '', /shard guangzhou: this site holds no write lease of it/);
    assert.deepEqual(await t.counts(), before);
  });

  it('writes under the lease, each version and outbox row carrying its epoch', async () => {
    await lease('guangzhou', 'B', 7, 60_000);
    const r = await t.store.create('Patient', patient(2));
    assert.ok(r.ok, JSON.stringify(r));
    const id = r.value.resource.id!;
    const u = await t.store.update('Patient', id, { ...r.value.resource, gender: 'female' });
    assert.ok(u.ok, JSON.stringify(u));
    const { rows } = await t.db.query<{ epoch: string }>(
      `SELECT epoch::text FROM resource_history WHERE resource_type = 'Patient' AND id = $1
       UNION ALL SELECT epoch::text FROM outbox WHERE resource_type = 'Patient' AND resource_id = $1`,
      [id],
    );
    assert.deepEqual(
      rows.map((x) => x.epoch),
      ['7', '7', '7', '7'],
    );
  });

  it('sends a write to the holder another site took the shard over with, and refuses an expired lease', async () => {
    await lease('guangzhou', 'B', 3, 60_000);
    const r = await t.store.create('Patient', patient(3));
    assert.ok(r.ok);
    // C claimed the shard with epoch 4; this site's keeper recorded it, its in-memory view not yet.
    await lease('guangzhou', 'C', 4, 60_000);
    const before = await t.counts();
    const u = await t.store.update('Patient', r.value.resource.id!, { ...r.value.resource, gender: 'male' });
    assert.equal(!u.ok && u.error.kind, 'misdirected');
    assert.equal(!u.ok && u.error.activeSite?.id, 'C');
    assert.match(!u.ok ? u.error.issues[0]!.message : '', /written at site C .* under epoch 4/);
    assert.deepEqual(await t.counts(), before);

    await lease('guangzhou', 'B', 5, -1);
    const d = await t.store.delete('Patient', r.value.resource.id!);
    assert.equal(!d.ok && d.error.kind, 'fenced');
    assert.match(!d.ok ? d.error.issues[0]!.message : '', /write lease at this site has run out/);
    assert.deepEqual(await t.counts(), before);
  });

  it('fails only the fenced creates of a group written together', async () => {
    await lease('guangzhou', 'B', 1, 60_000);
    await lease('shenzhen', 'C', 1, 60_000);
    const results = await Promise.all(
      Array.from({ length: 12 }, (_, i) => t.store.create('Patient', i % 2 ? szPatient(100 + i) : patient(100 + i))),
    );
    results.forEach((r, i) => {
      if (i % 2) assert.equal(!r.ok && r.error.kind, 'misdirected', `create ${i}`);
      else assert.ok(r.ok, `create ${i}: ${JSON.stringify(r)}`);
    });
  });

  it('leaves data other than core unfenced (public data is written anywhere)', async () => {
    const r = await t.store.create('Organization', { resourceType: 'Organization', name: '中山大学附属第一医院' });
    assert.ok(r.ok, JSON.stringify(r));
  });

  it('orders a withdrawal after the writes already past the fence, and refuses every write after it', async () => {
    await lease('guangzhou', 'B', 9, 60_000);
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let wrote!: () => void;
    const written = new Promise<void>((resolve) => (wrote = resolve));
    const tx = t.store.inTransaction(async (q) => {
      const r = await t.store.createIn(q, 'Patient', patient(200), { id: undefined });
      wrote();
      await held;
      return r;
    });
    await written;
    let withdrawn = false;
    const withdrawal = t.db
      .query(`UPDATE shard_lease SET holder = 'C', epoch = 10 WHERE shard = 'guangzhou'`)
      .then(() => (withdrawn = true));
    if (testBackend() === 'postgres') {
      // The withdrawal waits on the row lock of the write already past the fence, however long.
      const blocked = () =>
        t.db.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE shard_lease%'`,
        );
      while ((await blocked()).rows[0]!.n === 0) await new Promise((r) => setTimeout(r, 10));
    } // (PGlite has one connection: the withdrawal queues behind the transaction by construction.)
    assert.equal(withdrawn, false);
    release();
    const r = await tx;
    assert.ok(r.ok, JSON.stringify(r));
    await withdrawal;
    const after = await t.store.create('Patient', patient(201));
    assert.equal(!after.ok && after.error.kind, 'misdirected');
  });
});
