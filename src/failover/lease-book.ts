// The witness's decisions: who may write each shard, at which epoch, until when. A pure state
// machine over the verified vote chain plus the witness's monotonic time, which the caller
// passes in (nothing here reads a clock). Each operation answers a vote body to seal, store,
// append and then `apply`, or a typed refusal; a renewal by the holder takes effect at once
// and only now and then yields a summary vote. What the chain records (epochs, holders,
// handovers) is rebuilt exactly by `fromChain`; lease expiries are not in the chain.
//
// One decision at a time: the witness runs decide, seal, store, append and apply for one request
// before the next (and on etcd only the elected witness decides). The chain refuses a second
// transfer at the same epoch anyway, but the book's time checks hold only for the state they saw.
import { err, ok, type Result } from '../common/index.ts';
import { unpackHlc, type Hlc } from '../clock/index.ts';
import type { Sm2PublicKey } from '../security/crypto/index.ts';
import { nextShardRecord, type KeyLookup, type ShardRecord, type VoteChain } from './vote-chain.ts';
import {
  detailOf,
  positionHex,
  positionOf,
  verifyOperatorRequest,
  type Vote,
  type VoteBody,
  type OperatorRequest,
} from './vote.ts';

export interface LeaseBookOptions {
  /** The region's shards; residency in order, the home site first (`Region.shards` fits). */
  shards: readonly { id: string; residency: readonly string[] }[];
  /** Lease duration on the witness's monotonic clock. */
  leaseMs: number;
  /** A standby may claim only if the holder's last known position is at most this far (HLC ms) ahead of its replica. */
  maxLagMs: number;
  /** At most one renew-summary vote per shard this often; renewals in between are counted, not voted. */
  summaryEveryMs: number;
  /** Operators' SM2 public keys, for manual failover and fence approvals. */
  operatorKeys: KeyLookup;
}

export type LeaseRefusalCode =
  | 'bad-input'
  | 'unknown-shard'
  | 'not-residency'
  | 'no-lease'
  | 'not-holder'
  | 'already-holder'
  | 'released'
  | 'fenced'
  | 'lease-unexpired'
  | 'lag-too-large'
  | 'behind-final'
  | 'unknown-operator'
  | 'bad-operator-signature'
  | 'inconsistent';

export interface LeaseRefusal {
  code: LeaseRefusalCode;
  message: string;
  shard?: string;
  /** The shard's current lease as the witness sees it (a refused site learns it is fenced or standby). */
  lease?: LeaseView;
  /** lease-unexpired: how long until a claim can be granted (witness clock). */
  retryInMs?: number;
  /** lag-too-large, behind-final: what was measured. */
  lagMs?: number;
  maxLagMs?: number;
}

/** What the witness answers about a shard's lease. A site times its own lease with `leaseMs` from its send time. */
export interface LeaseView {
  shard: string;
  epoch: number;
  /** null: never granted, or fenced. */
  holder: string | null;
  leaseMs: number;
  /** On the witness's clock; 0 once expired. */
  expiresInMs: number;
  /**
   * 'renewed': the holder renewed since the witness started; 'restart': the witness rebuilt this
   * lease from the chain and counts a whole lease from its own start (it cannot know the holder's
   * last renewal); 'none': never granted.
   */
  basis: 'renewed' | 'restart' | 'none';
  released: { successor: string; finalPosition: Hlc } | null;
  fenced: boolean;
}

/** A decision: a vote body to seal and apply, or (a holder's renewal) the renewed lease and now and then a summary vote. */
export type Decision = { action: 'vote'; vote: VoteBody } | { action: 'renewed'; lease: LeaseView; summary?: VoteBody };

/** The operator's half of a manual failover or fence: who, when, why, and their signature over the request. */
export interface OperatorApproval {
  id: string;
  requestedAt: string;
  reason: string;
  /** SM2 over `operatorStatement` of the request, base64 DER. */
  signature: string;
}

/** The part of a shard's state that is not in the chain: times on this witness's monotonic clock and reports. */
interface Timing {
  expiresAtMono: number;
  basis: 'renewed' | 'restart';
  /** The holder's latest reported position (at least the chain's). */
  position: Hlc;
  renewalsSinceSummary: number;
  lastSummaryMono: number;
  /** Standbys' applied positions as last reported. */
  applied: Map<string, Hlc>;
}

const MAX_HLC = (1n << 64n) - 1n;

/** Lag of a replica at `applied` behind a writer at `holder`, in HLC milliseconds; any shortfall counts at least 1 ms. */
export function lagMs(holder: Hlc, applied: Hlc): number {
  if (applied >= holder) return 0;
  return Math.max(1, unpackHlc(holder).physicalMs - unpackHlc(applied).physicalMs);
}

export class LeaseBook {
  readonly #opts: LeaseBookOptions;
  readonly #residency = new Map<string, readonly string[]>();
  readonly #records = new Map<string, ShardRecord>();
  readonly #timing = new Map<string, Timing>();

  constructor(opts: LeaseBookOptions) {
    for (const [k, v] of [
      ['leaseMs', opts.leaseMs],
      ['maxLagMs', opts.maxLagMs],
      ['summaryEveryMs', opts.summaryEveryMs],
    ] as const) {
      if (!Number.isSafeInteger(v) || v < 0 || (k === 'leaseMs' && v === 0))
        throw new RangeError(
          `lease book: ${k} must be a ${k === 'leaseMs' ? 'positive' : 'non-negative'} integer of ms, got ${v}`,
        );
    }
    for (const s of opts.shards) {
      if (s.residency.length === 0) throw new RangeError(`lease book: shard ${s.id} has no residency site`);
      this.#residency.set(s.id, s.residency);
    }
    this.#opts = opts;
  }

  /**
   * The book a witness starts with: epochs, holders and handovers as the chain records them.
   * Every held lease counts as renewed at `nowMono`: the witness cannot know when the holder last
   * renewed before the restart (its monotonic clock restarted too), only that it was before now,
   * so that lease may still be running until now + leaseMs. No claim is granted before then.
   */
  static fromChain(chain: VoteChain, opts: LeaseBookOptions, nowMono: number): LeaseBook {
    const book = new LeaseBook(opts);
    for (const r of chain.shards()) {
      book.#records.set(r.shard, r);
      book.#timing.set(r.shard, {
        expiresAtMono: nowMono + opts.leaseMs,
        basis: 'restart',
        position: positionOf(r.position),
        renewalsSinceSummary: 0,
        lastSummaryMono: nowMono,
        applied: new Map(),
      });
    }
    return book;
  }

  /** What the chain would say: epochs, holders, handovers, sorted by shard (equal for a live and a rebuilt book). */
  records(): ShardRecord[] {
    return [...this.#records.values()].sort((a, b) => (a.shard < b.shard ? -1 : a.shard > b.shard ? 1 : 0));
  }

  view(shard: string, nowMono: number): LeaseView | undefined {
    if (!this.#residency.has(shard)) return undefined;
    const r = this.#records.get(shard);
    const t = this.#timing.get(shard);
    if (!r || !t)
      return {
        shard,
        epoch: 0,
        holder: null,
        leaseMs: this.#opts.leaseMs,
        expiresInMs: 0,
        basis: 'none',
        released: null,
        fenced: false,
      };
    return {
      shard,
      epoch: r.epoch,
      holder: r.holder,
      leaseMs: this.#opts.leaseMs,
      expiresInMs: Math.max(0, t.expiresAtMono - nowMono),
      basis: t.basis,
      released: r.released ? { successor: r.released.successor, finalPosition: positionOf(r.released.finalPosition) } : null,
      fenced: r.holder === null,
    };
  }

  /** The site that may write `shard` now on the witness's clock: holder of an unexpired lease it has not released. */
  writerAt(shard: string, nowMono: number): string | undefined {
    const r = this.#records.get(shard);
    const t = this.#timing.get(shard);
    return r?.holder && !r.released && t && nowMono < t.expiresAtMono ? r.holder : undefined;
  }

  /**
   * A site asks to keep writing `shard`. The shard's home site gets epoch 1 when nothing was ever
   * granted (a vote); the holder's lease is extended at once (no vote, except a summary now and then).
   */
  renew(shard: string, site: string, report: { position: Hlc }, nowMono: number): Result<Decision, LeaseRefusal> {
    const base = this.#check(shard, site, nowMono, report.position);
    if (!base.ok) return base;
    const { residency, record: r, timing: t } = base.value;
    if (!r || !t) {
      if (site !== residency[0])
        return this.#refuse(
          'no-lease',
          shard,
          nowMono,
          `${shard} was never granted: its home site ${residency[0]} gets it first`,
        );
      return ok({
        action: 'vote',
        vote: { kind: 'grant', shard, site, epoch: 1, detail: { position: positionHex(report.position) } },
      });
    }
    if (r.holder === null) return this.#refuse('fenced', shard, nowMono, `${shard} is fenced by an operator: nobody writes it`);
    if (r.holder !== site)
      return this.#refuse('not-holder', shard, nowMono, `${site} does not hold ${shard}: ${r.holder} does, at epoch ${r.epoch}`);
    if (r.released)
      return this.#refuse('released', shard, nowMono, `${site} released ${shard} to ${r.released.successor}: it writes no more`);
    t.expiresAtMono = Math.max(t.expiresAtMono, nowMono + this.#opts.leaseMs);
    t.basis = 'renewed';
    if (report.position > t.position) t.position = report.position;
    t.renewalsSinceSummary += 1;
    const lease = this.view(shard, nowMono)!;
    if (nowMono - t.lastSummaryMono < this.#opts.summaryEveryMs) return ok({ action: 'renewed', lease });
    const detail = { renewals: t.renewalsSinceSummary, position: positionHex(t.position) };
    return ok({ action: 'renewed', lease, summary: { kind: 'renew-summary', shard, site, epoch: r.epoch, detail } });
  }

  /** A standby tells the witness how far its replica of `shard` is applied (no vote). */
  report(shard: string, site: string, report: { appliedPosition: Hlc }, nowMono: number): Result<LeaseView, LeaseRefusal> {
    const base = this.#check(shard, site, nowMono, report.appliedPosition);
    if (!base.ok) return base;
    const { record: r, timing: t } = base.value;
    if (r && t && (r.holder !== site || r.released)) {
      const was = t.applied.get(site) ?? 0n;
      if (report.appliedPosition > was) t.applied.set(site, report.appliedPosition);
    }
    return ok(this.view(shard, nowMono)!);
  }

  /**
   * A residency standby asks to take `shard` over at epoch + 1. Granted only once the lease expired
   * on the witness's clock and the standby's replica is within `maxLagMs` of the holder's last known
   * position; or at once to the successor a holder released to, once it has applied the final position.
   */
  claim(shard: string, site: string, report: { appliedPosition: Hlc }, nowMono: number): Result<Decision, LeaseRefusal> {
    const base = this.#check(shard, site, nowMono, report.appliedPosition);
    if (!base.ok) return base;
    const { record: r, timing: t } = base.value;
    const applied = report.appliedPosition;
    if (!r || !t) return this.#refuse('no-lease', shard, nowMono, `${shard} was never granted: there is nothing to claim`);
    if (r.holder === null) return this.#refuse('fenced', shard, nowMono, `${shard} is fenced: only a manual failover lifts it`);
    if (r.holder === site && !r.released) return this.#refuse('already-holder', shard, nowMono, `${site} already holds ${shard}`);
    const epoch = r.epoch + 1;
    if (r.released?.successor === site) {
      const final = positionOf(r.released.finalPosition);
      if (applied >= final) {
        const detail = { appliedPosition: positionHex(applied), finalPosition: r.released.finalPosition };
        return ok({ action: 'vote', vote: { kind: 'switchover', shard, site, epoch, detail } });
      }
      if (nowMono < t.expiresAtMono)
        return this.#refuse(
          'behind-final',
          shard,
          nowMono,
          `${site} has not applied ${shard} up to the released final position`,
          {
            lagMs: lagMs(final, applied),
            maxLagMs: 0,
          },
        );
    }
    if (nowMono < t.expiresAtMono) {
      const why = t.basis === 'restart' ? 'the witness restarted and waits a whole lease' : `${r.holder} holds it`;
      return this.#refuse('lease-unexpired', shard, nowMono, `the lease on ${shard} has not expired (${why})`, {
        retryInMs: t.expiresAtMono - nowMono,
      });
    }
    const holderPosition = r.released ? positionOf(r.released.finalPosition) : t.position;
    const lag = lagMs(holderPosition, applied);
    if (lag > this.#opts.maxLagMs)
      return this.#refuse('lag-too-large', shard, nowMono, `${site} is ${lag} ms behind ${shard}'s last known position`, {
        lagMs: lag,
        maxLagMs: this.#opts.maxLagMs,
      });
    const detail = { appliedPosition: positionHex(applied), holderPosition: positionHex(holderPosition), lagMs: lag };
    return ok({ action: 'vote', vote: { kind: 'claim', shard, site, epoch, detail } });
  }

  /**
   * Planned handover: the holder has stopped writing `shard` (drained) at `finalPosition` and names
   * its successor, who may take over at once once its replica has applied that position (zero loss).
   */
  release(
    shard: string,
    site: string,
    handover: { finalPosition: Hlc; successor: string },
    nowMono: number,
  ): Result<Decision, LeaseRefusal> {
    const base = this.#check(shard, site, nowMono, handover.finalPosition);
    if (!base.ok) return base;
    const { residency, record: r, timing: t } = base.value;
    if (handover.successor === site || !residency.includes(handover.successor))
      return this.#refuse('not-residency', shard, nowMono, `the successor must be another residency site of ${shard}`);
    if (!r || !t) return this.#refuse('no-lease', shard, nowMono, `${shard} was never granted`);
    if (r.holder === null) return this.#refuse('fenced', shard, nowMono, `${shard} is fenced`);
    if (r.holder !== site) return this.#refuse('not-holder', shard, nowMono, `${site} does not hold ${shard}`);
    if (r.released) return this.#refuse('released', shard, nowMono, `${site} already released ${shard}`);
    if (handover.finalPosition < t.position)
      return this.#refuse('bad-input', shard, nowMono, `the final position is below the position ${site} already reported`);
    const detail = { finalPosition: positionHex(handover.finalPosition), successor: handover.successor };
    return ok({ action: 'vote', vote: { kind: 'release', shard, site, epoch: r.epoch, detail } });
  }

  /**
   * An operator moves `shard` to `toSite` at epoch + 1, whatever the lag (it is recorded). Not while a
   * holder's lease runs on the witness's clock: fence first, and the failover is granted once it ran out.
   */
  manualFailover(shard: string, toSite: string, approval: OperatorApproval, nowMono: number): Result<Decision, LeaseRefusal> {
    const base = this.#check(shard, toSite, nowMono, 0n);
    if (!base.ok) return base;
    const { record: r, timing: t } = base.value;
    if (r?.holder === toSite && !r.released)
      return this.#refuse('already-holder', shard, nowMono, `${toSite} already holds ${shard}`);
    const fromEpoch = r?.epoch ?? 0;
    const checked = this.#checkApproval({ action: 'manual-failover', shard, toSite, fromEpoch }, approval, nowMono);
    if (!checked.ok) return checked;
    if (r && t && !r.released && nowMono < t.expiresAtMono)
      return this.#refuse('lease-unexpired', shard, nowMono, `a lease on ${shard} may still run: fence it and wait it out`, {
        retryInMs: t.expiresAtMono - nowMono,
      });
    const holderPosition = t ? (r?.released ? positionOf(r.released.finalPosition) : t.position) : 0n;
    const applied = t?.applied.get(toSite);
    const detail = {
      fromEpoch,
      requestedAt: approval.requestedAt,
      reason: approval.reason,
      holderPosition: positionHex(holderPosition),
      ...(applied === undefined ? {} : { appliedPosition: positionHex(applied), lagMs: lagMs(holderPosition, applied) }),
    };
    const operator = { id: approval.id, signature: approval.signature };
    return ok({ action: 'vote', vote: { kind: 'manual-failover', shard, site: toSite, epoch: fromEpoch + 1, detail, operator } });
  }

  /**
   * An operator stops all writes to `shard`: epoch + 1 with no holder. The holder's renewals are
   * refused from now on; its lease still runs out on the witness's clock before anyone else may write.
   */
  fence(shard: string, approval: OperatorApproval, nowMono: number): Result<Decision, LeaseRefusal> {
    if (!this.#residency.has(shard)) return this.#refuse('unknown-shard', shard, nowMono, `no shard ${shard} in the region`);
    const r = this.#records.get(shard);
    if (!r) return this.#refuse('no-lease', shard, nowMono, `${shard} was never granted`);
    if (r.holder === null) return this.#refuse('fenced', shard, nowMono, `${shard} is fenced already`);
    const checked = this.#checkApproval({ action: 'fence', shard, toSite: null, fromEpoch: r.epoch }, approval, nowMono);
    if (!checked.ok) return checked;
    const detail = { fromEpoch: r.epoch, requestedAt: approval.requestedAt, reason: approval.reason };
    const operator = { id: approval.id, signature: approval.signature };
    return ok({ action: 'vote', vote: { kind: 'fence', shard, site: r.holder, epoch: r.epoch + 1, detail, operator } });
  }

  /**
   * A vote the chain accepted (sealed from one of this book's decisions, or any verified vote)
   * takes effect: a new holder's lease starts at `nowMono`. Refused only if the book and the chain
   * disagree, which means a caller skipped a vote.
   */
  apply(vote: Vote, nowMono: number): Result<LeaseView, LeaseRefusal> {
    if (!this.#residency.has(vote.shard)) return this.#refuse('unknown-shard', vote.shard, nowMono, `no shard ${vote.shard}`);
    const next = nextShardRecord(this.#records.get(vote.shard), vote);
    if (!next.ok) return this.#refuse('inconsistent', vote.shard, nowMono, next.error.message);
    const r = next.value;
    this.#records.set(vote.shard, r);
    const t = this.#timing.get(vote.shard);
    switch (vote.kind) {
      case 'grant':
      case 'claim':
      case 'switchover':
      case 'manual-failover':
        this.#timing.set(vote.shard, {
          expiresAtMono: nowMono + this.#opts.leaseMs,
          basis: 'renewed',
          position: positionOf(r.position),
          renewalsSinceSummary: 0,
          lastSummaryMono: nowMono,
          applied: new Map([...(t?.applied ?? [])].filter(([s]) => s !== vote.site)),
        });
        break;
      case 'renew-summary':
        if (t) {
          t.renewalsSinceSummary = Math.max(0, t.renewalsSinceSummary - detailOf({ ...vote, kind: vote.kind }).renewals);
          t.lastSummaryMono = nowMono;
        }
        break;
      case 'release':
        if (t) t.position = positionOf(r.position);
        break;
      case 'fence':
        // The fenced holder's lease keeps its expiry: nobody else writes before it ran out.
        break;
    }
    return ok(this.view(vote.shard, nowMono)!);
  }

  #check(
    shard: string,
    site: string,
    nowMono: number,
    position: Hlc,
  ): Result<{ residency: readonly string[]; record: ShardRecord | undefined; timing: Timing | undefined }, LeaseRefusal> {
    const residency = this.#residency.get(shard);
    if (!residency) return this.#refuse('unknown-shard', shard, nowMono, `no shard ${shard} in the region`);
    if (!Number.isFinite(nowMono)) return this.#refuse('bad-input', shard, nowMono, 'the monotonic time must be a finite number');
    if (position < 0n || position > MAX_HLC) return this.#refuse('bad-input', shard, nowMono, 'a position must be a 64-bit HLC');
    if (!residency.includes(site))
      return this.#refuse(
        'not-residency',
        shard,
        nowMono,
        `${site} is not a residency site of ${shard} (${residency.join(', ')})`,
      );
    return ok({ residency, record: this.#records.get(shard), timing: this.#timing.get(shard) });
  }

  #checkApproval(
    request: Pick<OperatorRequest, 'action' | 'shard' | 'toSite' | 'fromEpoch'>,
    approval: OperatorApproval,
    nowMono: number,
  ): Result<void, LeaseRefusal> {
    const key: Sm2PublicKey | undefined = this.#opts.operatorKeys(approval.id);
    if (!key) return this.#refuse('unknown-operator', request.shard, nowMono, `operator ${approval.id} is not registered`);
    const full: OperatorRequest = {
      ...request,
      operator: approval.id,
      requestedAt: approval.requestedAt,
      reason: approval.reason,
    };
    if (!verifyOperatorRequest(full, approval.signature, key))
      return this.#refuse(
        'bad-operator-signature',
        request.shard,
        nowMono,
        `operator ${approval.id}'s signature does not cover this ${request.action} of ${request.shard} ` +
          `from epoch ${request.fromEpoch}`,
      );
    return ok(undefined);
  }

  #refuse(
    code: LeaseRefusalCode,
    shard: string,
    nowMono: number,
    message: string,
    more: Partial<LeaseRefusal> = {},
  ): { ok: false; error: LeaseRefusal } {
    const lease = this.#residency.has(shard) && Number.isFinite(nowMono) ? this.view(shard, nowMono) : undefined;
    return err({ code, message, shard, ...(lease ? { lease } : {}), ...more });
  }
}
