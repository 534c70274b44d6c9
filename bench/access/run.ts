// bench/access: FHIR read-by-id over HTTP with identity, access control, masking and audit
// on, against the same HTTP stack and store with all of it off, in the same run (PostgreSQL).
//   node bench/access/run.ts [--quick]
// "off" is a bare Fastify route calling the record store and answering as the FHIR route does;
// "on" is the site itself: SM2 token (cached verification + revocation lookup), policy
// decision, care-relationship scope in the SQL, masking, and one audit entry per read. Phases
// alternate to spread machine noise.
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import Fastify from 'fastify';
import pg from 'pg';
import { openPostgres, quoteIdent } from '../../src/db/index.ts';
import { buildApp, openSite, sendResource } from '../../src/http/index.ts';
import { buildSearchParamTable } from '../../src/records/index.ts';
import { tokenResolver } from '../../src/http/index.ts';
import { makeResidentId } from '../../src/region/index.ts';
import { exampleRegion } from '../../src/region/testing.ts';
import { Sm2PrivateKey } from '../../src/security/crypto/index.ts';
import { measure, progress, round, type Measured } from '../harness.ts';

const quick = process.argv.includes('--quick');
const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const PATIENTS = quick ? 200 : 2000;
const MAX_S = quick ? 1 : 4;
const ROUNDS = quick ? 1 : 3;
const CONCURRENCY = 8;

const schema = `bench_access_${randomBytes(4).toString('hex')}`;
const db = await openPostgres({ connectionString: url, schema, maxConnections: 8 });
const opened = await openSite({ region: await exampleRegion(), siteId: 'B', db, checkpointEveryMs: 5000 });
if (!opened.ok) throw new Error(opened.error.message);
const { site } = opened;
try {
  await site.kms.init({ custodians: ['one', 'two'].map((name) => ({ name, publicKey: Sm2PrivateKey.generate().publicKey })), threshold: 2 });
  progress(`seeding ${PATIENTS} patients with a cardiology encounter each`);
  const ids: string[] = [];
  for (let i = 0; i < PATIENTS; i++) {
    const p = await site.store.create('Patient', { resourceType: 'Patient', name: [{ family: '王', given: ['小明'] }], gender: 'male', birthDate: '1980-03-04', telecom: [{ system: 'phone', value: '13800001234' }], identifier: [{ system: 'urn:oid:2.16.156.10011.1.3', value: makeResidentId({ divisionCode: '440106', birthDate: '1980-03-04', sequence: i % 999 }) }] });
    if (!p.ok) throw new Error(JSON.stringify(p.error));
    ids.push(p.value.resource.id!);
    await site.store.create('Encounter', { resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: `Patient/${p.value.resource.id!}` }, serviceProvider: { reference: 'Organization/cardiology' } });
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
  const unaudited = await buildApp({ access: site.access, db, kms: site.kms, identity: site.identity, searchParams: buildSearchParamTable(), siteId: 'B', regionId: 'bench', version: 'bench', resolveIdentity: tokenResolver(site.identity) });
  const noAudit = await unaudited.listen({ port: 0, host: '127.0.0.1' });
  const tokens = {
    doctor: await login('bench.doctor', ['doctor'], { department: 'cardiology' }),
    nurse: await login('bench.nurse', ['nurse'], { department: 'cardiology' }),
    integration: await login('bench.his', ['integration'], {}),
  };
  const reader = (base: string, token?: string) => async (i: number) => {
    const res = await fetch(`${base}/fhir/R4/Patient/${ids[(i * 7919) % ids.length]!}`, token ? { headers: { authorization: `Bearer ${token}` } } : {});
    if (res.status !== 200) throw new Error(`read answered ${res.status}`);
    await res.arrayBuffer();
  };
  const phases: Record<string, Measured[]> = { off: [], on_doctor_care_scope: [], on_nurse_masked: [], on_integration_all: [], on_doctor_without_audit: [] };
  const run = (base: string, token?: string) => measure({ count: 10_000_000, concurrency: CONCURRENCY, maxSeconds: MAX_S, op: reader(base, token) });
  await run(off); // warm-up
  await run(on, tokens.doctor);
  for (let r = 0; r < ROUNDS; r++) {
    progress(`round ${r + 1}/${ROUNDS}`);
    phases.off!.push(await run(off));
    phases.on_doctor_care_scope!.push(await run(on, tokens.doctor));
    phases.on_nurse_masked!.push(await run(on, tokens.nurse));
    phases.on_integration_all!.push(await run(on, tokens.integration));
    phases.on_doctor_without_audit!.push(await run(noAudit, tokens.doctor));
  }
  const mean = (ms: Measured[]) => round(ms.reduce((a, m) => a + m.ops_per_s, 0) / ms.length);
  const p99 = (ms: Measured[]) => round(Math.max(...ms.map((m) => m.p99_ms)));
  const offRate = mean(phases.off!);
  const result: Record<string, unknown> = {
    benchmark: 'access',
    machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version },
    note: 'read-by-id over HTTP, 8 concurrent clients on the same machine; off = bare route over the same store; on = the site with token, policy, scope, masking and audit',
    patients: PATIENTS,
    off_reads_per_s: offRate,
    off_p99_ms: p99(phases.off!),
  };
  for (const k of ['on_doctor_care_scope', 'on_nurse_masked', 'on_integration_all', 'on_doctor_without_audit'] as const) {
    const rate = mean(phases[k]!);
    result[`${k}_reads_per_s`] = rate;
    result[`${k}_p99_ms`] = p99(phases[k]!);
    result[`${k}_overhead`] = round(1 - rate / offRate, 3);
  }
  const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM audit_entry');
  result.audit_entries_written = rows[0]?.n;
  result.targets = { 'overhead <= 15 % (doctor, care scope)': (result.on_doctor_care_scope_overhead as number) <= 0.15 };
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
