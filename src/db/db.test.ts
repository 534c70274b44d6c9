// Contract tests of the Db interface and migrations; run on PGlite and on PostgreSQL.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Db } from './db.ts';
import { loadMigrations, migrate } from './migrate.ts';
import { claimSiteIdentity } from './open-db.ts';
import { openTestDb, testBackend } from './test-db.ts';
import { boundStoreFor, pgBoundStore } from './hlc-bound-store.ts';
import { openPglite } from './pglite.ts';

describe(`db (${testBackend()})`, () => {
  let db: Db;
  before(async () => {
    db = await openTestDb({ migrated: false });
  });
  after(() => db.close());

  it('applies every migration once, in order, and is idempotent', async () => {
    const first = await migrate(db);
    assert.ok(first.ok);
    const all = await loadMigrations();
    assert.deepEqual(
      first.applied,
      all.map((m) => m.version),
    );
    const again = await migrate(db);
    assert.ok(again.ok);
    assert.deepEqual(again.applied, []);
  });

  it('refuses a migration that changed after it was applied, and one it does not know', async () => {
    const all = await loadMigrations();
    const changed = await migrate(db, { migrations: all.map((m, i) => (i === 0 ? { ...m, sql: `${m.sql}\n-- edited` } : m)) });
    assert.ok(!changed.ok);
    assert.equal(changed.error.kind, 'migration-changed');
    const older = await migrate(db, { migrations: [] });
    assert.ok(!older.ok);
    assert.equal(older.error.kind, 'migration-unknown');
  });

  it('returns int8 as bigint on both engines and rolls back a failed transaction', async () => {
    const { rows } = await db.query<{ v: bigint }>('SELECT $1::bigint AS v', [2n ** 62n + 1n]);
    assert.equal(rows[0]!.v, 2n ** 62n + 1n);
    await assert.rejects(
      db.transaction(async (tx) => {
        await tx.query('INSERT INTO hlc_bound (site_id, upper_ms) VALUES ($1, $2)', ['rollback-me', 1]);
        throw new Error('boom');
      }),
      /boom/,
    );
    const left = await db.query('SELECT 1 FROM hlc_bound WHERE site_id = $1', ['rollback-me']);
    assert.equal(left.rows.length, 0);
  });

  it('binds the database to one site and refuses another', async () => {
    assert.ok((await claimSiteIdentity(db, 'guangdong', 'B')).ok);
    assert.ok((await claimSiteIdentity(db, 'guangdong', 'B')).ok);
    const other = await claimSiteIdentity(db, 'guangdong', 'C');
    assert.ok(!other.ok);
    assert.match(other.error.message, /belongs to site B of region guangdong, not site C/);
  });

  it('persists the HLC bound and never lowers it', async () => {
    const store = pgBoundStore(db, 'B');
    await store.save(1000);
    await store.save(500);
    assert.equal(await store.load(), 1000);
    assert.equal(await pgBoundStore(db, 'unknown').load(), 0);
  });

  it('extends the HLC bound while a write transaction is open, and an embedded site keeps it across restarts', async () => {
    // On PGlite a query outside the open transaction would wait for it: the bound must not need one.
    const store = boundStoreFor(db, 'B');
    await db.transaction(async (tx) => {
      await tx.query('SELECT 1');
      await Promise.race([
        store.save(5000),
        new Promise((_, reject) => setTimeout(() => reject(new Error('the bound store waited for the open transaction')), 5000)),
      ]);
    });
    assert.ok((await store.load()) >= 5000);
    if (testBackend() === 'pglite') {
      const dir = await mkdtemp(join(tmpdir(), 'medmesh-hlc-'));
      try {
        for (const [save, expect] of [
          [7000, 7000],
          [6000, 7000],
        ] as const) {
          const d = await openPglite({ dataDir: join(dir, 'B') });
          await migrate(d);
          const s = boundStoreFor(d, 'B');
          assert.ok((await s.load()) >= (save === 7000 ? 0 : 7000), 'the bound survives a restart');
          await s.save(save);
          assert.equal(await s.load(), expect, 'and never goes down');
          await d.close();
        }
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    }
  });

  it('provides the snapshot functions the changefeed pages by', async () => {
    const { rows } = await db.query<{ ok: boolean }>(
      'SELECT pg_snapshot_xmin(pg_current_snapshot()) <= pg_current_xact_id() AS ok',
    );
    assert.equal(rows[0]!.ok, true);
  });
});
