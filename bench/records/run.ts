// bench/records: FHIR create / read / search against a raw jsonb INSERT baseline through
// the same driver and pool, in the same run. Prints one JSON document on stdout.
//   node bench/records/run.ts [--pglite] [--quick]
import { randomBytes, randomUUID } from 'node:crypto';
import os from 'node:os';
import pg from 'pg';
import type { Patient } from '@medplum/fhirtypes';
import { HybridClock } from '../../src/clock/index.ts';
import { migrate, openPglite, openPostgres, pgBoundStore, quoteIdent, type Db } from '../../src/db/index.ts';
import {
  buildSearchParamTable,
  createR4Validator,
  loadFhirDefinitions,
  RecordStore,
  SUPPORTED_TYPES,
} from '../../src/records/index.ts';
import { makeResidentId } from '../../src/region/index.ts';
import { exampleRegion } from '../../src/region/testing.ts';
import { cpuPerOp, cpuSeconds, measure, progress, round, type Measured } from '../harness.ts';

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
    identifier: [
      {
        system: 'urn:oid:2.16.156.10011.1.3',
        value: makeResidentId({ divisionCode: '440106', birthDate: '1980-03-04', sequence: i % 1000 }),
      },
    ],
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
    const store = new RecordStore({
      db,
      region,
      siteId: 'B',
      clock,
      searchParams: buildSearchParamTable(),
      validator: createR4Validator(SUPPORTED_TYPES),
    });
    const bodies = Array.from({ length: N }, (_, i) => patient(i));
    const json = bodies.map((b) => JSON.stringify(b));

    const results: Record<string, Measured & { cpu_per_op?: ReturnType<typeof cpuPerOp> }> = {};
    // Each phase also says where its CPU went (this process, and PostgreSQL when it runs here).
    const phase = async (name: string, what: string, concurrency: number, op: (i: number) => Promise<void>, count = N) => {
      progress(`${kind}: ${what} at concurrency ${concurrency}`);
      const before = cpuSeconds();
      const m = await measure({ count, concurrency, maxSeconds: MAX_S, op });
      results[name] = kind === 'postgres' ? { ...m, cpu_per_op: cpuPerOp(before, cpuSeconds(), m.ops) } : m;
    };
    const rawInsert = (doc: (i: number) => string) => async (i: number) =>
      void (await db.query('INSERT INTO raw_resource (id, content) VALUES ($1, $2::jsonb)', [randomUUID(), doc(i)]));
    const createPatient = async (i: number) => {
      const r = await store.create('Patient', bodies[i]);
      if (!r.ok) throw new Error(JSON.stringify(r.error));
    };
    // Warm-up, not measured: the first phase would otherwise carry the JIT's start.
    progress(`${kind}: warm-up`);
    await measure({ count: 500, concurrency: 8, maxSeconds: 2, op: rawInsert((i) => json[i]!) });
    await measure({ count: 500, concurrency: 8, maxSeconds: 2, op: (i) => createPatient(N - 1 - i) });
    for (const c of [1, 8]) {
      await phase(
        `raw_insert_c${c}`,
        'raw INSERT',
        c,
        rawInsert((i) => json[i]!),
      );
      await phase(`create_c${c}`, 'FHIR create (Patient)', c, createPatient);
    }
    const { rows } = await db.query<{ id: string }>("SELECT id FROM resource_current WHERE resource_type = 'Patient' LIMIT 200");
    const ids = rows.map((r) => r.id);
    progress(`${kind}: observations for search`);
    for (const [i, id] of ids.entries()) {
      for (let k = 0; k < 5; k++) {
        const r = await store.create('Observation', {
          resourceType: 'Observation',
          status: 'final',
          code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
          subject: { reference: `Patient/${id}` },
          effectiveDateTime: `2024-0${1 + (k % 9)}-1${i % 10}T10:00:00Z`,
          valueQuantity: { value: 60 + k, unit: '/min' },
        });
        if (!r.ok) throw new Error(JSON.stringify(r.error));
      }
    }
    await phase('read_c8', 'read by id', 8, async (i) => void (await store.read('Patient', ids[i % ids.length]!)), N * 2);
    await phase('search_patient_c8', 'search Observation?patient=', 8, async (i) => {
      const r = await store.search('Observation', [['patient', ids[i % ids.length]!]], { baseUrl: 'http://bench/fhir/R4' });
      if (!r.ok || r.value.entry?.length !== 5) throw new Error('search returned the wrong result');
    });
    // A patient's own create also writes its EMPI directory entry (a second replicated record);
    // an Observation is one record in its patient's compartment: both, for the comparison.
    const observation = (i: number) => ({
      resourceType: 'Observation' as const,
      status: 'final' as const,
      code: { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }] },
      subject: { reference: `Patient/${ids[i % ids.length]!}` },
      effectiveDateTime: '2024-03-04T10:00:00+08:00',
      valueQuantity: { value: 60 + (i % 40), unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
    });
    const obsJson = JSON.stringify(observation(0));
    await phase(
      'raw_insert_observation_c8',
      'raw INSERT (Observation JSON)',
      8,
      rawInsert(() => obsJson),
    );
    await phase('create_observation_c8', 'FHIR create (Observation)', 8, async (i) => {
      const r = await store.create('Observation', observation(i));
      if (!r.ok) throw new Error(JSON.stringify(r.error));
    });
    const ratio = (c: number) => round(results[`create_c${c}`]!.ops_per_s / results[`raw_insert_c${c}`]!.ops_per_s, 3);
    return {
      backend: kind,
      results,
      ratios: {
        create_vs_raw_insert_c1: ratio(1),
        create_vs_raw_insert_c8: ratio(8),
        create_observation_vs_raw_insert_c8: round(
          results.create_observation_c8!.ops_per_s / results.raw_insert_observation_c8!.ops_per_s,
          3,
        ),
      },
      targets: {
        'create >= 40% of raw insert (c8)': ratio(8) >= 0.4,
        'read-by-id p99 < 10 ms (c8)': results.read_c8!.p99_ms < 10,
      },
    };
  } finally {
    await db.close();
    await cleanup();
  }
}

const out = {
  benchmark: 'records',
  machine: {
    cpus: os.cpus().length,
    cpu: os.cpus()[0]?.model,
    node: process.version,
    memory_gb: round(os.totalmem() / 2 ** 30, 1),
  },
  n: N,
  note:
    'create = validation + placement + current/history rows + search index + outbox in one transaction ' +
    '(a new Patient also its EMPI directory entry); ' +
    'baseline = INSERT of the same JSON into a plain jsonb table, same driver and pool; ' +
    'cpu_per_op = CPU of this process and of the local PostgreSQL server per operation',
  runs: [await benchBackend('postgres'), ...(args.has('--pglite') ? [await benchBackend('pglite')] : [])],
};
console.log(JSON.stringify(out, null, 2));
