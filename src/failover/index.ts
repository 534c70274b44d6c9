// Failover: the witness's per-shard write leases with strictly increasing epochs (fencing
// tokens) and its SM2-signed, SM3-chained votes. Pure logic, no I/O: the vote format and chain
// (verified by the witness and by every site's copy), the lease book that decides grants,
// renewals, claims, planned switchovers and operator-signed failovers over the witness's
// monotonic time, and the holder's stop rule. Needs common, clock, region-shaped shards and crypto.
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
