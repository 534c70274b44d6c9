import pg from 'pg';
import type { Db, QueryOptions, QueryResult, Queryable } from './db.ts';
import { INT8_OID } from './db.ts';
import { guarded, untilAborted, WorkAbortedError } from './guard.ts';

export interface PostgresOptions {
  connectionString: string;
  /** Schema to use (search_path); created if missing. */
  schema?: string;
  maxConnections?: number;
  /** Shown in pg_stat_activity (which part of a site a connection belongs to). */
  applicationName?: string;
}

export async function openPostgres(opts: PostgresOptions): Promise<Db> {
  const typeParsers = {
    getTypeParser: ((oid: number, format?: string) =>
      oid === INT8_OID
        ? (v: string) => BigInt(v)
        : (pg.types.getTypeParser(oid, format as 'text') as (v: string) => unknown)) as typeof pg.types.getTypeParser,
  };
  if (opts.schema) {
    const admin = new pg.Client({ connectionString: opts.connectionString });
    await admin.connect();
    try {
      await admin.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(opts.schema)}`);
    } finally {
      await admin.end();
    }
  }
  const pool = new pg.Pool({
    connectionString: opts.connectionString,
    max: opts.maxConnections ?? 10,
    ...(opts.applicationName ? { application_name: opts.applicationName } : {}),
    types: typeParsers,
    ...(opts.schema ? { options: `-c search_path=${opts.schema}` } : {}),
  });
  // An idle client losing its connection must not crash the process; the pool replaces it.
  pool.on('error', () => undefined);
  const run = async <R>(
    q: pg.Pool | pg.PoolClient,
    sql: string,
    params?: readonly unknown[],
    opts?: QueryOptions,
  ): Promise<QueryResult<R>> => {
    const values = params ? [...params] : undefined;
    const r = opts?.name
      ? await q.query({ name: opts.name, text: sql, ...(values ? { values } : {}) })
      : await q.query(sql, values);
    return { rows: r.rows as R[], rowCount: r.rowCount ?? r.rows.length };
  };
  return guarded({
    kind: 'postgres',
    query: (sql, params, opts) => run(pool, sql, params, opts),
    exec: async (sql) => void (await pool.query(sql)),
    async transaction(fn, signal) {
      const connecting = pool.connect();
      let client: pg.PoolClient;
      try {
        client = await untilAborted(connecting, signal);
      } catch (e) {
        if (e instanceof WorkAbortedError)
          void connecting.then(
            (c) => c.release(),
            () => undefined,
          );
        throw e;
      }
      let abandoned = false;
      const live = (): void => {
        if (abandoned) throw new WorkAbortedError('the transaction was ended: its work was aborted');
      };
      const tx: Queryable = {
        query: async (sql, params, opts) => (live(), run(client, sql, params, opts)),
        exec: async (sql) => (live(), void (await client.query(sql))),
      };
      try {
        await client.query('BEGIN');
        const out = await untilAborted(fn(tx), signal);
        await client.query('COMMIT');
        return out;
      } catch (e) {
        if (e instanceof WorkAbortedError && !abandoned) {
          // A statement of the abandoned work may still be running (or waiting on a lock): cancel
          // it, and destroy the connection rather than queue ROLLBACK behind it; the server rolls
          // the transaction back when the connection goes.
          abandoned = true;
          const pid = (client as pg.PoolClient & { processID?: number }).processID;
          if (pid !== undefined) void pool.query('SELECT pg_cancel_backend($1)', [pid]).catch(() => undefined);
          client.release(e);
          throw e;
        }
        await client.query('ROLLBACK').catch(() => undefined);
        throw e;
      } finally {
        if (!abandoned) client.release();
      }
    },
    listen: (name, onNotify, o) =>
      listenOn({
        connectionString: opts.connectionString,
        channel: `${name}_${opts.schema ?? 'public'}`,
        onNotify,
        ...(o?.onError ? { onError: o.onError } : {}),
      }),
    close: () => pool.end(),
  });
}

/** A connection of its own that LISTENs, and comes back after a lost connection. */
async function listenOn(o: {
  connectionString: string;
  channel: string;
  onNotify: () => void;
  /** A lost connection or a failed reconnect (retried every second until it works). */
  onError?: (e: unknown) => void;
}): Promise<() => Promise<void>> {
  let client: pg.Client | undefined;
  let stopped = false;
  let retry: NodeJS.Timeout | undefined;
  const connect = async (): Promise<void> => {
    const c = new pg.Client({ connectionString: o.connectionString });
    c.on('notification', () => o.onNotify());
    c.on('error', (e) => {
      client = undefined;
      o.onError?.(e);
      void c.end().catch(() => undefined); // already broken: its own end may fail too
      again();
    });
    await c.connect();
    await c.query(`LISTEN ${quoteIdent(o.channel)}`);
    client = c;
    o.onNotify(); // whatever happened while not listening
  };
  const again = () => {
    if (!stopped)
      retry = setTimeout(
        () =>
          void connect().catch((e: unknown) => {
            o.onError?.(e);
            again();
          }),
        1000,
      );
  };
  await connect();
  return async () => {
    stopped = true;
    clearTimeout(retry);
    await client?.end().catch(() => undefined);
  };
}

export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}
