// Forward-only, versioned migrations applied at start. Each file runs once, in order,
// in its own transaction, under an advisory lock so concurrent nodes do not race.
// A folder whose tables may live in a database of their own (the witness's coordination
// store) keeps its own numbered set in its own ledger table, beside the site's or alone.
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import type { Db } from './db.ts';

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export type MigrateError =
  | { kind: 'migration-changed'; version: number; message: string }
  | { kind: 'migration-unknown'; version: number; message: string };

const MIGRATIONS_DIR = new URL('./migrations/', import.meta.url);
const LOCK_KEY = 7_240_611; // arbitrary, stable

export async function loadMigrations(dir: URL = MIGRATIONS_DIR): Promise<Migration[]> {
  const files = (await readdir(dir)).filter((f) => /^\d{4}_[a-z0-9_]+\.sql$/.test(f)).sort();
  return Promise.all(
    files.map(async (f) => ({
      version: Number(f.slice(0, 4)),
      name: f.slice(5, -4),
      sql: await readFile(new URL(f, dir), 'utf8'),
    })),
  );
}

export async function migrate(
  db: Db,
  opts: {
    migrations?: Migration[];
    onApply?: (m: Migration) => void;
    /** The table that records which of `migrations` ran (default schema_migrations, the site's own set). */
    ledger?: string;
  } = {},
): Promise<{ ok: true; applied: number[] } | { ok: false; error: MigrateError }> {
  const ledger = opts.ledger ?? 'schema_migrations';
  if (!/^[a-z][a-z0-9_]{0,62}$/.test(ledger)) throw new RangeError(`migration ledger ${ledger}: expected a lower-case SQL name`);
  const migrations = opts.migrations ?? (await loadMigrations());
  await db.query(`CREATE TABLE IF NOT EXISTS ${ledger} (
    version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`);
  return db.transaction(async (tx) => {
    await tx.query('SELECT pg_advisory_xact_lock($1)', [LOCK_KEY]);
    const { rows } = await tx.query<{ version: number; checksum: string }>(`SELECT version, checksum FROM ${ledger}`);
    const done = new Map(rows.map((r) => [r.version, r.checksum]));
    const known = new Set(migrations.map((m) => m.version));
    for (const v of done.keys()) {
      if (!known.has(v))
        return {
          ok: false,
          error: {
            kind: 'migration-unknown',
            version: v,
            message: `database has migration ${v} that this medmesh does not know: it was created by a newer version`,
          },
        };
    }
    const pending: Array<Migration & { sum: string }> = [];
    for (const m of migrations) {
      const sum = createHash('sha256').update(m.sql).digest('hex');
      const prev = done.get(m.version);
      if (prev === undefined) pending.push({ ...m, sum });
      else if (prev !== sum)
        return {
          ok: false,
          error: {
            kind: 'migration-changed',
            version: m.version,
            message: `migration ${m.version} (${m.name}) changed after it was applied; add a new migration instead`,
          },
        };
    }
    const applied: number[] = [];
    for (const m of pending) {
      opts.onApply?.(m);
      await tx.exec(m.sql);
      await tx.query(`INSERT INTO ${ledger} (version, name, checksum) VALUES ($1, $2, $3)`, [m.version, m.name, m.sum]);
      applied.push(m.version);
    }
    return { ok: true, applied };
  });
}
