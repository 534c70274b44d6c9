// Failover (DESIGN.md §6, issue 24). So far: the coordination store the witness keeps its
// state in, behind one interface (CoordinationStore: keys with a global revision,
// compare-and-set, transactions, watches, leader election with fencing tokens) with two
// implementations: embedded on the witness's own database (PGlite or PostgreSQL) and etcd.
// Needs common and db.
export type {
  CampaignOptions,
  CoordinationErrorCode,
  CoordinationStore,
  Entry,
  LeaderInfo,
  Leadership,
  ListPage,
  PutConflict,
  TxnRequest,
  TxnResult,
  Watch,
  WatchEvent,
  WatchOptions,
} from './coordination.ts';
export { CoordinationError } from './coordination.ts';
export { openEmbeddedStore } from './embedded-store.ts';
export type { EmbeddedStoreOptions } from './embedded-store.ts';
export { openEtcdStore } from './etcd-store.ts';
export type { EtcdStoreOptions } from './etcd-store.ts';
export { SAFETY_MARGIN } from './keeper.ts';
