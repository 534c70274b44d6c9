// The coordination store contract on the embedded store: PGlite (in memory, store instances
// sharing one database, a dead leader shown by a cut link) and PostgreSQL (MEDMESH_TEST_DB=postgres:
// a schema of its own, and a leader in a child process killed with SIGKILL).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { silentLogger } from '../common/index.ts';
import { migrate, openPglite, openPostgres, quoteIdent, type Db } from '../db/index.ts';
import { TEST_POSTGRES_URL, testBackend } from '../db/test-db.ts';
import { coordinationContract } from './coordination.contract.ts';
import { openEmbeddedStore } from './embedded-store.ts';
import { cuttableDb, eventually, spawnCampaigner } from './testing.ts';

const backend = testBackend();
let db: Db;
let schema = '';
const figures: Record<string, number> = {};

before(async () => {
  if (backend === 'postgres') {
    schema = `t_coord_${randomBytes(5).toString('hex')}`;
    db = await openPostgres({ connectionString: TEST_POSTGRES_URL, schema, maxConnections: 8 });
  } else db = await openPglite();
});

after(async () => {
  console.log(`coordination figures (embedded, ${backend}): ${JSON.stringify(figures)}`);
  await db.close();
  if (schema) {
    const admin = new pg.Client({ connectionString: TEST_POSTGRES_URL });
    await admin.connect();
    await admin.query(`DROP SCHEMA IF EXISTS ${quoteIdent(schema)} CASCADE`);
    await admin.end();
  }
});

const log = silentLogger();
const pollMs = 50;

coordinationContract({
  label: `embedded, ${backend}`,
  ttlMs: 1000,
  open: () => openEmbeddedStore({ db, log, pollMs }),
  async openCuttable() {
    const link = cuttableDb(db);
    return { store: await openEmbeddedStore({ db: link.db, log, pollMs }), cut: () => link.cut(), restore: () => link.restore() };
  },
  async revokeLeader(name) {
    await db.query('DELETE FROM coord_leader WHERE name = $1', [name]);
  },
  ...(backend === 'postgres'
    ? {
        spawnCampaigner: (o: { name: string; candidate: string; ttlMs: number }) =>
          spawnCampaigner({ backend: 'postgres', url: TEST_POSTGRES_URL, schema }, o),
      }
    : {}),
  record: (name, value) => (figures[name] = value),
});

describe(`embedded coordination store (${backend})`, () => {
  it('keeps its migrations in a ledger of its own, beside the site migrations or alone', async () => {
    const store = await openEmbeddedStore({ db, log });
    await store.close();
    const { rows } = await db.query<{ version: number; name: string }>('SELECT version, name FROM coordination_migrations');
    assert.deepEqual(rows, [{ version: 1, name: 'coordination' }]);
    // The site's own migrations run on the same database without taking these for unknown ones.
    const site = await migrate(db);
    assert.ok(site.ok, site.ok ? '' : site.error.message);
  });

  it('prunes the change history after its retention time: watches from before it are refused', async () => {
    const store = await openEmbeddedStore({ db, log, historyMs: 40, pollMs });
    try {
      const old = await store.put('prune/k', '1');
      assert.ok(old.ok);
      const { rows } = await db.query<{ n: bigint }>('SELECT count(*)::int8 AS n FROM coord_event WHERE revision = $1', [
        old.value.revision,
      ]);
      assert.equal(rows[0]!.n, 1n);
      await eventually(
        'the change to be pruned',
        async () => (await db.query('SELECT 1 FROM coord_event WHERE revision = $1', [old.value.revision])).rows.length === 0,
      );
      await assert.rejects(
        store.watch('prune/', () => undefined, { fromRevision: old.value.revision }),
        (e: unknown) => e instanceof Error && /compacted/.test(e.message),
      );
      assert.equal((await store.get('prune/k'))!.value, '1', 'values stay; only the history goes');
    } finally {
      await store.close();
    }
  });
});
