// What a site asks the witness (DESIGN.md §6), whatever carries it: the witness service in
// process (witness.ts), its HTTP client (witness-client.ts). The site's lease keeper depends
// on this interface only. The calling site is the authenticated one (the HTTP layer checks its
// service assertion); `site` in a request must be that site.
import type { Result } from '../common/index.ts';
import type { Hlc } from '../clock/index.ts';
import type { LeaseRefusal, LeaseView, OperatorApproval } from './lease-book.ts';
import type { ChainHead } from './vote-chain.ts';
import type { Vote } from './vote.ts';

/** One shard's answer: the lease as it stands after the request, or why the request was refused (with the lease). */
export type ShardAnswer = { shard: string; ok: true; lease: LeaseView } | { shard: string; ok: false; refusal: LeaseRefusal };

export interface WitnessAnswer {
  answers: ShardAnswer[];
  /** The chain's head after the request: a site whose copy is shorter fetches the rest (chain()). */
  head: ChainHead;
}

export type WitnessErrorCode =
  /** The witness cannot decide now (its store is unreachable, it is starting); retry. */
  | 'unavailable'
  /** Not the acting witness (several run on etcd; one acts): ask `leader`. */
  | 'not-leader'
  /** The caller is not a site the witness trusts, or `site` is not the caller. */
  | 'unauthorized'
  | 'bad-request';

export interface WitnessError {
  code: WitnessErrorCode;
  message: string;
  leader?: string;
}

export interface WitnessApi {
  /** A holder renews its shards (first call: the home site is granted epoch 1), reporting its replication position of each. */
  renew(req: {
    site: string;
    shards: ReadonlyArray<{ shard: string; position: Hlc }>;
  }): Promise<Result<WitnessAnswer, WitnessError>>;
  /** A standby reports how far it has applied each shard's holder (the witness weighs claims by it). */
  report(req: {
    site: string;
    shards: ReadonlyArray<{ shard: string; appliedPosition: Hlc }>;
  }): Promise<Result<WitnessAnswer, WitnessError>>;
  /** A residency standby claims a shard whose lease expired (epoch + 1), if its replica is within the lag allowed. */
  claim(req: { site: string; shard: string; appliedPosition: Hlc }): Promise<Result<WitnessAnswer, WitnessError>>;
  /** Planned switchover: the holder stops writing, names its successor and its final position. */
  release(req: {
    site: string;
    shard: string;
    successor: string;
    finalPosition: Hlc;
  }): Promise<Result<WitnessAnswer, WitnessError>>;
  /** An operator moves a shard by hand (signed approval, after its lease ran out). */
  manualFailover(req: {
    shard: string;
    toSite: string;
    approval: OperatorApproval;
  }): Promise<Result<WitnessAnswer, WitnessError>>;
  /** An operator fences a shard (no holder, epoch + 1). */
  fence(req: { shard: string; approval: OperatorApproval }): Promise<Result<WitnessAnswer, WitnessError>>;
  /** Votes after `after` (a seq), at most `limit`, in order; every site keeps and verifies a copy. */
  chain(req: { after: number; limit?: number }): Promise<Result<{ votes: Vote[]; head: ChainHead }, WitnessError>>;
}
