// bench/audit: batched audit appends on PostgreSQL (many concurrent writers) and full
// verification speed, with a raw single-row INSERT of the same bytes as the baseline.
//   node bench/audit/run.ts [--quick]
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import pg from 'pg';
import { openPostgres, migrate, quoteIdent } from '../../src/db/index.ts';
import { Sm2PrivateKey } from '../../src/security/crypto/index.ts';
import { AuditLog, canonicalBytes, verifyAuditLog } from '../../src/security/audit/index.ts';
import { measure, progress, round } from '../harness.ts';

const quick = process.argv.includes('--quick');
const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const schema = `bench_audit_${randomBytes(4).toString('hex')}`;
const db = await openPostgres({ connectionString: url, schema, maxConnections: 8 });
try {
  const m = await migrate(db);
  if (!m.ok) throw new Error(m.error.message);
  await db.query('CREATE TABLE raw_audit (id bigserial PRIMARY KEY, entry bytea NOT NULL)');
  const key = Sm2PrivateKey.generate();
  const log = new AuditLog({ db, macKey: randomBytes(32), signer: { siteId: 'B', key } });
  const entry = (i: number) => canonicalBytes({ time: new Date().toISOString(), site: 'B', actor: { kind: 'user', id: `u${i % 50}`, role: 'doctor' }, action: 'read', outcome: 'allow', purpose: 'treatment', resource: `Patient/${i}`, fields: ['name'], requestId: `r${i}` });
  const seconds = quick ? 1 : 5;
  progress('raw INSERT baseline, 64 writers');
  const raw = await measure({ count: 10_000_000, concurrency: 64, maxSeconds: seconds, op: async (i) => void (await db.query('INSERT INTO raw_audit (entry) VALUES ($1)', [entry(i)])) });
  progress('audit append, 64 concurrent writers (batched)');
  const append = await measure({ count: 10_000_000, concurrency: 64, maxSeconds: seconds, op: async (i) => void (await log.appendBytes(entry(i))) });
  progress('checkpoint');
  const c = await log.checkpoint();
  progress('verify');
  const macKeyUnused = randomBytes(32); // verification speed does not depend on the key
  const report = await verifyAuditLog(db, { macKey: macKeyUnused, signers: [key.publicKey] });
  const verifyRate = report.entries / report.seconds;
  console.log(
    JSON.stringify(
      {
        benchmark: 'audit',
        machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version },
        note: 'append = canonical bytes + HMAC-SM3 + gapless sequence, group-committed; baseline = one INSERT per entry, same pool, same writers',
        append_entries_per_s: append.ops_per_s,
        append_p99_ms: append.p99_ms,
        raw_insert_per_s: raw.ops_per_s,
        ratio_append_vs_raw: round(append.ops_per_s / raw.ops_per_s, 3),
        checkpoint_tree_size: c?.treeSize,
        verify_entries: report.entries,
        verify_entries_per_s: round(verifyRate),
        targets: { 'append >= 10,000/s': append.ops_per_s >= 10_000, 'verify >= 100,000/s': verifyRate >= 100_000 },
      },
      null,
      2,
    ),
  );
} finally {
  await db.close();
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  await c.query(`DROP SCHEMA ${quoteIdent(schema)} CASCADE`);
  await c.end();
}
