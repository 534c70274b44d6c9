import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PGlite, types } from '@electric-sql/pglite';
import type { Db, QueryResult, Queryable } from './db.ts';
import { INT8_OID } from './db.ts';
import { guarded, untilAborted } from './guard.ts';

export interface PgliteOptions {
  /** Data directory; omitted = in memory. */
  dataDir?: string;
}

/** Thrown when another live process has the embedded database open. */
export class DataDirInUseError extends Error {}

/**
 * PGlite does not lock its directory; two processes on one directory would corrupt it.
 * A pid lock file refuses the second opener (a stale lock of a dead process is taken over).
 */
async function lockDataDir(dir: string): Promise<() => Promise<void>> {
  const file = join(dir, 'medmesh.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await writeFile(file, String(process.pid), { flag: 'wx' });
      return () => rm(file, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = Number(await readFile(file, 'utf8').catch(() => 'NaN'));
      if (Number.isInteger(pid) && pid !== process.pid && isAlive(pid)) {
        throw new DataDirInUseError(
          `embedded database ${dir} is in use by process ${pid}; ` +
            'stop it first (or use a PostgreSQL server for concurrent access)',
        );
      }
      await rm(file, { force: true });
    }
  }
  throw new DataDirInUseError(`cannot lock embedded database ${dir}`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export async function openPglite(opts: PgliteOptions = {}): Promise<Db> {
  let unlock = async () => {};
  if (opts.dataDir) {
    await mkdir(opts.dataDir, { recursive: true });
    unlock = await lockDataDir(opts.dataDir);
  }
  let pg: PGlite;
  try {
    pg = await PGlite.create({
      ...(opts.dataDir ? { dataDir: opts.dataDir } : {}),
      parsers: { [INT8_OID]: (v: string) => BigInt(v) },
      serializers: { [types.INT8]: (v: unknown) => String(v) },
    });
  } catch (e) {
    await unlock();
    throw e;
  }
  const wrap = (q: Pick<PGlite, 'query' | 'exec'>): Queryable => ({
    async exec(sql: string) {
      await q.exec(sql);
    },
    async query<R>(sql: string, params?: readonly unknown[]): Promise<QueryResult<R>> {
      const r = await q.query<R>(sql, params ? [...params] : undefined);
      return { rows: r.rows, rowCount: r.affectedRows ?? r.rows.length };
    },
  });
  const base = wrap(pg);
  return guarded({
    kind: 'pglite',
    ...(opts.dataDir ? { dataDir: opts.dataDir } : {}),
    query: (sql, params) => base.query(sql, params),
    exec: (sql) => base.exec(sql),
    // Aborted, the callback's promise is abandoned: PGlite rolls back, frees its one connection,
    // and refuses the abandoned work's later queries on tx ("Transaction is closed").
    transaction: (fn, signal) => pg.transaction((tx) => untilAborted(fn(wrap(tx)), signal)),
    listen: async (name, onNotify) => {
      const off = await pg.listen(`${name}_public`, () => onNotify());
      return async () => off();
    },
    close: async () => {
      await pg.close();
      await unlock();
    },
  });
}
