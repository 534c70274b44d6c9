// Batched home-shard lookups on PGlite and PostgreSQL: right answers for every caller, fewer
// queries than callers, never an answer older than the question, a failed query fails only
// the callers it carried, and a home once found is answered again without a query.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Queryable, QueryOptions } from '../db/index.ts';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { HomeLookup } from './home-lookup.ts';
import { openTestStore, type TestStore } from './testing.ts';

/** The pool, with a count of queries and an optional gate that holds the next one back. */
function watched(q: Queryable) {
  const state = { queries: 0, gate: undefined as Promise<void> | undefined, failNext: false };
  const wrapped: Queryable = {
    exec: (sql) => q.exec(sql),
    query: async <R>(sql: string, params?: readonly unknown[], opts?: QueryOptions) => {
      state.queries++;
      const gate = state.gate;
      state.gate = undefined;
      if (state.failNext) {
        state.failNext = false;
        throw new Error('connection lost');
      }
      // The query is asked for now, and only sent once the gate opens (as if the server were slow).
      if (gate) await gate;
      return q.query<R>(sql, params, opts);
    },
  };
  return { wrapped, state };
}

const place = (t: TestStore, id: string, shard: string) =>
  t.db.query(
    `INSERT INTO empi_patient (patient_id, home_shard, method, reason, placed_by_site)
     VALUES ($1, $2, 'test', 'placed by the test', 'B')`,
    [id, shard],
  );

describe(`batched home-shard lookups (${testBackend()})`, () => {
  let t: TestStore;
  before(async () => {
    t = await openTestStore();
    for (let i = 0; i < 20; i++) await place(t, `hl-${i}`, i % 2 ? '440300' : '440100');
  });
  after(() => t.close());

  it('answers every caller, unknown patients and repeats included, with fewer queries than callers', async () => {
    const { wrapped, state } = watched(t.db);
    const homes = new HomeLookup(wrapped);
    const ids = [...Array.from({ length: 20 }, (_, i) => `hl-${i}`), 'hl-0', 'hl-7', 'nobody', 'hl-19'];
    const found = await Promise.all(ids.map((id) => homes.find(id)));
    assert.deepEqual(
      found.map((f) => f?.shard),
      ids.map((id) => (id === 'nobody' ? undefined : Number(id.slice(3)) % 2 ? '440300' : '440100')),
    );
    assert.equal(found[0]?.reason, 'placed by the test');
    // The first two go at once (two may be in flight), the other 22 wait and share the third.
    assert.equal(state.queries, 3, `${state.queries} queries for ${ids.length} lookups`);
  });

  it('never answers a lookup with a query that started before it was asked', async () => {
    const { wrapped, state } = watched(t.db);
    const homes = new HomeLookup(wrapped, { maxInFlight: 1 });
    let open!: () => void;
    state.gate = new Promise((r) => (open = r));
    const first = homes.find('hl-1'); // its query is held back
    await place(t, 'hl-late', '440600'); // committed after that query was asked for
    const late = homes.find('hl-late');
    open();
    assert.equal((await first)?.shard, '440300');
    assert.equal((await late)?.shard, '440600', 'asked after the commit: it must see it');
    assert.equal(state.queries, 2);
  });

  it('fails only the callers of a failed query; the next lookups work', async () => {
    const { wrapped, state } = watched(t.db);
    const homes = new HomeLookup(wrapped);
    state.failNext = true;
    const failed = await Promise.allSettled([homes.find('hl-2'), homes.find('hl-3')]);
    assert.ok(failed.some((r) => r.status === 'rejected' && /connection lost/.test(String(r.reason))));
    assert.equal((await homes.find('hl-3'))?.shard, '440300');
  });

  it('remembers a home it found (a placement never changes), and asks again for a patient it did not find', async () => {
    const { wrapped, state } = watched(t.db);
    const homes = new HomeLookup(wrapped, { maxKnown: 3 });
    assert.equal((await homes.find('hl-4'))?.shard, '440100');
    assert.equal((await homes.find('hl-4'))?.shard, '440100');
    assert.equal(state.queries, 1, 'the second lookup of a found home asks nothing');
    assert.equal(await homes.find('hl-cache-late'), undefined);
    await place(t, 'hl-cache-late', '441200');
    assert.equal((await homes.find('hl-cache-late'))?.shard, '441200', 'not found before: asked again, and found once placed');
    assert.equal(state.queries, 3);
    // Bounded: three homes held, the oldest goes first.
    for (const id of ['hl-5', 'hl-6']) await homes.find(id);
    const before: number = state.queries;
    assert.equal((await homes.find('hl-6'))?.shard, '440100');
    assert.equal(state.queries, before, 'still held');
    assert.equal((await homes.find('hl-4'))?.shard, '440100');
    assert.equal(state.queries, before + 1, 'evicted: asked again');
  });

  it('serves the plain creates of a patient compartment, residency and unknown patients as before', async () => {
    const patient = await t.store.create('Patient', {
      resourceType: 'Patient',
      name: [{ family: '林' }],
      identifier: [
        {
          system: 'urn:oid:2.16.156.10011.1.3',
          value: makeResidentId({ divisionCode: '440106', birthDate: '1980-03-04', sequence: 11 }),
        },
      ],
    });
    assert.ok(patient.ok, JSON.stringify(patient));
    const pid = patient.value.resource.id!;
    const made = await Promise.all(
      Array.from({ length: 30 }, (_, i) =>
        t.store.create('Observation', {
          resourceType: 'Observation',
          status: 'final',
          code: { text: `obs ${i}` },
          subject: { reference: `Patient/${i % 3 ? pid : 'unknown-patient'}` },
        }),
      ),
    );
    assert.equal(made.filter((r) => r.ok).length, 20);
    for (const r of made) if (!r.ok) assert.match(r.error.issues[0]!.message, /Patient\/unknown-patient is not known at site B/);
    const { rows } = await t.db.query<{ shard: string; n: number }>(
      `SELECT shard, count(*)::int AS n FROM resource_current
        WHERE resource_type = 'Observation' AND patient_id = $1 GROUP BY shard`,
      [pid],
    );
    assert.deepEqual(rows, [{ shard: 'guangzhou', n: 20 }], 'all on the home shard of a 440106 (Guangzhou) resident');
  });
});
