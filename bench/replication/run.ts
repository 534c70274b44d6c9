// bench/replication: three sites (B, C, A of the example region) on PostgreSQL, each on its
// own schema, replicating over real HTTP with sealed, signed pages, in one process.
//   1. steady load at B (creates and updates of patients, some organizations) at a fixed
//      rate; lag per change at each peer = when the peer applied it - its HLC time;
//   2. the link B->C cut for a while under the same load, then healed: time to catch up;
//   3. a backlog of N changes waiting at B, then C's puller started: sustained apply rate;
//   baseline, same run: plain INSERTs of the same payloads into a jsonb table.
// Prints one JSON document on stdout.   node bench/replication/run.ts [--quick]
process.env.MEDMESH_TEST_DB = 'postgres';
import os from 'node:os';
import type { Organization, Patient } from '@medplum/fhirtypes';
import { unpackHlc } from '../../src/clock/index.ts';
import { startTestServer, type TestServer } from '../../src/site/testing.ts';
import { makeResidentId } from '../../src/region/index.ts';
import { Puller } from '../../src/replication/index.ts';
import { progress, round } from '../harness.ts';

const quick = process.argv.includes('--quick');
const rateArg = process.argv.find((a) => a.startsWith('--rate='));
const RATE = rateArg ? Number(rateArg.slice(7)) : 500; // changes per second into B's outbox
const STEADY_S = quick ? 10 : 60;
const CUT_S = quick ? 10 : 60;
const backlogArg = process.argv.find((a) => a.startsWith('--backlog='));
const BACKLOG = backlogArg ? Number(backlogArg.slice(10)) : quick ? 20_000 : 300_000;
const RID = 'urn:oid:2.16.156.10011.1.3';

const patient = (i: number): Patient => ({
  resourceType: 'Patient',
  name: [{ family: '梁', given: [`${i}`], text: `梁${i}` }],
  gender: i % 2 ? 'male' : 'female',
  birthDate: '1979-09-09',
  telecom: [{ system: 'phone', value: `1390000${String(i % 10000).padStart(4, '0')}` }],
  address: [{ city: '广州市', district: '越秀区', line: ['中山五路 1 号'] }],
  identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440104', birthDate: '1979-09-09', sequence: i % 1000 }) }],
});

type Id = 'A' | 'B' | 'C';
const s = {} as Record<Id, TestServer>;
const pullers = new Map<string, Puller>();
const link = (to: Id, from: Id) => {
  const p = new Puller({
    peer: { id: from, url: s[from].base },
    key: () => s[to].site.kms.signingKey()?.key,
    peerKey: () => s[to].site.identity.servicePublicKey(from),
    apply: { db: s[to].db, siteId: to, region: s[to].site.ctx.region, clock: s[to].site.ctx.clock, records: s[to].site.ctx },
    waitSeconds: 10,
    idleMs: 0,
  });
  pullers.set(`${from}->${to}`, p);
  return p;
};

/**
 * Writes at B for `seconds` so that B's outbox grows by `rate` changes per second: 70 % patient
 * creates (two changes: the patient and its EMPI directory entry), 20 % updates, 10 % organizations.
 */
async function load(
  seconds: number,
  rate: number,
  counter: { i: number },
): Promise<{ written: number; changes: number; behind_ms: number; write_p50_ms: number; write_p99_ms: number }> {
  const latencies: number[] = [];
  const ids: string[] = [];
  const t0 = performance.now();
  const total = seconds * rate;
  let written = 0;
  let worst = 0;
  let changes = 0;
  const inflight = new Set<Promise<void>>();
  for (let k = 0; changes < total; k++) {
    const due = t0 + (changes * 1000) / rate;
    const roll = counter.i % 10;
    changes += roll < 2 || roll === 9 ? 1 : 2;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    else worst = Math.max(worst, -wait);
    const i = counter.i++;
    const op = async () => {
      const started = performance.now();
      if (roll < 2 && ids.length) {
        const id = ids[i % ids.length]!;
        const r = await s.B.site.store.update('Patient', id, { ...patient(i), id });
        if (!r.ok) throw new Error(JSON.stringify(r.error));
      } else if (roll === 9) {
        const r = await s.B.site.store.create('Organization', {
          resourceType: 'Organization',
          name: `卫生服务站 ${i}`,
        } satisfies Organization);
        if (!r.ok) throw new Error(JSON.stringify(r.error));
      } else {
        const r = await s.B.site.store.create('Patient', patient(i));
        if (!r.ok) throw new Error(JSON.stringify(r.error));
        ids.push(r.value.resource.id!);
      }
      written++;
      latencies.push(performance.now() - started);
    };
    const p = op().finally(() => inflight.delete(p));
    inflight.add(p);
    if (inflight.size >= 64) await Promise.race(inflight);
  }
  await Promise.all(inflight);
  latencies.sort((a, b) => a - b);
  const pct = (p: number) => round(latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))] ?? 0);
  return { written, changes, behind_ms: round(worst), write_p50_ms: pct(50), write_p99_ms: pct(99) };
}

/** Waits until `to` holds every change B's outbox had for it when called. */
async function caughtUp(to: Id, timeoutMs: number): Promise<number> {
  const t0 = performance.now();
  const { rows } = await s.B.db.query<{ txid: string; pos: string }>(
    'SELECT txid::text AS txid, pos::text AS pos FROM outbox ORDER BY outbox.txid DESC, outbox.pos DESC LIMIT 1',
  );
  const end = rows[0]!;
  for (;;) {
    const c = (
      await s[to].db.query<{ txid: string; pos: string }>(
        "SELECT txid::text AS txid, pos::text AS pos FROM replication_cursor WHERE peer = 'B'",
      )
    ).rows[0];
    if (c && (BigInt(c.txid) > BigInt(end.txid) || (c.txid === end.txid && BigInt(c.pos) >= BigInt(end.pos))))
      return performance.now() - t0;
    if (performance.now() - t0 > timeoutMs) throw new Error(`${to} did not catch up within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Lag of every change `to` applied from B since `since`: applied_at - HLC time. */
async function lags(to: Id, since: Date): Promise<{ changes: number; p50_ms: number; p99_ms: number; max_ms: number }> {
  const applied = await s[to].db.query<{ change_id: string; at: string }>(
    `SELECT change_id::text, (extract(epoch FROM applied_at) * 1000)::float8::text AS at FROM replication_applied
      WHERE peer = 'B' AND applied_at >= $1`,
    [since],
  );
  const hlc = new Map(
    (await s.B.db.query<{ change_id: string; hlc: string }>('SELECT change_id::text, hlc::text FROM outbox')).rows.map((r) => [
      r.change_id,
      unpackHlc(BigInt(r.hlc)).physicalMs,
    ]),
  );
  const l = applied.rows
    .map((r) => Number(r.at) - hlc.get(r.change_id)!)
    .filter((x) => Number.isFinite(x))
    .sort((a, b) => a - b);
  const pct = (p: number) => round(l[Math.min(l.length - 1, Math.floor((p / 100) * l.length))] ?? 0);
  return { changes: l.length, p50_ms: pct(50), p99_ms: pct(99), max_ms: round(l.at(-1) ?? 0) };
}

async function main(): Promise<void> {
  progress('starting sites B, C, A on PostgreSQL');
  for (const id of ['B', 'C', 'A'] as const) s[id] = await startTestServer({ siteId: id });
  for (const to of ['B', 'C', 'A'] as const) {
    for (const from of ['B', 'C', 'A'] as const)
      if (from !== to)
        await s[to].site.identity.registerService({
          id: from,
          kind: 'site',
          publicKey: s[from].site.kms.signingKey()!.key.publicKey,
        });
  }
  const counter = { i: 0 };
  const result: Record<string, unknown> = { machine: { cpus: os.cpus().length, node: process.version }, rate_per_s: RATE };
  try {
    link('C', 'B').start();
    link('A', 'B').start();
    progress(`steady load: ${RATE} changes/s at B for ${STEADY_S} s`);
    const since = new Date();
    const steady = await load(STEADY_S, RATE, counter);
    await Promise.all([caughtUp('C', 60_000), caughtUp('A', 60_000)]);
    result.steady = {
      seconds: STEADY_S,
      written: steady.written,
      changes: steady.changes,
      load_behind_schedule_max_ms: steady.behind_ms,
      write_at_B_p50_ms: steady.write_p50_ms,
      write_at_B_p99_ms: steady.write_p99_ms,
      lag_at_C: await lags('C', since),
      lag_at_A: await lags('A', since),
    };

    progress(`link B->C cut for ${CUT_S} s under load, then healed`);
    await pullers.get('B->C')!.stop();
    await load(CUT_S, RATE, counter);
    const healed = performance.now();
    link('C', 'B').start();
    const loadAfter = load(5, RATE, counter);
    await caughtUp('C', 600_000);
    result.cut = {
      seconds: CUT_S,
      backlog_changes: CUT_S * RATE,
      catch_up_s: round((performance.now() - healed) / 1000),
      while_writing_at_rate: RATE,
    };
    await loadAfter;
    await caughtUp('C', 60_000);

    progress(`backlog of ${BACKLOG} changes at B, then C's puller started`);
    await pullers.get('B->C')!.stop();
    await pullers.get('B->A')!.stop();
    const seedN = 2000;
    const seeded = await load(Math.ceil(seedN / 2000), 2000, counter);
    // The rest of the backlog: copies of those real outbox rows under new ids (the receiver's work is the same).
    const copies = BACKLOG - seeded.changes;
    await s.B.db.query(
      `WITH src AS (SELECT (row_number() OVER ()) - 1 AS k, o.*
                     FROM (SELECT * FROM outbox WHERE resource_type = 'Patient' AND payload IS NOT NULL
                            ORDER BY txid DESC, pos DESC LIMIT 1000) o),
            n AS (SELECT count(*) AS n FROM src)
       INSERT INTO outbox (change_id, origin_site, hlc, parent_hlc, epoch, shard, data_class, resource_type, resource_id,
                           version_id, deleted, payload)
       SELECT gen_random_uuid(), o.origin_site, o.hlc + g, NULL, o.epoch, o.shard, o.data_class, o.resource_type, 'bl-' || g,
              lpad(to_hex(o.hlc + g), 16, '0') || '-B', false, jsonb_set(o.payload, '{id}', to_jsonb('bl-' || g))
         FROM generate_series(1, $1::int) g CROSS JOIN n JOIN src o ON o.k = g % n.n`,
      [copies],
    );
    const t0 = performance.now();
    link('C', 'B').start();
    let last = 0;
    const ticker = setInterval(
      () =>
        void s.C.db.query<{ n: number }>("SELECT count(*)::int AS n FROM replication_applied WHERE peer = 'B'").then((r) => {
          progress(`  C applied ${r.rows[0]!.n} (+${r.rows[0]!.n - last} in 5 s)`);
          last = r.rows[0]!.n;
        }),
      5000,
    );
    await caughtUp('C', 900_000);
    clearInterval(ticker);
    const seconds = (performance.now() - t0) / 1000;
    const arrived = (await s.C.db.query<{ n: number }>("SELECT count(*)::int AS n FROM resource_current WHERE id LIKE 'bl-%'"))
      .rows[0]!.n;
    if (arrived !== copies) throw new Error(`backlog: ${copies} changes written at B, ${arrived} at C`);
    result.backlog = { changes: BACKLOG, catch_up_s: round(seconds), apply_per_s: round(BACKLOG / seconds) };

    progress('baseline: plain INSERT of the same payloads');
    await s.C.db.query('CREATE TABLE raw_apply (id text PRIMARY KEY, content jsonb NOT NULL)');
    const b0 = performance.now();
    await s.C.db.query(
      `INSERT INTO raw_apply SELECT 'r-' || id || '-' || version_id, content FROM resource_history
        WHERE resource_type = 'Patient' AND content IS NOT NULL LIMIT $1`,
      [BACKLOG],
    );
    const rawRows = (await s.C.db.query<{ n: number }>('SELECT count(*)::int AS n FROM raw_apply')).rows[0]!.n;
    const bulk = rawRows / ((performance.now() - b0) / 1000);
    const single = performance.now();
    const sample = (await s.C.db.query<{ content: string }>('SELECT content::text AS content FROM raw_apply LIMIT 5000')).rows;
    let k = 0;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (k < sample.length) {
          const i = k++;
          await s.C.db.query('INSERT INTO raw_apply (id, content) VALUES ($1, $2::jsonb)', [`s-${i}`, sample[i]!.content]);
        }
      }),
    );
    const perRow = sample.length / ((performance.now() - single) / 1000);
    result.baseline = { raw_insert_per_s_single_rows_c8: round(perRow), raw_insert_per_s_one_statement: round(bulk) };
    result.ratios = { apply_vs_single_row_insert: round((result.backlog as { apply_per_s: number }).apply_per_s / perRow, 3) };
    result.targets = {
      lag_p99_ms_le_500: (result.steady as { lag_at_C: { p99_ms: number } }).lag_at_C.p99_ms <= 500,
      apply_per_s_ge_2000: (result.backlog as { apply_per_s: number }).apply_per_s >= 2000,
      backlog_300k_le_180_s: !quick && (result.backlog as { catch_up_s: number }).catch_up_s <= 180,
    };
  } finally {
    for (const p of pullers.values()) await p.stop();
    for (const id of ['A', 'B', 'C'] as const) await s[id].close();
  }
  console.log(JSON.stringify(result, null, 2));
}

await main();
