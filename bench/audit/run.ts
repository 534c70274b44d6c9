// bench/audit: batched audit appends on PostgreSQL (many concurrent writers) and full
// verification speed, with a raw single-row INSERT of the same bytes as the baseline.
//   node bench/audit/run.ts [--quick]
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import pg from 'pg';
import { openPostgres, migrate, quoteIdent } from '../../src/db/index.ts';
import { Sm2PrivateKey } from '../../src/security/crypto/index.ts';
import { AuditLog, canonicalBytes, verifyAuditLog, type AuditEvent } from '../../src/security/audit/index.ts';
import { measure, progress, round } from '../harness.ts';

const quick = process.argv.includes('--quick');
const VERIFY_ENTRIES = quick ? 50_000 : 300_000;
const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const schema = `bench_audit_${randomBytes(4).toString('hex')}`;
const db = await openPostgres({ connectionString: url, schema, maxConnections: 8 });
try {
  const m = await migrate(db);
  if (!m.ok) throw new Error(m.error.message);
  await db.query('CREATE TABLE raw_audit (id bigserial PRIMARY KEY, entry bytea NOT NULL)');
  const key = Sm2PrivateKey.generate();
  const macKey = randomBytes(32);
  const log = new AuditLog({ db, macKey, signer: { siteId: 'B', key } });
  const event = (i: number): AuditEvent => ({
    time: new Date().toISOString(),
    site: 'B',
    actor: { kind: 'user', id: `u${i % 50}`, role: 'doctor' },
    action: 'read',
    outcome: 'allow',
    purpose: 'treatment',
    resource: `Patient/${i}`,
    fields: ['name'],
    requestId: `r${i}`,
  });
  const entry = (i: number) => canonicalBytes(event(i));
  const appended = (r: Awaited<ReturnType<AuditLog['append']>>) => {
    if (!r.ok) throw new Error(`append refused: ${r.error.issues.join('; ')}`);
  };
  const seconds = quick ? 1 : 5;
  progress('raw INSERT baseline, 64 writers');
  const raw = await measure({
    count: 10_000_000,
    concurrency: 64,
    maxSeconds: seconds,
    op: async (i) => void (await db.query('INSERT INTO raw_audit (entry) VALUES ($1)', [entry(i)])),
  });
  progress('audit append, 64 concurrent writers (batched)');
  const append = await measure({
    count: 10_000_000,
    concurrency: 64,
    maxSeconds: seconds,
    op: async (i) => void appended(await log.append(event(i))),
  });
  // Verification is measured on a log of a realistic size (a site's log runs to millions of
  // entries): topped up through the same append path, untimed, then verified cold, once.
  const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM audit_entry');
  for (let n = rows[0]!.n; n < VERIFY_ENTRIES; n += 5000) {
    await Promise.all(
      Array.from({ length: Math.min(5000, VERIFY_ENTRIES - n) }, (_, k) => log.append(event(n + k)).then(appended)),
    );
    if (n % 50_000 < 5000) progress(`log at ${n} entries`);
  }
  progress('checkpoint');
  const c = await log.checkpoint();
  progress(`verify (${c?.treeSize ?? 0} entries)`);
  const report = await verifyAuditLog(db, { macKey, signers: [key.publicKey] });
  if (!report.ok) throw new Error(`verification failed on an untouched log: ${JSON.stringify(report).slice(0, 500)}`);
  const verifyRate = report.entries / report.seconds;
  console.log(
    JSON.stringify(
      {
        benchmark: 'audit',
        machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version },
        note:
          'append = the event validated, its canonical bytes, HMAC-SM3 + gapless sequence, group-committed; ' +
          'baseline = one INSERT per entry, same pool, same writers; ' +
          'verify = MACs, Merkle tree and checkpoint signatures over the whole log ' +
          '(topped up to its size through the same append path), cold, with the right key (nothing flagged)',
        append_entries_per_s: append.ops_per_s,
        append_p99_ms: append.p99_ms,
        raw_insert_per_s: raw.ops_per_s,
        ratio_append_vs_raw: round(append.ops_per_s / raw.ops_per_s, 3),
        checkpoint_tree_size: c?.treeSize,
        verify_entries: report.entries,
        verify_seconds: round(report.seconds, 3),
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
