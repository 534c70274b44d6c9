// bench/records: FHIR create / read / search against a raw jsonb INSERT baseline through
// the same driver and pool, in the same run. Prints one JSON document on stdout.
//   node bench/records/run.ts [--pglite] [--quick]
import { randomBytes, randomUUID } from 'node:crypto';
import os from 'node:os';
import pg from 'pg';
import type { Patient } from '@medplum/fhirtypes';
import { HybridClock } from '../../src/clock/index.ts';
import { migrate, openPglite, openPostgres, pgBoundStore, quoteIdent, type Db } from '../../src/db/index.ts';
import { buildBindingTable, buildSearchParamTable, loadFhirDefinitions, RecordStore, SUPPORTED_TYPES } from '../../src/records/index.ts';
import { makeResidentId } from '../../src/region/index.ts';
import { exampleRegion } from '../../src/region/testing.ts';
import { measure, progress, round, type Measured } from '../harness.ts';

const args = new Set(process.argv.slice(2));
const quick = args.has('--quick');
const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
// Each phase runs for a fixed time (bounded count too): short bursts are too noisy to compare.
const N = quick ? 2000 : 40_000;
const MAX_S = quick ? 1 : 6;

function patient(i: number): Patient {
  return {
    resourceType: 'Patient',
    name: [{ use: 'official', family: '王', given: ['小明'], text: '王小明' }],
    gender: i % 2 ? 'male' : 'female',
    birthDate: '1980-03-04',
    telecom: [{ system: 'phone', value: `1380000${String(i % 10000).padStart(4, '0')}` }],
    address: [{ use: 'home', city: '广州市', district: '天河区', line: ['天河路 385 号'] }],
    identifier: [{ system: 'urn:oid:2.16.156.10011.1.3', value: makeResidentId({ divisionCode: '440106', birthDate: '1980-03-04', sequence: i % 1000 }) }],
  };
}

async function benchBackend(kind: 'postgres' | 'pglite'): Promise<Record<string, unknown>> {
  let db: Db;
  let cleanup = async () => {};
  if (kind === 'postgres') {
    const schema = `bench_${randomBytes(4).toString('hex')}`;
    db = await openPostgres({ connectionString: url, schema, maxConnections: 8 });
    cleanup = async () => {
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      await c.query(`DROP SCHEMA ${quoteIdent(schema)} CASCADE`);
      await c.end();
    };
  } else db = await openPglite();
  try {
    const m = await migrate(db);
    if (!m.ok) throw new Error(m.error.message);
    await db.query('CREATE TABLE raw_resource (id text PRIMARY KEY, content jsonb NOT NULL)');
    loadFhirDefinitions();
    const region = await exampleRegion();
    const clock = await HybridClock.start({ store: pgBoundStore(db, 'B'), maxOffsetMs: 500 });
    const store = new RecordStore({ db, region, siteId: 'B', clock, searchParams: buildSearchParamTable(), bindings: buildBindingTable(SUPPORTED_TYPES) });
    const bodies = Array.from({ length: N }, (_, i) => patient(i));
    const json = bodies.map((b) => JSON.stringify(b));

    const results: Record<string, Measured> = {};
    for (const c of [1, 8]) {
      progress(`${kind}: raw INSERT at concurrency ${c}`);
      results[`raw_insert_c${c}`] = await measure({ count: N, concurrency: c, maxSeconds: MAX_S, op: async (i) => void (await db.query('INSERT INTO raw_resource (id, content) VALUES ($1, $2::jsonb)', [randomUUID(), json[i]])) });
      progress(`${kind}: FHIR create at concurrency ${c}`);
      results[`create_c${c}`] = await measure({
        count: N, concurrency: c, maxSeconds: MAX_S,
        op: async (i) => {
          const r = await store.create('Patient', bodies[i]);
          if (!r.ok) throw new Error(JSON.stringify(r.error));
        },
      });
    }
    const { rows } = await db.query<{ id: string }>("SELECT id FROM resource_current WHERE resource_type = 'Patient' LIMIT 200");
    const ids = rows.map((r) => r.id);
    progress(`${kind}: observations for search`);
    for (const [i, id] of ids.entries()) {
      for (let k = 0; k < 5; k++) {
        const r = await store.create('Observation', { resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] }, subject: { reference: `Patient/${id}` }, effectiveDateTime: `2024-0${1 + (k % 9)}-1${i % 10}T10:00:00Z`, valueQuantity: { value: 60 + k, unit: '/min' } });
        if (!r.ok) throw new Error(JSON.stringify(r.error));
      }
    }
    progress(`${kind}: read by id at concurrency 8`);
    results.read_c8 = await measure({ count: N * 2, concurrency: 8, maxSeconds: MAX_S, op: async (i) => void (await store.read('Patient', ids[i % ids.length]!)) });
    progress(`${kind}: search Observation?patient= at concurrency 8`);
    results.search_patient_c8 = await measure({
      count: N, concurrency: 8, maxSeconds: MAX_S,
      op: async (i) => {
        const r = await store.search('Observation', [['patient', ids[i % ids.length]!]], { baseUrl: 'http://bench/fhir/R4' });
        if (!r.ok || r.value.entry?.length !== 5) throw new Error('search returned the wrong result');
      },
    });
    const ratio = (c: number) => round(results[`create_c${c}`]!.ops_per_s / results[`raw_insert_c${c}`]!.ops_per_s, 3);
    return {
      backend: kind,
      results,
      ratios: { create_vs_raw_insert_c1: ratio(1), create_vs_raw_insert_c8: ratio(8) },
      targets: {
        'create >= 40% of raw insert (c8)': ratio(8) >= 0.4,
        'read-by-id p99 < 10 ms (c8)': results.read_c8.p99_ms < 10,
      },
    };
  } finally {
    await db.close();
    await cleanup();
  }
}

const out = {
  benchmark: 'records',
  machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version, memory_gb: round(os.totalmem() / 2 ** 30, 1) },
  n: N,
  note: 'create = validation + placement + current/history rows + search index + outbox in one transaction; baseline = INSERT of the same JSON into a plain jsonb table, same driver and pool',
  runs: [await benchBackend('postgres'), ...(args.has('--pglite') ? [await benchBackend('pglite')] : [])],
};
console.log(JSON.stringify(out, null, 2));
