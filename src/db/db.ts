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
  /** Runs `fn` in one transaction; a thrown error or rejected promise rolls it back. */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

/** int8 comes back as bigint on both engines (HLCs use all 64 bits). */
export const INT8_OID = 20;
