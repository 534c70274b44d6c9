// bench/access: FHIR read-by-id over HTTP with identity, access control, masking and audit
// on, against the same HTTP stack and store with all of it off, in the same run (PostgreSQL).
//   node bench/access/run.ts [--quick]
// "off" is a bare Fastify route calling the record store and answering as the FHIR route does;
// "on" is the site itself: SM2 token (cached verification + revocation lookup), policy
// decision, care-relationship scope in the SQL, masking, and one audit entry per read. At 8
// and 64 clients; the phases rotate round by round to spread machine noise and order effects.
import { silentLogger, silentLogging } from '../../src/common/index.ts';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import Fastify from 'fastify';
import pg from 'pg';
import { openPostgres, quoteIdent } from '../../src/db/index.ts';
import { buildApp, sendResource } from '../../src/http/index.ts';
import { openSite } from '../../src/site/index.ts';
import { buildSearchParamTable } from '../../src/records/index.ts';
import { tokenResolver } from '../../src/http/index.ts';
import { makeResidentId } from '../../src/region/index.ts';
import { exampleRegion } from '../../src/region/testing.ts';
import { Sm2PrivateKey } from '../../src/security/crypto/index.ts';
import { machineBusy, measure, progress, round, type Measured } from '../harness.ts';

const quick = process.argv.includes('--quick');
const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const PATIENTS = quick ? 200 : 2000;
const MAX_S = quick ? 1 : 3;
/** Five rounds: each phase takes each place in the rotation once. */
const ROUNDS = quick ? 1 : 5;
/** Clients in flight: a clinic's handful, and a hospital's morning round. */
const CONCURRENCY = [8, 64];

const schema = `bench_access_${randomBytes(4).toString('hex')}`;
const db = await openPostgres({ connectionString: url, schema, maxConnections: 8 });
const opened = await openSite({
  region: await exampleRegion(),
  siteId: 'B',
  db,
  checkpointEveryMs: 5000,
  logging: silentLogging(),
});
if (!opened.ok) throw new Error(opened.error.message);
const { site } = opened;
try {
  await site.kms.init({
    custodians: ['one', 'two'].map((name) => ({ name, publicKey: Sm2PrivateKey.generate().publicKey })),
    threshold: 2,
  });
  progress(`seeding ${PATIENTS} patients with a cardiology encounter each`);
  const ids: string[] = [];
  for (let i = 0; i < PATIENTS; i++) {
    const p = await site.store.create('Patient', {
      resourceType: 'Patient',
      name: [{ family: '王', given: ['小明'] }],
      gender: 'male',
      birthDate: '1980-03-04',
      telecom: [{ system: 'phone', value: '13800001234' }],
      identifier: [
        {
          system: 'urn:oid:2.16.156.10011.1.3',
          value: makeResidentId({ divisionCode: '440106', birthDate: '1980-03-04', sequence: i % 999 }),
        },
      ],
    });
    if (!p.ok) throw new Error(JSON.stringify(p.error));
    ids.push(p.value.resource.id!);
    await site.store.create('Encounter', {
      resourceType: 'Encounter',
      status: 'finished',
      class: { code: 'AMB' },
      subject: { reference: `Patient/${p.value.resource.id!}` },
      serviceProvider: { reference: 'Organization/cardiology' },
    });
  }
  const on = await site.app.listen({ port: 0, host: '127.0.0.1' });
  const bare = Fastify({ logger: false });
  bare.get<{ Params: { id: string } }>('/fhir/R4/Patient/:id', async (req, reply) => {
    const r = await site.store.read('Patient', req.params.id);
    // Answered as the FHIR route answers (ETag, Last-Modified, FHIR JSON): only access and audit differ.
    return r.ok ? sendResource(reply, 200, r.value) : reply.code(404).send();
  });
  const off = await bare.listen({ port: 0, host: '127.0.0.1' });
  // The same site without the audit hook: how much of the cost is the audit write.
  const unaudited = await buildApp({
    log: silentLogger(),
    access: site.access,
    db,
    kms: site.kms,
    identity: site.identity,
    searchParams: buildSearchParamTable(),
    siteId: 'B',
    regionId: 'bench',
    version: 'bench',
    resolveIdentity: tokenResolver(site.identity),
  });
  const noAudit = await unaudited.listen({ port: 0, host: '127.0.0.1' });
  const tokens = {
    doctor: await login('bench.doctor', ['doctor'], { department: 'cardiology' }),
    nurse: await login('bench.nurse', ['nurse'], { department: 'cardiology' }),
    integration: await login('bench.his', ['integration'], {}),
  };
  const reader = (base: string, token?: string) => async (i: number) => {
    const res = await fetch(
      `${base}/fhir/R4/Patient/${ids[(i * 7919) % ids.length]!}`,
      token ? { headers: { authorization: `Bearer ${token}` } } : {},
    );
    if (res.status !== 200) throw new Error(`read answered ${res.status}`);
    await res.arrayBuffer();
  };
  type Phase = 'off' | 'on_doctor_care_scope' | 'on_nurse_masked' | 'on_integration_all' | 'on_doctor_without_audit';
  const targets: Record<Phase, [string, string | undefined]> = {
    off: [off, undefined],
    on_doctor_care_scope: [on, tokens.doctor],
    on_nurse_masked: [on, tokens.nurse],
    on_integration_all: [on, tokens.integration],
    on_doctor_without_audit: [noAudit, tokens.doctor],
  };
  const order = Object.keys(targets) as Phase[];
  const result: Record<string, unknown> = {
    benchmark: 'access',
    machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version },
    note:
      'read-by-id over HTTP, N concurrent clients in this process; off = bare route over the same store; ' +
      'on = the site with token, policy, scope, masking and audit (one durable entry per read, written before the answer). ' +
      'Phases rotate each round, so no phase always follows the same one; overhead = 1 - on/off reads per second; ' +
      "cpu_us_per_read = the whole machine's busy CPU (client, server, PostgreSQL) per read",
    patients: PATIENTS,
  };
  for (const concurrency of CONCURRENCY) {
    const phases = Object.fromEntries(order.map((k) => [k, [] as Array<Measured & { cpu_us: number }>])) as Record<
      Phase,
      Array<Measured & { cpu_us: number }>
    >;
    const run = async (k: Phase) => {
      const [base, token] = targets[k];
      const before = machineBusy();
      const m = await measure({ count: 10_000_000, concurrency, maxSeconds: MAX_S, op: reader(base, token) });
      return { ...m, cpu_us: ((machineBusy() - before) / Math.max(1, m.ops)) * 1e6 };
    };
    for (const k of order) await run(k); // warm-up: every path compiled and its statements prepared
    for (let r = 0; r < ROUNDS; r++) {
      progress(`c${concurrency}: round ${r + 1}/${ROUNDS}`);
      for (let i = 0; i < order.length; i++) {
        const k = order[(i + r) % order.length]!;
        phases[k].push(await run(k));
      }
    }
    const mean = (ms: Measured[]) => round(ms.reduce((a, m) => a + m.ops_per_s, 0) / ms.length);
    const cpu = (ms: Array<{ cpu_us: number }>) => round(ms.reduce((a, m) => a + m.cpu_us, 0) / ms.length, 0);
    const p99 = (ms: Measured[]) => round(Math.max(...ms.map((m) => m.p99_ms)));
    const offRate = mean(phases.off);
    const level: Record<string, unknown> = {
      off_reads_per_s: offRate,
      off_p99_ms: p99(phases.off),
      off_cpu_us_per_read: cpu(phases.off),
    };
    for (const k of order.slice(1)) {
      const rate = mean(phases[k]);
      level[`${k}_reads_per_s`] = rate;
      level[`${k}_p99_ms`] = p99(phases[k]);
      level[`${k}_overhead`] = round(1 - rate / offRate, 3);
      level[`${k}_cpu_us_per_read`] = cpu(phases[k]);
    }
    result[`c${concurrency}`] = level;
  }
  const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM audit_entry');
  result.audit_entries_written = rows[0]?.n;
  const overheads = CONCURRENCY.map((c) => (result[`c${c}`] as Record<string, number>).on_doctor_care_scope_overhead!);
  result.targets = Object.fromEntries(
    CONCURRENCY.map((c, i) => [`overhead <= 15 % (doctor, care scope, c${c})`, overheads[i]! <= 0.15]),
  );
  console.log(JSON.stringify(result, null, 2));
  await bare.close();
  await unaudited.close();

  async function login(username: string, roles: string[], attributes: Record<string, string>): Promise<string> {
    const created = await site.identity.createUser({ username, password: 'bench-password-2026', roles, attributes });
    if (!created.ok) throw new Error(created.error.message);
    const r = await site.identity.login({ username, password: 'bench-password-2026' });
    if (!r.ok) throw new Error(r.error.message);
    return r.value.accessToken;
  }
} finally {
  await site.close();
  await db.close();
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  await c.query(`DROP SCHEMA ${quoteIdent(schema)} CASCADE`);
  await c.end();
}
