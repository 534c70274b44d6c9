// The site's half of the write leases (DESIGN.md §6, issue 24): one keeper per site keeps the
// shard_lease rows (migration 0020) that every fenced write reads inside its own statement.
//
// - Holder (the shard's home site at first, or the site the witness moved it to): renews all its
//   shards in one request every `renewEveryMs`, timing each renewal from its SEND time
//   (holderStopAtMono, lease-clock.ts). A granted renewal writes the row: holder = this site,
//   the epoch, valid_until = the database's clock + what is left until the stop time. When the
//   stop time passes with no renewal granted (the witness unreachable), a timer at the stop time
//   withdraws the row (valid_until = -infinity): the site stops writing on its own monotonic
//   clock before the lease can have expired on the witness's. valid_until is the second guard
//   (a database clock that jumps ahead only shortens it).
// - A renewal refused because another site holds the shard, or it is fenced: the row names the
//   other holder and its epoch (writes here answer 421 to it), and this site stops renewing it.
// - Standby: reports how far it has applied the holder's feed; when the lease expired on the
//   witness's clock and this site is the next residency site after the holder (or the holder
//   released the shard to it and it has applied the final position), it claims; granted, it holds.
// - The vote chain: each answer names the witness's head; the copy in the site's database
//   (chain-copy.ts) fetches and verifies what it lacks, and what the chain says moves the rows too
//   (a returning site learns from it that another site took its shards over).
//
// Every failure is logged and counted; the loop never stops on one, and its timers never keep
// the process alive.
import { reasonOf, type Logger, type Result } from '../common/index.ts';
import type { Hlc } from '../clock/index.ts';
import type { Db } from '../db/index.ts';
import type { Sm2PublicKey } from '../security/crypto/index.ts';
import { ChainCopy } from './chain-copy.ts';
import { epochCuts, type EpochCutOf } from './epoch-cuts.ts';
import type { LeaseView } from './lease-book.ts';
import {
  checkLeaseTiming,
  DEFAULT_MAX_DRIFT_RATE,
  DEFAULT_SAFETY_MARGIN_MS,
  extendStopAtMono,
  type LeaseTiming,
} from './lease-clock.ts';
import type { ChainHead, ShardRecord } from './vote-chain.ts';
import { positionOf, type Vote } from './vote.ts';
import type { ShardAnswer, WitnessAnswer, WitnessApi, WitnessError } from './witness-api.ts';

export interface LeaseKeeperOptions {
  siteId: string;
  /** The shards whose residency includes this site, residency in order (home first): `Region.shards` filtered. */
  shards: ReadonlyArray<{ id: string; residency: readonly string[] }>;
  db: Db;
  witness: WitnessApi;
  /** The witness's public key(s): every vote of the chain copy must be signed with one. */
  witnessKey: Sm2PublicKey | ((keyId: string) => Sm2PublicKey | undefined);
  /** The lease duration the witness grants (the shorter of this and the witness's answer is used). */
  leaseMs: number;
  /** Default leaseMs / 6. */
  renewEveryMs?: number;
  maxDriftRate?: number;
  safetyMarginMs?: number;
  positions: {
    /** This site's position as a writer (its newest outbox HLC). */
    own(): Promise<Hlc>;
    /** How far this site has applied `holder`'s feed (for `shard`). */
    applied(shard: string, holder: string): Promise<Hlc>;
  };
  log: Logger;
  /** Monotonic clock, ms (default performance.now). */
  nowMono?: () => number;
  /**
   * Where the chain ended write epochs (epoch-cuts.ts), each vote's cuts once its lease rows are
   * written (so no local write of the ended epoch is in flight): the site fences the tails out for
   * review (records: recordEpochCuts, idempotent). Called for the stored chain at start too; a
   * failure is logged and retried.
   */
  onEpochCuts?: (cuts: EpochCutOf[]) => Promise<void>;
}

/** What the keeper knows of one shard. */
interface ShardState {
  id: string;
  residency: readonly string[];
  /** As last learned (answer or chain); undefined: nothing learned yet; null: fenced. */
  holder: string | null | undefined;
  epoch: number;
  /** While this site holds the shard: when it stops writing, on its monotonic clock. */
  stopAtMono: number | undefined;
  stopTimer: NodeJS.Timeout | undefined;
  released: { successor: string; finalPosition: Hlc } | null;
  /** A planned handover is under way: no more renewals. */
  handingOver: boolean;
}

type Counter = Map<string, number>;
const bump = (c: Counter, k: string): void => void c.set(k, (c.get(k) ?? 0) + 1);

/** Failures of one kind are logged at most this often (all are counted). */
const REPORT_EVERY_MS = 30_000;

export class LeaseKeeper {
  readonly #o: LeaseKeeperOptions;
  readonly #timing: LeaseTiming;
  readonly #renewEveryMs: number;
  readonly #now: () => number;
  readonly #shards = new Map<string, ShardState>();
  readonly #chain: ChainCopy;
  /** Row writes, one at a time in order: each computes what it writes when it runs. */
  #rows: Promise<void> = Promise.resolve();
  /** Who held each shard after the votes seen so far (epochCuts' running state). */
  readonly #held = new Map<string, { epoch: number; holder: string }>();
  #cutRetry: NodeJS.Timeout | undefined;
  #timer: NodeJS.Timeout | undefined;
  #tick: Promise<void> | undefined;
  #closed = false;
  #started = false;
  /** When the witness last failed to answer, and since when (a streak is logged once per REPORT_EVERY_MS). */
  #down: { since: number; reportedAt: number; failures: number } | undefined;
  readonly #renewals: Counter = new Map();
  readonly #claims: Counter = new Map();
  readonly #refusals: Counter = new Map();
  #withdrawals = 0;

  constructor(o: LeaseKeeperOptions) {
    const timing: LeaseTiming = {
      leaseMs: o.leaseMs,
      maxDriftRate: o.maxDriftRate ?? DEFAULT_MAX_DRIFT_RATE,
      safetyMarginMs: o.safetyMarginMs ?? DEFAULT_SAFETY_MARGIN_MS,
    };
    const renewEveryMs = o.renewEveryMs ?? o.leaseMs / 6;
    const bad = checkLeaseTiming(timing, renewEveryMs);
    if (bad) throw new RangeError(`lease keeper: ${bad}`);
    this.#o = o;
    this.#timing = timing;
    this.#renewEveryMs = renewEveryMs;
    this.#now = o.nowMono ?? (() => performance.now());
    for (const s of o.shards) {
      if (!s.residency.includes(o.siteId)) throw new RangeError(`lease keeper: ${o.siteId} is not a residency site of ${s.id}`);
      this.#shards.set(s.id, {
        id: s.id,
        residency: s.residency,
        holder: undefined,
        epoch: 0,
        stopAtMono: undefined,
        stopTimer: undefined,
        released: null,
        handingOver: false,
      });
    }
    const key = o.witnessKey;
    this.#chain = new ChainCopy({
      db: o.db,
      witness: o.witness,
      witnessKeys: typeof key === 'function' ? key : () => key,
      log: o.log,
      onAlarm: (code) => bump(this.#refusals, code),
      onVote: (vote, record) => this.#fromChain(vote, record),
    });
  }

  /** Loads the chain copy (what it says moves the rows), then renews, reports and claims every renewEveryMs. */
  async start(): Promise<void> {
    if (this.#started) return;
    this.#started = true;
    await this.#chain.load();
    this.#schedule(0);
  }

  /**
   * Stops the loop and every timer; withdraws nothing. Each row already ends at its stop time on
   * the database's clock, so writes stop by themselves when the lease runs out; withdrawing earlier
   * would let no other site write sooner (the witness's expiry decides that), and would cut off
   * another node of this site that shares the database and keeps the leases on.
   */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    for (const s of this.#shards.values()) clearTimeout(s.stopTimer);
    clearTimeout(this.#cutRetry);
    await this.#tick;
    await this.#chain.stop();
    await this.#rows;
  }

  /** The holder of `shard` as this keeper last learned it (RecordsContext.leases). */
  activeSiteFor(shard: string): string | undefined {
    return this.#shards.get(shard)?.holder ?? undefined;
  }

  /** Each shard: holder and epoch as learned, and whether this site may write it now. */
  status(): Array<{ shard: string; holder: string | null; epoch: number; writing: boolean }> {
    const now = this.#now();
    return [...this.#shards.values()].map((s) => ({
      shard: s.id,
      holder: s.holder ?? null,
      epoch: s.epoch,
      writing: s.holder === this.#o.siteId && s.stopAtMono !== undefined && now < s.stopAtMono,
    }));
  }

  /** The verified chain copy: its head and votes. */
  chain(): { head: ChainHead; votes: readonly Vote[] } {
    return { head: this.#chain.head, votes: this.#chain.votes() };
  }

  /**
   * Planned switchover of `shard` to `successor` (zero loss): stops writing it here (the row is
   * withdrawn; writes already past the fence commit first, migration 0020), takes this site's
   * position as the final one and releases the shard to the successor, whose keeper claims it as
   * soon as it has applied that position. Refused or failed, this site takes up renewing again.
   */
  async handOver(shard: string, successor: string): Promise<Result<LeaseView, { message: string }>> {
    const s = this.#shards.get(shard);
    const self = this.#o.siteId;
    if (!s || s.holder !== self || s.released) return { ok: false, error: { message: `${self} does not hold ${shard}` } };
    s.handingOver = true;
    this.#stopWriting(s);
    await this.#writeRows([s.id]);
    const resume = (message: string) => {
      s.handingOver = false;
      return { ok: false as const, error: { message } };
    };
    try {
      const finalPosition = await this.#o.positions.own();
      const r = await this.#o.witness.release({ site: self, shard, successor, finalPosition });
      if (!r.ok) return resume(`the witness did not take the release: ${r.error.message}`);
      this.#chain.noteHead(r.value.head);
      const a = r.value.answers.find((x) => x.shard === shard);
      if (!a) return resume('the witness did not answer for the shard');
      if (!a.ok) {
        if (a.refusal.lease) this.#learn(a.refusal.lease);
        return resume(`the witness refused the release: ${a.refusal.message}`);
      }
      this.#learn(a.lease);
      this.#o.log.info({ shard, successor, finalPosition: finalPosition.toString(16) }, `released ${shard} to ${successor}`);
      return { ok: true, value: a.lease };
    } catch (e) {
      return resume(`release failed: ${reasonOf(e)}`);
    }
  }

  /** Counters in the Prometheus text format, labelled with the site. */
  prometheus(site: string): string {
    const lines: string[] = [];
    const metric = (name: string, help: string, type: 'counter' | 'gauge', rows: Array<[string, number]>) => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [labels, v] of rows) lines.push(`${name}{site="${site}"${labels ? `,${labels}` : ''}} ${v}`);
    };
    const byLabel = (c: Counter, label: string): Array<[string, number]> =>
      [...c].sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, v]) => [`${label}="${k}"`, v]);
    metric(
      'medmesh_witness_vote_refusals_total',
      'Votes of the witness refused by this site (not stored) and heads that contradict its copy: alarms.',
      'counter',
      byLabel(this.#refusals, 'code'),
    );
    metric(
      'medmesh_lease_renewals_total',
      'Lease renewals sent to the witness, by outcome.',
      'counter',
      byLabel(this.#renewals, 'outcome'),
    );
    metric(
      'medmesh_lease_claims_total',
      'Claims of expired leases sent to the witness, by outcome.',
      'counter',
      byLabel(this.#claims, 'outcome'),
    );
    metric('medmesh_lease_withdrawals_total', 'Leases withdrawn at their stop time for want of a renewal.', 'counter', [
      ['', this.#withdrawals],
    ]);
    metric('medmesh_witness_unreachable', '1 while the witness does not answer.', 'gauge', [['', this.#down ? 1 : 0]]);
    const now = this.#now();
    metric(
      'medmesh_lease_writing',
      'Shards this site may write now (holds an unexpired lease of), with their epoch as the value.',
      'gauge',
      [...this.#shards.values()]
        .filter((s) => s.holder === this.#o.siteId && s.stopAtMono !== undefined && now < s.stopAtMono)
        .map((s): [string, number] => [`shard="${s.id}"`, s.epoch]),
    );
    return `${lines.join('\n')}\n`;
  }

  /** One round now (renew, report, claim); the loop calls it every renewEveryMs. Never rejects. */
  async round(): Promise<void> {
    await Promise.all([this.#renewRound(), this.#standbyRound()]).catch((e: unknown) =>
      this.#o.log.error({ err: e }, `lease keeper round failed (the next one runs as usual): ${reasonOf(e)}`),
    );
  }

  #schedule(ms: number): void {
    if (this.#closed) return;
    this.#timer = setTimeout(() => {
      const started = this.#now();
      this.#tick = this.round().finally(() => {
        this.#tick = undefined;
        this.#schedule(Math.max(0, this.#renewEveryMs - (this.#now() - started)));
      });
    }, ms);
    this.#timer.unref();
  }

  /** Shards this site renews: those it holds, and its home shards nobody was learned to hold. */
  #renewing(): ShardState[] {
    const self = this.#o.siteId;
    return [...this.#shards.values()].filter(
      (s) => !s.handingOver && !s.released && (s.holder === self || (s.holder === undefined && s.residency[0] === self)),
    );
  }

  async #renewRound(): Promise<void> {
    const shards = this.#renewing();
    if (!shards.length) return;
    const own = await this.#o.positions.own();
    const sentAt = this.#now();
    const r = await this.#call(() =>
      this.#o.witness.renew({ site: this.#o.siteId, shards: shards.map((s) => ({ shard: s.id, position: own })) }),
    );
    if (!r) return bump(this.#renewals, 'failed');
    for (const a of r.answers) {
      bump(this.#renewals, a.ok ? 'ok' : 'refused');
      this.#take(a, sentAt, 'renewal');
    }
    await this.#writeRows(r.answers.map((a) => a.shard));
  }

  async #standbyRound(): Promise<void> {
    const self = this.#o.siteId;
    const renewing = new Set(this.#renewing().map((s) => s.id));
    const standby = [...this.#shards.values()].filter((s) => !renewing.has(s.id) && !(s.holder === self && !s.released));
    if (!standby.length) return;
    const holderOf = (s: ShardState) => s.holder ?? s.residency[0]!;
    const applied = new Map<string, Hlc>();
    for (const s of standby) applied.set(s.id, await this.#o.positions.applied(s.id, holderOf(s)));
    const r = await this.#call(() =>
      this.#o.witness.report({ site: self, shards: standby.map((s) => ({ shard: s.id, appliedPosition: applied.get(s.id)! })) }),
    );
    if (!r) return;
    for (const a of r.answers) this.#take(a, undefined, 'report');
    await this.#writeRows(r.answers.map((a) => a.shard));
    for (const a of r.answers) {
      const s = this.#shards.get(a.shard);
      const lease = a.ok ? a.lease : a.refusal.lease;
      if (!s || !lease) continue;
      const pos = applied.get(s.id) ?? 0n;
      if (this.#mayClaim(lease, pos)) await this.#claim(s, pos);
    }
  }

  /**
   * Whether this site should claim: the successor named by a release that it has caught up with,
   * or the next site after a holder whose lease expired.
   */
  #mayClaim(lease: LeaseView, applied: Hlc): boolean {
    const self = this.#o.siteId;
    if (lease.holder === null || lease.fenced || lease.basis === 'none') return false;
    if (lease.released) return lease.released.successor === self && applied >= lease.released.finalPosition;
    if (lease.holder === self || lease.expiresInMs > 0) return false;
    const residency = this.#shards.get(lease.shard)?.residency ?? [];
    const i = residency.indexOf(lease.holder);
    return i >= 0 && residency[(i + 1) % residency.length] === self;
  }

  async #claim(s: ShardState, appliedPosition: Hlc): Promise<void> {
    const sentAt = this.#now();
    const r = await this.#call(() => this.#o.witness.claim({ site: this.#o.siteId, shard: s.id, appliedPosition }));
    if (!r) return bump(this.#claims, 'failed');
    for (const a of r.answers) {
      bump(this.#claims, a.ok ? 'granted' : 'refused');
      if (a.ok) this.#o.log.warn({ shard: a.shard, epoch: a.lease.epoch }, `took ${a.shard} over at epoch ${a.lease.epoch}`);
      else this.#o.log.info({ shard: a.shard, code: a.refusal.code }, `claim of ${a.shard} refused: ${a.refusal.message}`);
      this.#take(a, sentAt, 'claim');
    }
    await this.#writeRows(r.answers.map((a) => a.shard));
  }

  /**
   * Calls the witness; its answer's head goes to the chain copy. A failure is counted and logged
   * (once per streak and REPORT_EVERY_MS).
   */
  async #call(f: () => Promise<Result<WitnessAnswer, WitnessError>>): Promise<WitnessAnswer | undefined> {
    let failure: string;
    try {
      const r = await f();
      if (r.ok) {
        if (this.#down) {
          const downMs = Math.round(this.#now() - this.#down.since);
          this.#o.log.info({ downMs, failures: this.#down.failures }, `the witness answers again (after ${downMs} ms)`);
          this.#down = undefined;
        }
        this.#chain.noteHead(r.value.head);
        return r.value;
      }
      failure = `${r.error.code}: ${r.error.message}`;
    } catch (e) {
      failure = reasonOf(e);
    }
    const now = this.#now();
    const d = (this.#down ??= { since: now, reportedAt: -Infinity, failures: 0 });
    d.failures++;
    if (now - d.reportedAt >= REPORT_EVERY_MS) {
      d.reportedAt = now;
      this.#o.log.warn(
        { failures: d.failures },
        `the witness does not answer (${failure}): no failover now; shards held here are written until their leases' stop times`,
      );
    }
    return undefined;
  }

  /** An answer about one shard: what it says of the lease; a grant to this site starts or extends its stop time. */
  #take(a: ShardAnswer, sentAt: number | undefined, what: string): void {
    const s = this.#shards.get(a.shard);
    if (!s) return;
    if (a.ok) {
      this.#learn(a.lease);
      if (sentAt !== undefined && a.lease.holder === this.#o.siteId && !a.lease.released && !s.handingOver) {
        const timing = { ...this.#timing, leaseMs: Math.min(this.#timing.leaseMs, a.lease.leaseMs) };
        s.stopAtMono = extendStopAtMono(s.stopAtMono, sentAt, timing);
        this.#armStop(s);
      }
      return;
    }
    const { refusal } = a;
    if (refusal.lease) this.#learn(refusal.lease);
    if (['unknown-shard', 'not-residency', 'bad-input', 'inconsistent'].includes(refusal.code))
      this.#o.log.error({ shard: a.shard, code: refusal.code }, `${what} of ${a.shard} refused: ${refusal.message}`);
  }

  /** A lease as the witness (or the chain) states it; never goes back to an older epoch. */
  #learn(lease: Pick<LeaseView, 'shard' | 'epoch' | 'holder' | 'released'>): void {
    const s = this.#shards.get(lease.shard);
    if (!s || lease.epoch < s.epoch) return;
    const self = this.#o.siteId;
    const wasHolder = s.holder === self && s.stopAtMono !== undefined;
    if (lease.epoch > s.epoch) s.handingOver = false; // a handover ends with the next epoch
    s.epoch = lease.epoch;
    s.holder = lease.epoch === 0 ? undefined : lease.holder;
    s.released = lease.released;
    if (wasHolder && (s.holder !== self || s.released)) {
      this.#stopWriting(s);
      if (s.holder !== self)
        this.#o.log.warn(
          { shard: s.id, holder: s.holder, epoch: s.epoch },
          `${s.id} is ${s.holder ? `held by ${s.holder}` : 'fenced'} at epoch ${s.epoch}: this site stops writing it`,
        );
    }
  }

  #fromChain(vote: Vote, record: ShardRecord): void {
    const cuts = epochCuts([vote], this.#held);
    if (cuts.length && this.#o.onEpochCuts) this.#recordCuts(cuts);
    this.#learnFromChain(vote, record);
  }

  /** In the rows' queue: after the rows this vote moved, so the ended epoch's local writes are over. */
  #recordCuts(cuts: EpochCutOf[]): void {
    this.#rows = this.#rows.then(async () => {
      try {
        await this.#o.onEpochCuts!(cuts);
      } catch (e) {
        this.#o.log.error(
          { err: e, cuts: cuts.map((c) => `${c.shard}@${c.epoch}`) },
          `the tail of an ended epoch is not fenced out yet: ${reasonOf(e)}; retrying`,
        );
        if (this.#closed) return;
        this.#cutRetry = setTimeout(() => this.#recordCuts(cuts), 1000);
        this.#cutRetry.unref();
      }
    });
  }

  #learnFromChain(vote: Vote, record: ShardRecord): void {
    const released = record.released
      ? { successor: record.released.successor, finalPosition: positionOf(record.released.finalPosition) }
      : null;
    const s = this.#shards.get(vote.shard);
    if (!s || record.epoch < s.epoch) return;
    // The chain has no expiries: learning from it that this site holds a shard only makes it renew
    // (writing starts with a granted answer); learning that another does stops it writing at once.
    const before = `${s.holder}/${s.epoch}`;
    this.#learn({ shard: record.shard, epoch: record.epoch, holder: record.holder, released });
    if (`${s.holder}/${s.epoch}` !== before) void this.#writeRows([s.id]);
  }

  #stopWriting(s: ShardState): void {
    clearTimeout(s.stopTimer);
    s.stopTimer = undefined;
    s.stopAtMono = undefined;
  }

  /** A timer at the stop time: the row is withdrawn then unless a renewal moved the stop time on. */
  #armStop(s: ShardState): void {
    clearTimeout(s.stopTimer);
    if (this.#closed || s.stopAtMono === undefined) return;
    s.stopTimer = setTimeout(
      () => {
        s.stopTimer = undefined;
        if (s.stopAtMono === undefined) return;
        if (this.#now() < s.stopAtMono) return this.#armStop(s); // a timer may fire a little early
        this.#withdrawals++;
        s.stopAtMono = undefined;
        this.#o.log.warn(
          { shard: s.id, epoch: s.epoch },
          `no renewal of ${s.id} granted in time: this site stops writing it now, before the lease can run out at the witness`,
        );
        void this.#writeRows([s.id]);
      },
      Math.max(0, s.stopAtMono - this.#now()),
    );
    s.stopTimer.unref();
  }

  /**
   * Brings the rows of `shards` to what the keeper knows, one write at a time, each computed when
   * it runs (a slow queue only shortens a lease). Never rejects: a failed write is logged and
   * counted, and the next round writes again.
   */
  #writeRows(shards: readonly string[]): Promise<void> {
    const next = this.#rows.then(async () => {
      for (const id of shards) {
        const s = this.#shards.get(id);
        if (!s || s.holder === undefined) continue;
        try {
          await this.#writeRow(s);
        } catch (e) {
          this.#o.log.error({ err: e, shard: id }, `shard_lease row of ${id} not written: ${reasonOf(e)}`);
        }
      }
    });
    this.#rows = next;
    return next;
  }

  async #writeRow(s: ShardState): Promise<void> {
    const self = this.#o.siteId;
    const remaining = s.holder === self && s.stopAtMono !== undefined ? s.stopAtMono - this.#now() : undefined;
    if (s.holder === self && (remaining === undefined || remaining <= 0)) {
      // Withdrawn (stop time passed, handed over, released): this site writes it no more at this epoch.
      await this.#o.db.query(
        `UPDATE shard_lease SET valid_until = '-infinity', updated_at = now()
          WHERE shard = $1 AND holder = $2 AND valid_until > '-infinity'`,
        [s.id, self],
      );
      return;
    }
    // Held here: until the stop time on the database's clock. Held elsewhere (or fenced: no holder,
    // kept as this site's run-out lease): the row names the holder and its epoch, and never goes back.
    await this.#o.db.query(
      `INSERT INTO shard_lease (shard, holder, epoch, valid_until)
         VALUES ($1, $2, $3, CASE WHEN $4::float8 IS NULL THEN '-infinity'::timestamptz
                                  ELSE clock_timestamp() + $4::float8 * interval '1 ms' END)
       ON CONFLICT (shard) DO UPDATE SET holder = excluded.holder, epoch = excluded.epoch, valid_until = excluded.valid_until,
         updated_at = now()
         WHERE shard_lease.epoch <= excluded.epoch`,
      [s.id, s.holder ?? self, s.epoch, remaining ?? null],
    );
  }
}
