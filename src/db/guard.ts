// What both engines share above their connections: three rules no caller can forget.
//  1. Inside a transaction, the transaction's own connection is the only way to the
//     database. A query on the Db itself (or a nested transaction) from the async context of
//     an open transaction throws TransactionMisuseError: on PGlite (one connection) it would
//     wait forever for the transaction that is waiting for it; on PostgreSQL it reads outside
//     the transaction, holds a second connection and can wait on the transaction's own locks.
//  2. Work run under an AbortSignal (`withSignal`: an HTTP request, with its timeout) stops
//     holding the database when the signal aborts: its open transaction is rolled back and its
//     connection given back at once, and it can open no other (WorkAbortedError). Single
//     queries stay allowed: they hold no connection beyond themselves, and loops that serve
//     many callers (group commit, audit appends) may have been started from aborted work.
//  3. After close, queries throw DbClosedError (not the engine's own message).
import { AsyncLocalStorage } from 'node:async_hooks';
import type { Db, Queryable } from './db.ts';

/** A programming error: a query that does not use the open transaction's connection. */
export class TransactionMisuseError extends Error {
  override name = 'TransactionMisuseError';
}

/** The work's signal aborted (request timeout, site stopping): the database refuses it. */
export class WorkAbortedError extends Error {
  override name = 'WorkAbortedError';
}

/** The database was closed (the site is stopping). */
export class DbClosedError extends Error {
  override name = 'DbClosedError';
}

/** An engine below the guard: its transaction ends (rollback, connection back) when `signal` aborts. */
export interface Engine extends Omit<Db, 'transaction' | 'withSignal' | 'detach' | 'background'> {
  transaction<T>(fn: (tx: Queryable) => Promise<T>, signal: AbortSignal | undefined): Promise<T>;
}

interface Scope {
  /** The transaction whose callback is running in this context, while it runs. */
  tx?: { open: boolean; ended: Promise<void> };
  signal?: AbortSignal;
}

export function guarded(engine: Engine): Db {
  // One store per database: another database's transaction does not make this one's queries wrong.
  const scope = new AsyncLocalStorage<Scope>();
  let closed = false;
  /** Rejects (never throws) when the rules refuse the call; runs it otherwise. */
  const checked = <T>(what: string, opts: { opens?: boolean }, run: () => Promise<T>): Promise<T> => {
    if (closed) return Promise.reject(new DbClosedError('the database is closed (the site is stopping)'));
    const s = scope.getStore();
    if (opts.opens && s?.signal?.aborted) return Promise.reject(new WorkAbortedError(abortReason(s.signal)));
    if (s?.tx?.open)
      return Promise.reject(
        new TransactionMisuseError(
          `${what} on the database while a transaction of the same work is open: use the transaction's connection (tx)`,
        ),
      );
    return run();
  };
  const describe = (sql: string) => `query "${sql.replace(/\s+/g, ' ').slice(0, 80)}"`;
  const db: Db = {
    kind: engine.kind,
    ...(engine.dataDir !== undefined ? { dataDir: engine.dataDir } : {}),
    query: (sql, params, opts) => checked(describe(sql), {}, () => engine.query(sql, params, opts)),
    exec: (sql) => checked('exec', {}, () => engine.exec(sql)),
    transaction: (fn) =>
      checked('a transaction', { opens: true }, () => {
        const outer = scope.getStore();
        return engine.transaction((tx) => {
          let end = () => {};
          const mark = { open: true, ended: new Promise<void>((resolve) => (end = resolve)) };
          return scope.run({ ...outer, tx: mark }, async () => {
            try {
              return await fn(tx);
            } finally {
              mark.open = false; // work it started and left running may use the database from now on
              end();
            }
          });
        }, outer?.signal);
      }),
    detach(fn) {
      const tx = scope.getStore()?.tx;
      return scope.run(engine.kind === 'pglite' && tx ? { tx } : {}, fn);
    },
    background(fn) {
      const tx = scope.getStore()?.tx;
      if (engine.kind === 'pglite' && tx?.open) return tx.ended.then(() => scope.run({}, fn));
      return scope.run({}, fn);
    },
    withSignal(signal, fn) {
      return scope.run({ signal }, fn);
    },
    listen: (name, onNotify, o) => engine.listen(name, onNotify, o),
    async close() {
      closed = true;
      await engine.close();
    },
  };
  return db;
}

export function abortReason(signal: AbortSignal): string {
  const r: unknown = signal.reason;
  return r instanceof Error ? r.message : typeof r === 'string' ? r : 'the work was aborted';
}

/**
 * `work` raced against `signal`: rejects with WorkAbortedError when the signal aborts first
 * (the work itself goes on, its outcome ignored but handled).
 */
export function untilAborted<T>(work: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return work;
  let onAbort = () => {};
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(new WorkAbortedError(abortReason(signal)));
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  });
  // The race handles a later rejection of `work` too.
  return Promise.race([work, aborted]).finally(() => signal.removeEventListener('abort', onAbort));
}
