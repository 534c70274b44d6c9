// Retention: old segments leave the database only as signed, self-verifying archive files,
// and the database refuses any deletion that was not exported first.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Db } from '../../db/index.ts';
import { openTestDb, testBackend } from '../../db/test-db.ts';
import { Sm2PrivateKey } from '../crypto/index.ts';
import { AuditLog } from './audit-log.ts';
import { checkArchivedSegments, exportAuditSegments, pruneExportedAudit, verifySegmentFile } from './retention.ts';
import { verifyAuditLog } from './verify.ts';
import { verifyConsistency } from './merkle.ts';

describe(`audit retention (${testBackend()})`, () => {
  let db: Db;
  let log: AuditLog;
  let dir: string;
  const macKey = randomBytes(32);
  const key = Sm2PrivateKey.generate();
  const soon = () => new Date(Date.now() + 60_000); // "older than" a minute from now: everything so far
  const append = (n: number, from: number) =>
    Promise.all(
      Array.from({ length: n }, (_, i) =>
        log.append({
          time: new Date().toISOString(),
          site: 'B',
          actor: { kind: 'user', id: `u${from + i}` },
          action: 'read',
          outcome: 'allow',
          resource: `Patient/p${from + i}`,
        }),
      ),
    );
  const deleteAs = (sql: string) =>
    db.transaction(async (tx) => {
      await tx.query("SELECT set_config('medmesh.audit_prune', 'on', true)");
      await tx.query(sql);
    });

  before(async () => {
    db = await openTestDb();
    log = new AuditLog({ db, macKey, signer: { siteId: 'B', key } });
    dir = await mkdtemp(join(tmpdir(), 'medmesh-audit-archive-'));
    await append(50, 0);
    await log.checkpoint();
    await append(30, 50);
    await log.checkpoint();
    await append(10, 80); // not yet under a checkpoint: stays online
  });
  after(async () => {
    await db.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('refuses to delete anything that was not exported, even when asked to prune', async () => {
    assert.equal(await pruneExportedAudit(db, { olderThan: soon() }), 0);
    await assert.rejects(deleteAs('DELETE FROM audit_entry WHERE seq = 0'), /only exported segments may be pruned/);
  });

  it('exports whole segments between signed checkpoints as files that verify on their own', async () => {
    const segs = await exportAuditSegments({ db, siteId: 'B', signer: key, dir, olderThan: soon(), maxEntriesPerFile: 60 });
    assert.deepEqual(
      segs.map((s) => [s.fromSeq, s.toSeq, s.entries]),
      [
        [0, 49, 50],
        [50, 79, 30],
      ],
    );
    for (const s of segs) {
      const check = await verifySegmentFile(s.file, { signers: [key.publicKey], macKey });
      assert.deepEqual([check.ok, check.entries, check.problems], [true, s.entries, []]);
    }
    assert.equal(
      (await exportAuditSegments({ db, siteId: 'B', signer: key, dir, olderThan: soon() })).length,
      0,
      'nothing new under a checkpoint',
    );
    const wrongKey = await verifySegmentFile(segs[0]!.file, { signers: [Sm2PrivateKey.generate().publicKey] });
    assert.ok(!wrongKey.ok && wrongKey.problems.some((p) => /file signature/.test(p)));
  });

  it('names a changed archive file', async () => {
    const file = join(dir, 'audit-B-000000000000-000000000049.jsonl');
    const lines = (await readFile(file, 'utf8')).split('\n');
    const row = JSON.parse(lines[5]!) as { seq: number; entry: string; mac: string };
    const entry = Buffer.from(row.entry, 'base64').toString('utf8').replace('"allow"', '"deny"');
    lines[5] = JSON.stringify({ ...row, entry: Buffer.from(entry).toString('base64') });
    const copy = join(dir, 'tampered.jsonl');
    await writeFile(copy, lines.join('\n'));
    const check = await verifySegmentFile(copy, { signers: [key.publicKey], macKey });
    assert.equal(check.ok, false);
    assert.ok(check.problems.some((p) => /changed after it was written/.test(p)));
    assert.ok(check.problems.some((p) => /do not hash to the signed root/.test(p)));
    assert.ok(check.problems.some((p) => /failing their MAC: 4$/.test(p)));
  });

  it('prunes only exported entries, and the log still verifies from where the archive ends', async () => {
    assert.equal(await pruneExportedAudit(db, { olderThan: soon() }), 80);
    const { rows } = await db.query<{ first: bigint; n: number }>(
      'SELECT min(seq) AS first, count(*)::int AS n FROM audit_entry',
    );
    assert.deepEqual([Number(rows[0]!.first), rows[0]!.n], [80, 10]);
    await assert.rejects(deleteAs('DELETE FROM audit_entry WHERE seq = 85'), /only exported segments may be pruned/);
    await append(5, 90);
    await log.checkpoint();
    const report = await verifyAuditLog(db, { macKey, signers: [key.publicKey] });
    assert.deepEqual([report.ok, report.archivedBefore, report.entries, report.missing], [true, 80, 15, []]);
    // Peers that cosigned the pruned checkpoints still get consistency proofs (from the checkpoint's frontier).
    const roots = await db.query<{ tree_size: bigint; root: Uint8Array }>(
      'SELECT tree_size, root FROM audit_checkpoint ORDER BY tree_size',
    );
    const [at50, at80, at95] = roots.rows.map((r) => ({ size: Number(r.tree_size), root: Buffer.from(r.root) }));
    assert.deepEqual([at50!.size, at80!.size, at95!.size], [50, 80, 95]);
    assert.ok(verifyConsistency(80, 95, at80!.root, at95!.root, await log.consistencyProof(80, 95)));
    // From inside the pruned prefix the proof needs subtrees of entries no longer stored: refused, not invented.
    await assert.rejects(log.consistencyProof(at50!.size, 95), RangeError);
    const more = await exportAuditSegments({ db, siteId: 'B', signer: key, dir, olderThan: soon() });
    assert.deepEqual(
      more.map((s) => [s.fromSeq, s.toSeq]),
      [[80, 94]],
    );
    assert.ok(
      (await verifySegmentFile(more[0]!.file, { signers: [key.publicKey], macKey })).ok,
      'a later segment continues the tree from the archived frontier',
    );
  });

  it('finds a pruned prefix whose archive files are gone or changed, and one pruned before its time', async () => {
    // Everything pruned here is minutes old: a site whose entries stay online 183 days did not prune it.
    const early = await verifyAuditLog(db, { macKey, signers: [key.publicKey], onlineDays: 183 });
    assert.equal(early.ok, false);
    assert.equal(early.prunedEarly?.before, 80);
    const later = await verifyAuditLog(db, {
      macKey,
      signers: [key.publicKey],
      onlineDays: 183,
      now: new Date(Date.now() + 200 * 86_400_000),
    });
    assert.equal(later.ok, true, JSON.stringify(later));
    const statuses = async (o: { dir?: string } = {}) =>
      (await checkArchivedSegments(db, { signers: [key.publicKey], macKey, ...o })).map((c) => [c.fromSeq, c.status]);
    assert.deepEqual(await statuses(), [
      [0, 'ok'],
      [50, 'ok'],
      [80, 'ok'],
    ]);
    // The archive mounted elsewhere: found by name.
    const moved = await mkdtemp(join(tmpdir(), 'medmesh-audit-worm-'));
    try {
      for (const f of ['000000000000-000000000049', '000000000050-000000000079'])
        await writeFile(join(moved, `audit-B-${f}.jsonl`), await readFile(join(dir, `audit-B-${f}.jsonl`)));
      // One file replaced by another that verifies on its own (a later export of the same range would look like this).
      await writeFile(
        join(moved, 'audit-B-000000000050-000000000079.jsonl'),
        await readFile(join(dir, 'audit-B-000000000000-000000000049.jsonl')),
      );
      const checks = await checkArchivedSegments(db, { signers: [key.publicKey], macKey, dir: moved });
      assert.deepEqual(
        checks.map((c) => [c.fromSeq, c.status]),
        [
          [0, 'ok'],
          [50, 'bad'],
          [80, 'missing'],
        ],
      );
      assert.match(checks[1]!.problems.join(';'), /its SM3 differs from the export record.*covers 0\.\.49/);
    } finally {
      await rm(moved, { recursive: true, force: true });
    }
    // Export records an attacker adds to make a deletion look archived point at no file.
    await db.query(
      `INSERT INTO audit_export (from_seq, to_seq, file_name, file_sm3, checkpoint_tree_size)
       VALUES (95, 99, '/nowhere/audit-B.jsonl', '\\x00', 100)`,
    );
    assert.deepEqual((await statuses()).at(-1), [95, 'missing']);
  });
});
