// Cross-site replication: each site's own changefeed (below the oldest running transaction,
// filtered to what the peer may hold, poison changes parked at the sender), sealed pages on
// per-link keys, pullers with leases, batch apply with the cursor in the same transaction,
// dead letters, link metrics and health, and consistency verification of versions and derived
// state. Needs records (to apply), crypto and identity (to seal and authenticate).
export { backlogAfter, START, BACKLOG_CAP } from './changefeed.ts';
export type { Change, Cursor, FeedPage } from './changefeed.ts';

export type { ApplyContext, ApplyReport } from './apply-batch.ts';
export { sealPage, sealEncoded, openPage, feedAad } from './wire.ts';
export type { EncodedPage, EncodedChange } from './wire.ts';
export { readFeed, listFeedDeadLetters, retryFeedDeadLetter, skipFeedDeadLetter } from './feed.ts';
export type { FeedAnswer, FeedParked, FeedDeadLetter, FeedDeadLetterResult } from './feed.ts';
export { replicationHealth } from './health.ts';
export type { ReplicationHealth, HealthProblem } from './health.ts';
export { Puller } from './puller.ts';
export { ownPositionOf, appliedPositionOf } from './positions.ts';
export type { PullerOptions } from './puller.ts';
export { listDeadLetters, retryDeadLetter, skipDeadLetter } from './dead-letters.ts';
export type { DeadLetter, DeadLetterResult } from './dead-letters.ts';

export { ReplicationMetrics } from './metrics.ts';
export type { LinkState, LinkStatus, PulledReport } from './metrics.ts';

export type { BucketDigest, Leaf, VersionRef, DigestScope } from './digests.ts';
export { verifyPair, localVerifyPeer, watermarkBefore } from './verify.ts';
export type { VerifyPeer, VerifyReport, Divergence, DivergenceKind } from './verify.ts';
export { repairAad } from './verify-client.ts';
export { ConsistencyChecker } from './checker.ts';
export type { CheckerOptions, CheckRequest } from './checker.ts';
export { LinkKeySender, LinkKeyReceiver } from './link-keys.ts';
export type { LinkKey } from './link-keys.ts';
export { SyncGate, recordPeerAck, ACK_CHANNEL } from './peer-acks.ts';
export type { SyncOutcome, SyncGateOptions } from './peer-acks.ts';
