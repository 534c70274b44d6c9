// Test databases: MEDMESH_TEST_DB=pglite (default) or postgres. On PostgreSQL each test
// database is a fresh schema, dropped on close, so tests never see each other's rows.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { Db } from './db.ts';
import { migrate } from './migrate.ts';
import { openPglite } from './pglite.ts';
import { openPostgres, quoteIdent } from './postgres.ts';

export const TEST_POSTGRES_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

export function testBackend(): 'pglite' | 'postgres' {
  return process.env.MEDMESH_TEST_DB === 'postgres' ? 'postgres' : 'pglite';
}

export async function openTestDb(opts: { migrated?: boolean } = {}): Promise<Db> {
  let db: Db;
  if (testBackend() === 'postgres') {
    const schema = `t_${randomBytes(6).toString('hex')}`;
    // Named after the schema, so a fault test can find (and kill) exactly its own connections.
    const inner = await openPostgres({ connectionString: TEST_POSTGRES_URL, schema, maxConnections: 8, applicationName: schema });
    db = {
      ...inner,
      async close() {
        await inner.close();
        const admin = new pg.Client({ connectionString: TEST_POSTGRES_URL });
        await admin.connect();
        await admin.query(`DROP SCHEMA IF EXISTS ${quoteIdent(schema)} CASCADE`);
        await admin.end();
      },
    };
  } else db = await openPglite();
  if (opts.migrated !== false) {
    const r = await migrate(db);
    if (!r.ok) throw new Error(r.error.message);
  }
  return db;
}
