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
import { DbClosedError, TransactionMisuseError, WorkAbortedError } from './guard.ts';

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

  it('refuses a query on the database itself from inside a transaction (PGlite would wait for it forever)', async () => {
    await db.query("INSERT INTO hlc_bound (site_id, upper_ms) VALUES ('guard', 1) ON CONFLICT DO NOTHING");
    for (const misuse of [
      () => db.query('SELECT 1'),
      () => db.exec('SELECT 1'),
      () => db.transaction((tx) => tx.query('SELECT 1')),
      // Work the transaction starts and awaits is the same work, however deep.
      () => Promise.all([Promise.resolve().then(() => db.query('SELECT 2'))]),
    ]) {
      await assert.rejects(
        db.transaction(async (tx) => {
          await tx.query("UPDATE hlc_bound SET upper_ms = 2 WHERE site_id = 'guard'");
          await misuse();
        }),
        (e: unknown) => e instanceof TransactionMisuseError && /use the transaction's connection/.test(e.message),
      );
      const { rows } = await db.query<{ upper_ms: bigint }>("SELECT upper_ms FROM hlc_bound WHERE site_id = 'guard'");
      assert.equal(rows[0]!.upper_ms, 1n, 'the transaction was rolled back');
    }
    // Work a transaction leaves running may use the database once the transaction is over.
    let later: Promise<unknown> | undefined;
    await db.transaction(async (tx) => {
      await tx.query('SELECT 1');
      later = new Promise((resolve) => setTimeout(resolve, 1)).then(() => db.query('SELECT 3 AS n'));
    });
    assert.deepEqual((await (later as Promise<{ rows: unknown[] }>)).rows, [{ n: 3 }]);
    // Detached work runs beside a transaction on PostgreSQL (own connection), never on PGlite.
    const beside = db.transaction(() => db.detach(() => db.query('SELECT 4 AS n')));
    if (testBackend() === 'postgres') assert.deepEqual((await beside).rows, [{ n: 4 }]);
    else await assert.rejects(beside, TransactionMisuseError);
    // Background work started from inside a transaction, not awaited by it, is never refused: it
    // runs beside it on PostgreSQL, after it on PGlite.
    const order: string[] = [];
    let side: Promise<unknown> | undefined;
    await db.transaction(async (tx) => {
      side = db.background(() => db.query('SELECT 5 AS n')).then((r) => (order.push('background'), r.rows));
      await tx.query('SELECT 1');
      if (testBackend() === 'postgres') await side; // its own connection: done while the transaction is open
      order.push('transaction');
    });
    assert.deepEqual(await side, [{ n: 5 }]);
    assert.deepEqual(order, testBackend() === 'postgres' ? ['background', 'transaction'] : ['transaction', 'background']);
  });

  it('ends the transaction of aborted work at once: rolled back, connection free, no other transaction', async () => {
    await db.query("INSERT INTO hlc_bound (site_id, upper_ms) VALUES ('abort', 1) ON CONFLICT DO NOTHING");
    const controller = new AbortController();
    let stuckTx: { query(sql: string): Promise<unknown> } | undefined;
    let entered!: () => void;
    const inside = new Promise<void>((resolve) => (entered = resolve));
    const work = db.withSignal(controller.signal, () =>
      db.transaction(async (tx) => {
        await tx.query("UPDATE hlc_bound SET upper_ms = 99 WHERE site_id = 'abort'");
        stuckTx = tx;
        entered();
        await new Promise(() => undefined); // never settles: a handler stuck inside its transaction
      }),
    );
    await inside;
    controller.abort(new Error('request timed out'));
    await assert.rejects(work, (e: unknown) => e instanceof WorkAbortedError && /request timed out/.test(e.message));
    // Rolled back and the connection given back (on PGlite this query would otherwise wait forever).
    const { rows } = await db.query<{ upper_ms: bigint }>("SELECT upper_ms FROM hlc_bound WHERE site_id = 'abort'");
    assert.equal(rows[0]!.upper_ms, 1n);
    await assert.rejects(stuckTx!.query('SELECT 1'));
    // The aborted work can open no other transaction; other work is not affected.
    await assert.rejects(
      db.withSignal(controller.signal, () => db.transaction((tx) => tx.query('SELECT 1'))),
      WorkAbortedError,
    );
    await db.transaction((tx) => tx.query('SELECT 1'));
  });

  it(
    'cancels a statement of aborted work that waits on a lock (PostgreSQL)',
    { skip: testBackend() !== 'postgres' },
    async () => {
      await db.query("INSERT INTO hlc_bound (site_id, upper_ms) VALUES ('locked', 1) ON CONFLICT DO NOTHING");
      let release!: () => void;
      const held = new Promise<void>((resolve) => (release = resolve));
      let locked!: () => void;
      const isLocked = new Promise<void>((resolve) => (locked = resolve));
      const holder = db.transaction(async (tx) => {
        await tx.query("SELECT 1 FROM hlc_bound WHERE site_id = 'locked' FOR UPDATE");
        locked();
        await held;
      });
      await isLocked;
      const controller = new AbortController();
      const waiting = db.withSignal(controller.signal, () =>
        db.transaction((tx) => tx.query("UPDATE hlc_bound SET upper_ms = 5 WHERE site_id = 'locked'")),
      );
      // Abort once the statement is really waiting on the lock.
      for (;;) {
        const { rows } = await db.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE hlc_bound%'",
        );
        if (rows[0]!.n > 0) break;
        await new Promise((resolve) => setImmediate(resolve));
      }
      controller.abort(new Error('request timed out'));
      await assert.rejects(waiting, WorkAbortedError);
      for (;;) {
        const { rows } = await db.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE 'UPDATE hlc_bound%' AND state <> 'idle'",
        );
        if (rows[0]!.n === 0) break; // cancelled, not left waiting behind the lock
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      release();
      await holder;
      const { rows } = await db.query<{ upper_ms: bigint }>("SELECT upper_ms FROM hlc_bound WHERE site_id = 'locked'");
      assert.equal(rows[0]!.upper_ms, 1n);
    },
  );
});

describe(`db after close (${testBackend()})`, () => {
  it('answers a query after close with DbClosedError, not the engine message', async () => {
    const db = await openTestDb({ migrated: false });
    await db.close();
    await assert.rejects(db.query('SELECT 1'), DbClosedError);
    await assert.rejects(
      db.transaction((tx) => tx.query('SELECT 1')),
      DbClosedError,
    );
  });
});
