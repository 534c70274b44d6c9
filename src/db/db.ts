// One small interface over the two PostgreSQL engines we run on: PGlite (embedded,
// in-process WASM) and a PostgreSQL server through `pg`. Same SQL, same migrations.

export interface QueryResult<R> {
  rows: R[];
  rowCount: number;
}

export interface QueryOptions {
  name?: string;
}

export interface Queryable {
  /** `name` makes a prepared statement on engines that support it (the plan is reused per connection). */
  query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[], opts?: QueryOptions): Promise<QueryResult<R>>;
  /** Runs a script of several statements without parameters (migrations). */
  exec(sql: string): Promise<void>;
}

export type DbKind = 'pglite' | 'postgres';

export interface Db extends Queryable {
  readonly kind: DbKind;
  /** PGlite only: the data directory (absent in memory and for a server). */
  readonly dataDir?: string;
  /**
   * Runs `fn` in one transaction; a thrown error or rejected promise rolls it back. Inside
   * `fn`, only `tx` reaches the database: a query on the Db itself (or a nested transaction)
   * from `fn`'s async context throws TransactionMisuseError (see guard.ts).
   */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  /**
   * Runs `fn` as work bound to `signal`: when it aborts, the work's open transaction is rolled
   * back and its connection given back at once, and it can open no further transaction
   * (WorkAbortedError): a timed-out request cannot hold the database.
   */
  withSignal<T>(signal: AbortSignal, fn: () => T): T;
  /**
   * Runs `fn` as nobody's work: no caller's signal, and on PostgreSQL not inside the caller's
   * transaction either (its queries take a connection of their own). For work on behalf of
   * many (audit appends, the HLC bound: durable before a timestamp is used, whichever writer
   * asked). On PGlite (one connection) a query from inside a transaction is still refused.
   */
  detach<T>(fn: () => T): T;
  /**
   * Starts background work that is not part of the caller's transaction (a cache refreshed on
   * the side, not awaited by the caller): outside the transaction and any request deadline, at
   * once on PostgreSQL, and on PGlite (one connection) once the caller's transaction has ended.
   */
  background<T>(fn: () => Promise<T>): Promise<T>;
  /**
   * Calls `onNotify` for every NOTIFY on this database's channel `name` (delivered after the
   * notifying transaction commits). Best effort: a lost connection is re-established, and
   * callers keep a slower poll for what may be missed meanwhile. Returns the unsubscribe.
   */
  listen(name: string, onNotify: () => void, opts?: { onError?: (e: unknown) => void }): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

/** The notification channel of this database's outbox (per schema: tests share a database). */
export const OUTBOX_CHANNEL = 'medmesh_outbox';

/** int8 comes back as bigint on both engines (HLCs use all 64 bits). */
export const INT8_OID = 20;
