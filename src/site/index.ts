// The composition root: one site node assembled from the domains (database, clock, record
// store, KMS, identity, access control, audit log and its witness, replication links and
// checks, imaging and collection) with the HTTP layer in front. It keeps no state that
// matters: everything lives in the database and the blob store. It needs every domain below
// it; only the CLI (and tests) use it.
export { openSite } from './open-site.ts';
export type { Site, SiteOptions, SiteStartError, ReplicationStartOptions } from './open-site.ts';
