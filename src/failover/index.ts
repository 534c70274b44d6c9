// Failover (DESIGN.md §6, issue 24): the witness's per-shard write leases with strictly
// increasing epochs (fencing tokens) and its SM2-signed, SM3-chained votes, as pure logic (the
// vote format and chain verified by the witness and by every site's copy; the lease book that
// decides grants, renewals, claims, planned switchovers and operator-signed failovers over the
// witness's monotonic time; the holder's stop rule); and the coordination store the witness
// keeps its state in, behind one interface (keys with a global revision, compare-and-set,
// transactions, watches, leader election with fencing tokens) with two implementations:
// embedded on the witness's own database (PGlite or PostgreSQL) and etcd.
// The witness service over the store (witness.ts: one acts per store, the others answer
// not-leader) and its HTTP client (witness-client.ts), both behind WitnessApi; and the site's
// lease keeper (renews, withdraws at the stop time, claims, keeps the verified chain copy and
// the shard_lease rows the data path fences on).
// Needs common, region, clock, db, security/crypto and security/identity (service assertions).
export {
  VOTE_KINDS,
  TRANSFER_KINDS,
  OPERATOR_KINDS,
  GENESIS_PREV,
  voteSchema,
  voteBytes,
  voteHash,
  signVote,
  verifyVoteSignature,
  operatorStatement,
  signOperatorRequest,
  verifyOperatorRequest,
  positionHex,
  positionOf,
} from './vote.ts';
export type { Vote, VoteDraft, VoteBody, VoteKind, VoteDetail, OperatorSignature, OperatorRequest } from './vote.ts';
export { VoteChain, chainHead } from './vote-chain.ts';
export type {
  VoteChainOptions,
  VoteRefusal,
  VoteRefusalCode,
  RefusalSeverity,
  ChainHead,
  ShardRecord,
  KeyLookup,
} from './vote-chain.ts';
export { LeaseBook, lagMs } from './lease-book.ts';
export type { LeaseBookOptions, LeaseRefusal, LeaseRefusalCode, LeaseView, Decision, OperatorApproval } from './lease-book.ts';
export {
  holderStopAtMono,
  extendStopAtMono,
  mayWrite,
  usableLeaseMs,
  checkLeaseTiming,
  DEFAULT_MAX_DRIFT_RATE,
  DEFAULT_SAFETY_MARGIN_MS,
} from './lease-clock.ts';
export type { LeaseTiming } from './lease-clock.ts';
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
export type { WitnessApi, WitnessAnswer, WitnessError, WitnessErrorCode, ShardAnswer } from './witness-api.ts';
export { epochCuts } from './epoch-cuts.ts';
export type { EpochCutOf } from './epoch-cuts.ts';
export {
  Witness,
  trustSite,
  trustOperator,
  witnessKeyId,
  chainKey,
  loadStoredVotes,
  WITNESS_ELECTION,
  DEFAULT_LEASE_MS,
  DEFAULT_MAX_LAG_MS,
  DEFAULT_SUMMARY_EVERY_MS,
  MAX_CHAIN_PAGE,
} from './witness.ts';
export type { WitnessOptions, LeasesSnapshot } from './witness.ts';
export {
  WITNESS_API_PREFIX,
  renewBody,
  reportBody,
  claimBody,
  releaseBody,
  manualFailoverBody,
  fenceBody,
  chainQuery,
  answerToJson,
  answerOfJson,
  leaseToJson,
  leaseOfJson,
} from './witness-wire.ts';
export type { LeaseViewJson, WitnessAnswerJson } from './witness-wire.ts';
export { WitnessClient } from './witness-client.ts';
export type { WitnessClientOptions } from './witness-client.ts';
export { LeaseKeeper } from './lease-keeper.ts';
export type { LeaseKeeperOptions } from './lease-keeper.ts';
