// The database every site keeps its state in: one Db interface over embedded PGlite and a
// PostgreSQL server (same SQL, same migrations), with the transaction guard (a transaction's
// work uses its own connection; aborted work lets go of the database), forward-only migrations,
// the site's identity binding, the HLC bound store and site-wide leases for background work.
// Needs the clock's bound-store contract only.
export type { Db, DbKind, Queryable, QueryOptions, QueryResult } from './db.ts';
export { OUTBOX_CHANNEL } from './db.ts';
export { DbClosedError, TransactionMisuseError, WorkAbortedError } from './guard.ts';
export { openPglite, DataDirInUseError } from './pglite.ts';
export type { PgliteOptions } from './pglite.ts';
export { openPostgres, quoteIdent } from './postgres.ts';
export type { PostgresOptions } from './postgres.ts';
export { openDb, claimSiteIdentity } from './open-db.ts';
export type { OpenDbOptions, SiteIdentityError } from './open-db.ts';
export { migrate, loadMigrations } from './migrate.ts';
export type { Migration, MigrateError } from './migrate.ts';
export { pgBoundStore, boundStoreFor } from './hlc-bound-store.ts';
export { claimLease, releaseLease } from './lease.ts';
