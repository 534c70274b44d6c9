// The audit log on PGlite and PostgreSQL: batched gapless appends, signed checkpoints,
// proofs, cosignatures, and verification that names each kind of tampering exactly.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import type { Db } from '../../db/index.ts';
import { loadMigrations, migrate } from '../../db/migrate.ts';
import { openTestDb, testBackend } from '../../db/test-db.ts';
import { Sm2PrivateKey } from '../crypto/index.ts';
import { AuditLog, cosign } from './audit-log.ts';
import { APPEND_LOCK, entryMac } from './appender.ts';
import { auditEventBytes, auditEventSchema, canonicalBytes, type AuditEvent } from './event.ts';
import { rootOf, leafHash, verifyConsistency, verifyInclusion } from './merkle.ts';
import { entryTimeMs, verifyAuditLog } from './verify.ts';

// Entries carry the time they are made, as in the service: verify checks the append time against it.
const startedAt = Date.now();
const event = (i: number): AuditEvent => ({
  time: new Date(startedAt + i).toISOString(),
  site: 'B',
  actor: { kind: 'user', id: `doctor-${i % 7}`, role: 'doctor' },
  action: 'read',
  outcome: i % 10 === 0 ? 'deny' : 'allow',
  purpose: 'treatment',
  resource: `Patient/p${i}`,
  fields: ['name', 'birthDate'],
  sourceIp: '10.1.2.3',
  requestId: `req-${i}`,
});

describe(`audit log (${testBackend()})`, () => {
  let db: Db;
  let log: AuditLog;
  const macKey = randomBytes(32);
  const site = Sm2PrivateKey.generate();
  const verify = (extra: Partial<Parameters<typeof verifyAuditLog>[1]> = {}) =>
    verifyAuditLog(db, { macKey, signers: [site.publicKey], ...extra });
  /** What an attacker with database superuser rights can do: bypass the append-only triggers. */
  const asAttacker = (sql: string, params: unknown[] = []) =>
    db.transaction(async (tx) => {
      await tx.query('SET LOCAL session_replication_role = replica');
      await tx.query(sql, params);
    });

  before(async () => {
    db = await openTestDb();
    log = new AuditLog({ db, macKey, signer: { siteId: 'B', key: site } });
  });
  after(async () => {
    await log.close();
    await db.close();
  });

  it('appends concurrent events with gapless sequence numbers, and refuses malformed ones', async () => {
    const results = await Promise.all(Array.from({ length: 300 }, (_, i) => log.append(event(i))));
    const seqs = results.map((r) => (r.ok ? r.seq : -1)).sort((a, b) => a - b);
    assert.deepEqual(
      seqs,
      Array.from({ length: 300 }, (_, i) => i),
    );
    const bad = await log.append({ ...event(1), outcome: 'maybe' } as unknown as AuditEvent);
    assert.ok(!bad.ok);
    assert.match(bad.error.issues.join(';'), /outcome/);
    const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM audit_entry');
    assert.equal(rows[0]!.n, 300);
  });

  it('signs checkpoints over the Merkle root and proves inclusion and consistency', async () => {
    const c1 = await log.checkpoint();
    assert.equal(c1?.treeSize, 300);
    const { rows } = await db.query<{ entry: Buffer }>('SELECT entry FROM audit_entry ORDER BY seq');
    assert.deepEqual(c1.root, rootOf(rows.map((r) => leafHash(r.entry))));
    assert.match(c1.statement, /"treeSize":300/);
    await Promise.all(Array.from({ length: 77 }, (_, i) => log.append(event(300 + i))));
    const c2 = await log.checkpoint();
    assert.equal(c2?.treeSize, 377);
    assert.equal((await log.checkpoint())?.treeSize, 377, 'no new entries, no new checkpoint');
    const proof = await log.consistencyProof(300, 377);
    assert.ok(verifyConsistency(300, 377, c1.root, c2.root, proof));
    const inc = await log.inclusionProof(123, 377);
    assert.ok(verifyInclusion(inc.leafHash, 123, 377, inc.proof, c2.root));
    const other = Sm2PrivateKey.generate();
    assert.equal(await log.addCosignature(377, 'C', cosign(c2.statement, other), other.publicKey), true);
    assert.equal(await log.addCosignature(377, 'C', cosign('another statement', other), other.publicKey), false);
    const report = await verify({ trusted: { treeSize: 300, root: c1.root } });
    assert.equal(report.ok, true, JSON.stringify(report));
    assert.deepEqual([report.entries, report.checkpoints, report.trusted?.consistent], [377, 2, true]);
  });

  it('refuses UPDATE and DELETE through the normal path', async () => {
    await assert.rejects(db.query("UPDATE audit_entry SET entry = '\\x00' WHERE seq = 1"), /append-only/);
    await assert.rejects(db.query('DELETE FROM audit_entry WHERE seq = 1'), /append-only/);
    await assert.rejects(db.query('DELETE FROM audit_checkpoint'), /append-only/);
  });

  it('names an altered entry, a deleted entry and a forged entry exactly', async () => {
    const forged = Buffer.from(JSON.stringify({ ...event(999), actor: { kind: 'user', id: 'nobody' } }));
    await asAttacker(
      "UPDATE audit_entry SET entry = convert_to(replace(convert_from(entry, 'UTF8'), 'deny', 'allow'), 'UTF8') WHERE seq = 50",
    );
    await asAttacker('DELETE FROM audit_entry WHERE seq IN (200, 201)');
    await asAttacker("INSERT INTO audit_entry (seq, entry, mac, agent) VALUES (377, $1, $2, 'nobody')", [
      forged,
      randomBytes(32),
    ]);
    const report = await verify();
    assert.equal(report.ok, false);
    assert.deepEqual(report.invalidMac, [50, 377]);
    assert.deepEqual(report.missing, [{ from: 200, to: 201 }]);
    assert.deepEqual(report.rootMismatch, [300, 377]);
    assert.deepEqual(report.badSignature, []);
    // Without the MAC key an attacker cannot make a row pass; with a recomputed MAC it still breaks the signed roots.
    await asAttacker('UPDATE audit_entry SET mac = $1 WHERE seq = 50', [
      entryMac(macKey, 50, (await db.query<{ entry: Buffer }>('SELECT entry FROM audit_entry WHERE seq = 50')).rows[0]!.entry),
    ]);
    const again = await verify();
    assert.deepEqual(again.invalidMac, [377]);
    assert.ok(again.rootMismatch.includes(300), 'the signed root still exposes the change');
  });

  it('names entries whose append time was moved (the column date searches and retention read)', async () => {
    // Hidden from a search by date, and made to look old enough to leave the database early.
    await asAttacker("UPDATE audit_entry SET recorded_at = recorded_at - interval '90 days' WHERE seq = 120");
    await asAttacker("UPDATE audit_entry SET recorded_at = recorded_at + interval '1 hour' WHERE seq = 121");
    const report = await verify();
    assert.deepEqual(report.timeMismatch, [120, 121]);
    assert.equal(report.ok, false);
    assert.deepEqual(
      report.rootMismatch.filter((n) => n < 377),
      [300],
      'the bytes of 120 and 121 are intact: only the earlier edit breaks roots',
    );
    assert.equal((await verify({ maxAppendSkewMs: 100 * 86_400_000 })).timeMismatch.length, 0, 'the allowed skew is an option');
    // Within the skew nothing is reported: the entry's own time is a few milliseconds off by nature.
    await asAttacker('UPDATE audit_entry SET recorded_at = to_timestamp($1 / 1000.0) WHERE seq IN (120, 121)', [startedAt + 120]);
    assert.deepEqual((await verify()).timeMismatch, []);
  });

  it('names entries whose search columns were changed to hide them from a search by patient or user', async () => {
    const { rows } = await db.query<{ entity: string | null; agent: string }>(
      'SELECT entity, agent FROM audit_entry WHERE seq = 130',
    );
    assert.deepEqual(rows[0], { entity: 'Patient/p130', agent: 'doctor-4' }, 'the appender fills the columns from the event');
    await asAttacker("UPDATE audit_entry SET entity = 'Patient/elsewhere' WHERE seq = 130");
    await asAttacker("UPDATE audit_entry SET agent = 'someone-else' WHERE seq = 131");
    await asAttacker('UPDATE audit_entry SET entity = NULL WHERE seq = 132');
    const report = await verify();
    assert.deepEqual(report.columnMismatch, [130, 131, 132]);
    assert.equal(report.ok, false);
    assert.ok(!report.invalidMac.includes(130), 'the bytes are intact: only the columns lie');
    await asAttacker(
      "UPDATE audit_entry SET entity = 'Patient/p' || seq, agent = 'doctor-' || (seq % 7) WHERE seq IN (130, 131, 132)",
    );
    assert.deepEqual((await verify()).columnMismatch, []);
  });

  it("reads an entry's own time from its bytes, whatever its strings hold", () => {
    const e = { ...event(7), detail: 'quoted "time":"1999-01-01T00:00:00Z" and time":"2000' };
    assert.equal(entryTimeMs(canonicalBytes(e)), Date.parse(e.time));
    assert.equal(entryTimeMs(new Uint8Array(canonicalBytes(e))), Date.parse(e.time), 'PGlite hands back a Uint8Array');
    assert.equal(entryTimeMs(Buffer.from('{"action":"read"}')), undefined);
    assert.equal(entryTimeMs(Buffer.from('{"time":"yesterday"}')), undefined);
  });

  it('detects a forged checkpoint signature and a truncated tail', async () => {
    await asAttacker(
      'UPDATE audit_checkpoint SET statement = replace(statement, \'"site":"B"\', \'"site":"X"\') WHERE tree_size = 300',
    );
    await asAttacker('DELETE FROM audit_entry WHERE seq >= 370');
    const report = await verify();
    assert.deepEqual(report.badSignature, [300]);
    assert.ok(
      report.missing.some((m) => m.from === 370 && m.to === 376),
      JSON.stringify(report.missing),
    );
  });
});

describe(`audit log with two API nodes (${testBackend()})`, () => {
  let db: Db;
  const macKey = randomBytes(32);
  const site = Sm2PrivateKey.generate();
  const verify = () => verifyAuditLog(db, { macKey, signers: [site.publicKey] });
  let log: AuditLog;
  before(async () => {
    db = await openTestDb();
    log = new AuditLog({ db, macKey, signer: { siteId: 'B', key: site } });
  });
  after(async () => {
    await log.close();
    await db.close();
  });

  it('stays gapless and verifiable when two API nodes of the site append at once', async () => {
    const other = new AuditLog({ db, macKey, signer: { siteId: 'B', key: site } });
    // Both nodes have appended before (each believes it knows where the log ends), then race.
    await log.append(event(1000));
    await other.append(event(1001));
    for (let round = 0; round < 5; round++) {
      const racing = await Promise.all(Array.from({ length: 200 }, (_, i) => (i % 3 ? log : other).append(event(2000 + i))));
      const seqs = racing.map((r) => (r.ok ? r.seq : -1)).sort((a, b) => a - b);
      assert.deepEqual(
        seqs,
        Array.from({ length: 200 }, (_, i) => 2 + round * 200 + i),
        `round ${round}`,
      );
    }
    const report = await verify();
    assert.equal(report.ok, true);
    assert.equal(report.entries, 1002);
    await other.close();
  });
});

describe(`audit appends under faults (${testBackend()})`, () => {
  it(
    'loses nothing it acknowledged when its connections are killed while appending, and carries on',
    { skip: testBackend() !== 'postgres' && 'PGlite has no connections to kill' },
    async () => {
      const db = await openTestDb();
      const macKey = randomBytes(32);
      const key = Sm2PrivateKey.generate();
      const log = new AuditLog({ db, macKey, signer: { siteId: 'B', key } });
      try {
        // openTestDb names its connections after its schema; the killer's own connection is spared.
        const { rows: named } = await db.query<{ app: string }>('SELECT current_setting($1) AS app', ['application_name']);
        const app = named[0]!.app;
        const acknowledged = new Map<number, string>();
        let refused = 0;
        let killed = 0;
        for (let wave = 0; wave < 12; wave++) {
          const appendWave = () =>
            Array.from({ length: 40 }, (_, i) => {
              const e = event(10_000 + wave * 40 + i);
              return log.append(e).then(
                (r) => void (r.ok ? acknowledged.set(r.seq, e.requestId!) : assert.fail(r.error.issues.join('; '))),
                (err: unknown) => {
                  assert.match(String(err), /terminat|connection/i);
                  refused++;
                },
              );
            });
          if (wave % 3 !== 1) {
            await Promise.all(appendWave());
            continue;
          }
          // Every third wave, the log's statements are held in flight (the append lock is taken
          // by a transaction of the test's) and their connections killed meanwhile. The polling runs
          // outside that transaction: inside it, pg_stat_activity would show one cached snapshot.
          let appends: Array<Promise<void>> = [];
          await db.transaction(async (tx) => {
            await tx.query('SELECT pg_advisory_xact_lock($1)', [APPEND_LOCK]);
            appends = appendWave();
            const waiting =
              'SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid() AND wait_event_type = $2';
            // Deliberately beside the transaction (its own connection): Db.detach says so to the guard.
            const beside = <R>(sql: string, params: unknown[]) => db.detach(() => db.query<R>(sql, params));
            for (let tries = 0; (await beside(waiting, [app, 'Lock'])).rows.length === 0; tries++) {
              assert.ok(tries < 500, 'an append statement waits on the lock');
              await new Promise((r) => setTimeout(r, 2));
            }
            const { rows } = await beside<{ n: number }>(
              `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::int AS n FROM (${waiting}) w`,
              [app, 'Lock'],
            );
            killed += rows[0]!.n;
          });
          await Promise.all(appends);
        }
        assert.ok(
          killed >= 4 && refused >= 4,
          `statements in flight were killed: ${killed} connections, ${refused} appends refused`,
        );
        const after = await log.append(event(99_999));
        assert.ok(after.ok, 'the log carries on after its connections were killed');
        const { rows } = await db.query<{ seq: bigint; entry: Buffer }>('SELECT seq, entry FROM audit_entry');
        const stored = new Map(rows.map((r) => [Number(r.seq), (JSON.parse(r.entry.toString('utf8')) as AuditEvent).requestId]));
        for (const [seq, requestId] of acknowledged)
          assert.equal(stored.get(seq), requestId, `acknowledged entry ${seq} is stored as acknowledged`);
        assert.ok(
          stored.size >= acknowledged.size + 1 && stored.size <= 12 * 40 + 1,
          `${stored.size} entries stored, ${acknowledged.size} acknowledged, ${refused} refused`,
        );
        const report = await verifyAuditLog(db, { macKey, signers: [key.publicKey] });
        assert.deepEqual([report.ok, report.missing, report.invalidMac], [true, [], []], 'gapless and intact');
      } finally {
        await log.close();
        await db.close();
      }
    },
  );

  it('refuses appends with the database error while it cannot write, writes nothing of them, and recovers', async () => {
    const db = await openTestDb();
    const macKey = randomBytes(32);
    const log = new AuditLog({ db, macKey, signer: { siteId: 'B', key: Sm2PrivateKey.generate() } });
    try {
      assert.ok((await log.append(event(1))).ok);
      await db.query('ALTER TABLE audit_entry ADD CONSTRAINT refuse_all CHECK (false) NOT VALID');
      const refused = await Promise.allSettled([log.append(event(2)), log.append(event(3))]);
      for (const r of refused) assert.match(r.status === 'rejected' ? String(r.reason) : 'acknowledged', /refuse_all/);
      await db.query('ALTER TABLE audit_entry DROP CONSTRAINT refuse_all');
      const again = await log.append(event(4));
      assert.deepEqual(again, { ok: true, seq: 1 }, 'the next entry follows the last one written: no gap');
      const report = await verifyAuditLog(db, { macKey, signers: [] });
      assert.deepEqual([report.entries, report.missing, report.invalidMac], [2, [], []]);
    } finally {
      await log.close();
      await db.close();
    }
  });
});

describe('canonical bytes of an audit event', () => {
  const text = fc.string({ unit: 'binary', minLength: 1, maxLength: 12 });
  const opt = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: undefined });
  const eventArb: fc.Arbitrary<AuditEvent> = fc.record({
    time: fc.date({ min: new Date('2000-01-01'), max: new Date('2100-01-01'), noInvalidDate: true }).map((d) => d.toISOString()),
    site: text,
    actor: fc.record({ kind: fc.constantFrom('user', 'service', 'anonymous', 'system'), id: text, role: opt(text) }),
    action: fc.constantFrom('read', 'search', 'break-glass', 'admin-read'),
    outcome: fc.constantFrom('allow', 'deny', 'success', 'failure'),
    purpose: opt(text),
    resource: opt(text),
    fields: opt(fc.array(text, { maxLength: 4 })),
    sourceIp: opt(text),
    terminal: opt(text),
    macAddress: opt(text),
    requestId: opt(text),
    breakGlass: opt(fc.record({ reason: text })),
    detail: opt(fc.string({ unit: 'binary', maxLength: 40 })),
  });

  it('writes exactly the bytes the generic canonical form gives, for any valid event', () => {
    fc.assert(
      fc.property(eventArb, (e) => {
        const parsed = auditEventSchema.parse(e); // what append serializes: the validated copy
        assert.deepEqual(auditEventBytes(parsed), canonicalBytes(parsed));
      }),
      { numRuns: 2000 },
    );
  });
});

describe(`audit search columns for entries written before them (${testBackend()})`, () => {
  it('are filled from the bytes of earlier entries by migration 0016, and the log still verifies', async () => {
    const db = await openTestDb({ migrated: false });
    try {
      const all = await loadMigrations();
      assert.ok((await migrate(db, { migrations: all.filter((m) => m.version < 16) })).ok);
      const macKey = randomBytes(32);
      const events = [event(1), { ...event(2), resource: undefined }, event(3)];
      for (const [seq, e] of events.entries()) {
        const bytes = canonicalBytes(e);
        await db.query('INSERT INTO audit_entry (seq, entry, mac) VALUES ($1, $2, $3)', [
          seq,
          bytes,
          entryMac(macKey, seq, bytes),
        ]);
      }
      assert.ok((await migrate(db, { migrations: all })).ok);
      const { rows } = await db.query<{ entity: string | null; agent: string }>(
        'SELECT entity, agent FROM audit_entry ORDER BY seq',
      );
      assert.deepEqual(
        rows.map((r) => ({ ...r })),
        [
          { entity: 'Patient/p1', agent: 'doctor-1' },
          { entity: null, agent: 'doctor-2' },
          { entity: 'Patient/p3', agent: 'doctor-3' },
        ],
      );
      await assert.rejects(db.query("UPDATE audit_entry SET agent = 'x' WHERE seq = 0"), /append-only/, 'the trigger is back on');
      const report = await verifyAuditLog(db, { macKey, signers: [] });
      assert.deepEqual([report.ok, report.columnMismatch, report.invalidMac], [true, [], []]);
    } finally {
      await db.close();
    }
  });
});
