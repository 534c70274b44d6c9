// The witness's votes as a hash chain: every vote names the SM3 of the one before and carries
// the witness's SM2 signature, so a copy at any site can be checked vote by vote. `append`
// refuses, with a typed code, whatever could not have come from the one witness in order:
// forgeries, replays, gaps, a second vote at a held sequence number (a fork: the loudest alarm,
// the witness itself signed two histories) and epochs that do not move forward. The state of
// every shard (epoch, holder, a pending handover) is a pure function of the votes.
import { err, ok, type Result } from '../common/index.ts';
import type { Sm2PrivateKey, Sm2PublicKey } from '../security/crypto/index.ts';
import {
  detailOf,
  GENESIS_PREV,
  OPERATOR_KINDS,
  operatorRequestOf,
  signVote,
  TRANSFER_KINDS,
  verifyOperatorRequest,
  verifyVoteSignature,
  voteHash,
  voteSchema,
  type Vote,
  type VoteBody,
  type VoteDraft,
} from './vote.ts';

export type VoteRefusalCode = 'malformed' | 'forged' | 'replayed' | 'out-of-order' | 'fork' | 'epoch-regression' | 'inconsistent';

/**
 * How loud the caller should be: a replay is what a site fetching the chain twice sees
 * (notice); a fork proves the witness signed two histories (critical); the rest is an alarm.
 */
export type RefusalSeverity = 'notice' | 'alarm' | 'critical';

export interface VoteRefusal {
  code: VoteRefusalCode;
  severity: RefusalSeverity;
  message: string;
  /** The refused vote's sequence number, when it had a readable one. */
  seq?: number;
  /** For a fork or replay: the hash held at that sequence number and the one offered. */
  held?: string;
  offered?: string;
}

/** Public keys by id (a witness may rotate its key; operators each have their own). */
export type KeyLookup = (id: string) => Sm2PublicKey | undefined;

export interface VoteChainOptions {
  witnessKeys: KeyLookup;
  /** When given, the operator's signature in every manual-failover and fence vote is checked too. */
  operatorKeys?: KeyLookup;
}

export interface ChainHead {
  /** 0 for an empty chain. */
  seq: number;
  /** The hash the next vote names as `prev` (64 zeros for an empty chain). */
  hash: string;
}

/** What the chain says about one shard. */
export interface ShardRecord {
  shard: string;
  epoch: number;
  /** null once an operator fenced the shard: nobody may write it until a manual failover. */
  holder: string | null;
  /** The holder's last position the chain knows (16 hex HLC): grant, summaries, release, the new holder's applied position. */
  position: string;
  /** A planned handover in progress: the holder stopped at `finalPosition`; `successor` may take over at once. */
  released?: { successor: string; finalPosition: string };
}

const severityOf: Record<VoteRefusalCode, RefusalSeverity> = {
  malformed: 'alarm',
  forged: 'alarm',
  replayed: 'notice',
  'out-of-order': 'alarm',
  fork: 'critical',
  'epoch-regression': 'alarm',
  inconsistent: 'alarm',
};

const refusal = (code: VoteRefusalCode, message: string, more: Partial<VoteRefusal> = {}): VoteRefusal => ({
  code,
  severity: severityOf[code],
  message,
  ...more,
});

/** The head of a list of votes as they are (for comparing copies); `VoteChain.head` is the verified one. */
export function chainHead(votes: readonly Vote[]): ChainHead {
  const last = votes.at(-1);
  return last ? { seq: last.seq, hash: voteHash(last) } : { seq: 0, hash: GENESIS_PREV };
}

/**
 * The next state of a shard after a vote, or why the vote contradicts the state. One function for
 * the chain and the lease book, so a book rebuilt from the chain holds what the live one held.
 */
export function nextShardRecord(
  prev: ShardRecord | undefined,
  v: VoteBody,
): Result<ShardRecord, { code: 'epoch-regression' | 'inconsistent'; message: string }> {
  const last = prev?.epoch ?? 0;
  const inconsistent = (message: string) =>
    err({ code: 'inconsistent' as const, message: `${v.kind} of ${v.shard}: ${message}` });
  if (TRANSFER_KINDS.has(v.kind)) {
    if (v.epoch <= last)
      return err({
        code: 'epoch-regression',
        message: `${v.kind} of ${v.shard} at epoch ${v.epoch}, but the shard is already at epoch ${last}`,
      });
    const next = (holder: string | null, position: string): ShardRecord => ({ shard: v.shard, epoch: v.epoch, holder, position });
    switch (v.kind) {
      case 'grant':
        if (prev) return inconsistent('a grant is a shard’s first lease; later ones are claims or failovers');
        return ok(next(v.site, detailOf({ ...v, kind: v.kind }).position));
      case 'claim': {
        if (!prev) return inconsistent('no lease to claim');
        if (prev.holder === null) return inconsistent('the shard is fenced: only a manual failover lifts it');
        if (prev.holder === v.site && !prev.released) return inconsistent(`${v.site} already holds it`);
        return ok(next(v.site, detailOf({ ...v, kind: v.kind }).appliedPosition));
      }
      case 'switchover':
        if (!prev?.released) return inconsistent('no release to take over from');
        if (prev.released.successor !== v.site)
          return inconsistent(`the release named ${prev.released.successor}, not ${v.site}`);
        return ok(next(v.site, detailOf({ ...v, kind: v.kind }).appliedPosition));
      case 'manual-failover': {
        const d = detailOf({ ...v, kind: v.kind });
        if (d.fromEpoch !== last) return inconsistent(`approved from epoch ${d.fromEpoch}, but the shard is at epoch ${last}`);
        return ok(next(v.site, d.appliedPosition ?? prev?.position ?? d.holderPosition));
      }
      case 'fence': {
        const d = detailOf({ ...v, kind: v.kind });
        if (!prev || prev.holder === null) return inconsistent('nothing to fence');
        if (prev.holder !== v.site) return inconsistent(`names ${v.site}, but ${prev.holder} holds it`);
        if (d.fromEpoch !== last) return inconsistent(`approved from epoch ${d.fromEpoch}, but the shard is at epoch ${last}`);
        return ok(next(null, prev.position));
      }
      case 'renew-summary':
      case 'release':
        break;
    }
  }
  // A renewal summary or a release speaks for the current holder at the current epoch.
  if (!prev) return inconsistent('no lease');
  if (v.epoch < prev.epoch)
    return err({
      code: 'epoch-regression',
      message: `${v.kind} of ${v.shard} at epoch ${v.epoch}; the shard is at ${prev.epoch}`,
    });
  if (v.epoch > prev.epoch) return inconsistent(`epoch ${v.epoch} was never granted (the shard is at ${prev.epoch})`);
  if (prev.holder !== v.site) return inconsistent(`${v.site} does not hold epoch ${v.epoch} (${prev.holder ?? 'nobody'} does)`);
  if (prev.released) return inconsistent(`${v.site} already released epoch ${v.epoch}`);
  if (v.kind === 'renew-summary') return ok({ ...prev, position: detailOf({ ...v, kind: v.kind }).position });
  if (v.kind === 'release') {
    const d = detailOf({ ...v, kind: v.kind });
    if (d.successor === v.site) return inconsistent('a site cannot hand over to itself');
    return ok({ ...prev, position: d.finalPosition, released: { successor: d.successor, finalPosition: d.finalPosition } });
  }
  return inconsistent('unknown kind');
}

/** A verified chain of votes: the witness's own, or a site's copy of it. */
export class VoteChain {
  readonly #opts: VoteChainOptions;
  readonly #votes: Vote[] = [];
  readonly #hashes: string[] = [];
  readonly #shards = new Map<string, ShardRecord>();

  constructor(opts: VoteChainOptions) {
    this.#opts = opts;
  }

  /** Verifies votes from genesis; the first refusal names its index. */
  static verify(votes: readonly unknown[], opts: VoteChainOptions): Result<VoteChain, VoteRefusal & { index: number }> {
    const chain = new VoteChain(opts);
    for (const [index, v] of votes.entries()) {
      const r = chain.append(v);
      if (!r.ok) return err({ ...r.error, index });
    }
    return ok(chain);
  }

  get head(): ChainHead {
    const seq = this.#votes.length;
    return { seq, hash: this.#hashes[seq - 1] ?? GENESIS_PREV };
  }

  get length(): number {
    return this.#votes.length;
  }

  votes(): readonly Vote[] {
    return this.#votes;
  }

  /** Votes after sequence number `seq` (what a site that holds `seq` votes still needs). */
  votesAfter(seq: number): readonly Vote[] {
    return this.#votes.slice(Math.max(0, seq));
  }

  shard(id: string): ShardRecord | undefined {
    return this.#shards.get(id);
  }

  /** Every shard the chain names, sorted by id. */
  shards(): ShardRecord[] {
    return [...this.#shards.values()].sort((a, b) => (a.shard < b.shard ? -1 : a.shard > b.shard ? 1 : 0));
  }

  /** A body placed after the head: what the witness signs next. */
  draft(body: VoteBody, o: { at: string; witnessKey: string }): VoteDraft {
    const head = this.head;
    return { ...body, seq: head.seq + 1, prev: head.hash, at: o.at, witnessKey: o.witnessKey };
  }

  /**
   * Drafts, signs and checks the next vote without appending it: the witness stores it first
   * (compare-and-set on the head) and appends once the store holds it.
   */
  seal(body: VoteBody, o: { at: string; witnessKey: string; key: Sm2PrivateKey }): Result<Vote, VoteRefusal> {
    const r = this.check(signVote(this.draft(body, o), o.key));
    return r.ok ? ok(r.value.vote) : r;
  }

  /** Everything `append` checks, changing nothing. */
  check(raw: unknown): Result<{ vote: Vote; hash: string; record: ShardRecord }, VoteRefusal> {
    const p = voteSchema.safeParse(raw);
    if (!p.success) {
      const i = p.error.issues[0];
      const seq = (raw as { seq?: unknown } | null)?.seq;
      return err(
        refusal('malformed', `not a vote: ${i?.path.join('.') || '(root)'}: ${i?.message ?? 'invalid'}`, {
          ...(typeof seq === 'number' ? { seq } : {}),
        }),
      );
    }
    const v: Vote = p.data;
    // The signature first: only a vote the witness really signed can prove a fork.
    const key = this.#opts.witnessKeys(v.witnessKey);
    if (!key)
      return err(refusal('forged', `vote ${v.seq} names witness key ${v.witnessKey}, which is not registered`, { seq: v.seq }));
    if (!verifyVoteSignature(v, key))
      return err(refusal('forged', `vote ${v.seq}: the signature is not by witness key ${v.witnessKey}`, { seq: v.seq }));
    if (OPERATOR_KINDS.has(v.kind) && this.#opts.operatorKeys) {
      const request = operatorRequestOf(v)!;
      const opKey = this.#opts.operatorKeys(request.operator);
      if (!opKey) return err(refusal('forged', `vote ${v.seq}: operator ${request.operator} is not registered`, { seq: v.seq }));
      if (!verifyOperatorRequest(request, v.operator!.signature, opKey))
        return err(
          refusal('forged', `vote ${v.seq}: operator ${request.operator}'s signature does not match the request`, { seq: v.seq }),
        );
    }
    const hash = voteHash(v);
    const headSeq = this.#votes.length;
    if (v.seq <= headSeq) {
      const held = this.#hashes[v.seq - 1]!;
      if (held === hash)
        return err(refusal('replayed', `vote ${v.seq} is already in the chain`, { seq: v.seq, held, offered: hash }));
      return err(
        refusal('fork', `FORK: the witness signed a second, different vote ${v.seq}; the chain holds another`, {
          seq: v.seq,
          held,
          offered: hash,
        }),
      );
    }
    if (v.seq > headSeq + 1)
      return err(
        refusal('out-of-order', `vote ${v.seq} arrived, but the chain holds ${headSeq}: votes are missing`, { seq: v.seq }),
      );
    const headHash = this.#hashes[headSeq - 1] ?? GENESIS_PREV;
    if (v.prev !== headHash)
      return err(
        refusal('out-of-order', `vote ${v.seq} follows ${v.prev.slice(0, 16)}…, not the head ${headHash.slice(0, 16)}…`, {
          seq: v.seq,
        }),
      );
    const next = nextShardRecord(this.#shards.get(v.shard), v);
    if (!next.ok) return err(refusal(next.error.code, `vote ${v.seq}: ${next.error.message}`, { seq: v.seq }));
    return ok({ vote: v, hash, record: next.value });
  }

  append(raw: unknown): Result<{ vote: Vote; head: ChainHead }, VoteRefusal> {
    const r = this.check(raw);
    if (!r.ok) return r;
    this.#votes.push(r.value.vote);
    this.#hashes.push(r.value.hash);
    this.#shards.set(r.value.vote.shard, r.value.record);
    return ok({ vote: r.value.vote, head: this.head });
  }
}
