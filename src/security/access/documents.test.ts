// The policy copy reloads in the background: asked for inside a caller's transaction, the
// reload runs outside it (it waited for PGlite's one connection, or tripped the transaction
// guard as an unhandled rejection, which ends a process); a reload that fails keeps the copy
// in force and is logged, never thrown at nobody.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { LogCounts, silentLogger } from '../../common/index.ts';
import type { Db } from '../../db/index.ts';
import { openTestDb, testBackend } from '../../db/test-db.ts';
import { AccessDocuments } from './documents.ts';

describe(`access documents (${testBackend()})`, () => {
  let db: Db;
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown) => void unhandled.push(e);
  before(async () => {
    db = await openTestDb();
    process.on('unhandledRejection', onUnhandled);
  });
  after(async () => {
    process.off('unhandledRejection', onUnhandled);
    await db.close();
  });
  const until = async (check: () => boolean | Promise<boolean>) => {
    const end = Date.now() + 5000;
    while (!(await check())) {
      assert.ok(Date.now() < end, 'timed out');
      await new Promise((r) => setTimeout(r, 10));
    }
  };

  it('reloads a stale copy outside the caller transaction, without waiting for it', async () => {
    const counts = new LogCounts();
    const docs = await AccessDocuments.open({
      db,
      log: silentLogger(counts).child({ component: 'access-documents' }),
      maxAgeMs: 0,
    });
    await new Promise((r) => setTimeout(r, 5)); // on purpose: the copy ages past maxAgeMs, so it is stale
    const roles = await db.transaction(async (tx) => {
      await tx.query('SELECT 1');
      return [...docs.policies().keys()]; // stale: starts a reload, answers the copy in force
    });
    assert.ok(roles.includes('doctor'));
    await until(() => docs.versionOf('policy', 'doctor') === 1);
    // A quiet moment for a late rejection or warning to show: nothing announces that none will come.
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(unhandled, []);
    assert.deepEqual(counts.entries(), []);
  });

  it('a reload that fails keeps the copy in force, and is logged and counted', async () => {
    const counts = new LogCounts();
    const docs = await AccessDocuments.open({
      db,
      log: silentLogger(counts).child({ component: 'access-documents' }),
      maxAgeMs: 0,
    });
    await db.query('ALTER TABLE access_document RENAME TO access_document_away');
    try {
      await new Promise((r) => setTimeout(r, 5)); // on purpose: the copy goes stale
      assert.ok(docs.policies().has('nurse'), 'decisions go on with the copy in force');
      await until(() => counts.entries().length > 0);
      assert.deepEqual(counts.entries(), [{ component: 'access-documents', level: 'warn', count: 1 }]);
      assert.deepEqual(unhandled, []);
    } finally {
      await db.query('ALTER TABLE access_document_away RENAME TO access_document');
    }
  });
});
