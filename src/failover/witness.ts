// The witness service (DESIGN.md §6, docs/failover.md): the lease book and the vote chain kept
// in a coordination store, one decision at a time. Several witness processes may share one
// store (etcd, or one PostgreSQL); only the elected one acts, the others answer `not-leader`
// with the leader's URL. A new leader reads the whole chain from the store, verifies it from
// genesis and rebuilds its book (every held lease counts as renewed at its start, so it grants
// no claim for a whole lease). A vote is answered only once the store holds it: decide, seal,
// a transaction fenced by the leadership that puts `chain/<seq>` where nothing was, then append
// and apply. A renewal that yields no vote writes nothing.
import { err, ok, reasonOf, type Logger, type Result } from '../common/index.ts';
import type { Hlc } from '../clock/index.ts';
import { sm3, Sm2PublicKey, type Sm2PrivateKey } from '../security/crypto/index.ts';
import { CoordinationError, type CoordinationStore, type Leadership } from './coordination.ts';
import { LeaseBook, type Decision, type LeaseRefusal, type LeaseView, type OperatorApproval } from './lease-book.ts';
import { HeldLeadership } from './leadership.ts';
import { VoteChain, type ChainHead, type KeyLookup } from './vote-chain.ts';
import type { Vote, VoteBody } from './vote.ts';
import { sleep } from './waits.ts';
import type { ShardAnswer, WitnessAnswer, WitnessApi, WitnessError } from './witness-api.ts';

/** The election the witness processes of one store campaign in. */
export const WITNESS_ELECTION = 'witness';
export const CHAIN_PREFIX = 'chain/';
const SITE_TRUST = 'trust/sites/';
const OPERATOR_TRUST = 'trust/operators/';

export const DEFAULT_LEASE_MS = 3000;
export const DEFAULT_MAX_LAG_MS = 5000;
export const DEFAULT_SUMMARY_EVERY_MS = 60_000;
/** Votes answered by one chain() call at most. */
export const MAX_CHAIN_PAGE = 1000;
/** A trusted key read from the store is used this long before it is read again (a CLI may change it meanwhile). */
const TRUST_CACHE_MS = 2000;

/** The store key of vote `seq`: zero-padded, so keys sort in chain order. */
export const chainKey = (seq: number): string => `${CHAIN_PREFIX}${String(seq).padStart(12, '0')}`;

/** The id votes name the witness's key by: derived from the public key, so a restart with the same key keeps it. */
export function witnessKeyId(key: Sm2PublicKey): string {
  return `witness-${sm3(key.toDer()).toString('hex').slice(0, 16)}`;
}

export interface WitnessOptions {
  store: CoordinationStore;
  /** Where sites reach this witness: its name in the election, and where a non-leader sends callers. */
  url: string;
  /** The witness's SM2 signing key. */
  key: Sm2PrivateKey;
  /** The id votes name it by (default `witnessKeyId` of its public key). */
  keyId?: string;
  /** Earlier keys of the witness (rotation): votes they signed still verify when the chain is loaded. */
  previousKeys?: KeyLookup;
  /** The region's shards, residency in order, home first (`Region.shards` fits). */
  shards: readonly { id: string; residency: readonly string[] }[];
  leaseMs?: number;
  maxLagMs?: number;
  summaryEveryMs?: number;
  /** Operators' public keys besides those trusted in the store (`trustOperator`). */
  operatorKeys?: Readonly<Record<string, Sm2PublicKey>>;
  log: Logger;
  /** Monotonic clock in ms (default performance.now); leases are timed on it only. */
  now?: () => number;
  /** Wall clock for the votes' `at` (for people only). */
  wallClock?: () => Date;
  /** How long a witness that stops renewing keeps the leadership (default max(leaseMs, 1000)). */
  leaderTtlMs?: number;
}

interface Office {
  leadership: Leadership;
  chain: VoteChain;
  book: LeaseBook;
  /** A store write whose outcome is unknown happened: read the chain's tail before the next decision. */
  dirty: boolean;
}

/** Everything a site needs to see who writes what: every shard's lease, the chain's head, the acting witness. */
export interface LeasesSnapshot {
  leases: LeaseView[];
  head: ChainHead;
  leader: string;
}

/** Trusts a site's public service key (its calls are then accepted): `trust/sites/<id>` in the store. */
export async function trustSite(store: CoordinationStore, id: string, key: Sm2PublicKey): Promise<void> {
  await putTrust(store, SITE_TRUST, id, key);
}

/** Registers an operator's public key (manual failover and fence approvals): `trust/operators/<id>`. */
export async function trustOperator(store: CoordinationStore, id: string, key: Sm2PublicKey): Promise<void> {
  await putTrust(store, OPERATOR_TRUST, id, key);
}

const TRUST_ID = /^[A-Za-z][A-Za-z0-9._-]{0,99}$/;

async function putTrust(store: CoordinationStore, prefix: string, id: string, key: Sm2PublicKey): Promise<void> {
  if (!TRUST_ID.test(id))
    throw new CoordinationError('invalid', `id ${JSON.stringify(id)}: a letter, then letters, digits, . _ - (at most 100)`);
  const r = await store.put(`${prefix}${id}`, JSON.stringify({ publicKey: key.toPem(), at: new Date().toISOString() }));
  if (!r.ok) throw new CoordinationError('unavailable', `trusting ${id}: the store refused the write`);
}

function keyOfEntry(value: string): Sm2PublicKey | undefined {
  try {
    const v = JSON.parse(value) as { publicKey?: unknown };
    return typeof v.publicKey === 'string' ? Sm2PublicKey.fromPem(v.publicKey) : undefined;
  } catch {
    return undefined;
  }
}

/** The stored votes after `afterSeq`, in order (as stored: the chain verifies them). */
export async function loadStoredVotes(store: CoordinationStore, afterSeq = 0): Promise<unknown[]> {
  const votes: unknown[] = [];
  let next = afterSeq + 1;
  for (;;) {
    const page = await store.list(CHAIN_PREFIX, { from: chainKey(next), limit: 1000 });
    for (const e of page.entries) {
      try {
        votes.push(JSON.parse(e.value));
      } catch {
        votes.push(e.value); // refused as malformed by the chain, with its place
      }
    }
    if (!page.more || page.entries.length === 0) return votes;
    next = Number(page.entries.at(-1)!.key.slice(CHAIN_PREFIX.length)) + 1;
  }
}

const unavailable = (message: string): WitnessError => ({ code: 'unavailable', message });
const badRequest = (message: string): WitnessError => ({ code: 'bad-request', message });

/** Held by the local clock too (`lost` is a timer; a late timer must not let a deposed witness answer). */
const isHeld = (l: Leadership): boolean => !l.lost.aborted && !(l instanceof HeldLeadership && !l.held);

export class Witness implements WitnessApi {
  readonly #o: WitnessOptions;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #wall: () => Date;
  readonly #keyId: string;
  readonly #bookOptions: ConstructorParameters<typeof LeaseBook>[0];
  readonly #closing = new AbortController();
  readonly #operatorKeys = new Map<string, Sm2PublicKey>();
  readonly #siteKeys = new Map<string, { key: Sm2PublicKey | undefined; readAt: number }>();
  #office: Office | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  #running: Promise<void> | undefined;

  constructor(o: WitnessOptions) {
    this.#o = o;
    this.#log = o.log.child({ component: 'witness' });
    this.#now = o.now ?? (() => performance.now());
    this.#wall = o.wallClock ?? (() => new Date());
    this.#keyId = o.keyId ?? witnessKeyId(o.key.publicKey);
    this.#bookOptions = {
      shards: o.shards,
      leaseMs: o.leaseMs ?? DEFAULT_LEASE_MS,
      maxLagMs: o.maxLagMs ?? DEFAULT_MAX_LAG_MS,
      summaryEveryMs: o.summaryEveryMs ?? DEFAULT_SUMMARY_EVERY_MS,
      operatorKeys: (id) => this.#operatorKeys.get(id) ?? o.operatorKeys?.[id],
    };
    new LeaseBook(this.#bookOptions); // bad options fail here, not at the first election
  }

  get url(): string {
    return this.#o.url;
  }

  get keyId(): string {
    return this.#keyId;
  }

  /** Whether this witness acts now (it leads and has loaded the chain). */
  get acting(): boolean {
    return this.#office !== undefined && isHeld(this.#office.leadership);
  }

  /** Campaigns, and acts while it leads; campaigns again whenever it loses the leadership. */
  start(): void {
    this.#running ??= this.#run().catch((e: unknown) => this.#log.error({ err: reasonOf(e) }, 'witness loop stopped'));
  }

  /** Stops acting, gives the leadership up (another witness takes over at once). Does not close the store. */
  async close(): Promise<void> {
    this.#closing.abort(new Error('the witness is closing'));
    const o = this.#office;
    this.#office = undefined;
    await o?.leadership.resign();
    await this.#running;
  }

  async #run(): Promise<void> {
    const ttlMs = this.#o.leaderTtlMs ?? Math.max(this.#bookOptions.leaseMs, 1000);
    const closing = this.#closing.signal;
    for (let failures = 0; !closing.aborted;) {
      let l: Leadership;
      try {
        l = await this.#o.store.campaign(WITNESS_ELECTION, { candidate: this.#o.url, ttlMs, signal: closing });
      } catch (e) {
        if (closing.aborted) return;
        failures++;
        if (failures === 1 || failures % 20 === 0)
          this.#log.warn({ err: reasonOf(e), failures }, 'campaign failed; trying again');
        await sleep(Math.min(5000, 200 * failures), closing);
        continue;
      }
      try {
        await this.#serial(() => this.#takeOffice(l));
        failures = 0;
      } catch (e) {
        failures++;
        this.#log.error({ err: reasonOf(e), failures }, 'could not take office: giving the leadership up');
        await l.resign();
        await sleep(Math.min(5000, 200 * failures), closing);
        continue;
      }
      await new Promise<void>((resolve) => {
        const both = AbortSignal.any([l.lost, closing]);
        if (both.aborted) resolve();
        else both.addEventListener('abort', () => resolve(), { once: true });
      });
      if (this.#office?.leadership === l) this.#office = undefined;
      if (closing.aborted) await l.resign();
      else this.#log.warn({ fence: String(l.fence), reason: reasonOf(l.lost.reason) }, 'no longer the acting witness');
    }
  }

  /** Reads and verifies the stored chain and rebuilds the book: the new leader knows what every earlier one decided. */
  async #takeOffice(l: Leadership): Promise<void> {
    await this.#loadOperators();
    const votes = await loadStoredVotes(this.#o.store);
    const chain = VoteChain.verify(votes, { witnessKeys: this.#witnessKeys() });
    if (!chain.ok)
      throw new Error(
        `the stored chain does not verify at vote ${chain.error.index + 1} (${chain.error.code}): ${chain.error.message}`,
      );
    if (!isHeld(l)) throw new Error('the leadership was lost while the chain was loading');
    const book = LeaseBook.fromChain(chain.value, this.#bookOptions, this.#now());
    const office: Office = { leadership: l, chain: chain.value, book, dirty: false };
    this.#office = office;
    l.lost.addEventListener('abort', () => {
      if (this.#office === office) this.#office = undefined;
    });
    this.#log.info(
      { fence: String(l.fence), head: chain.value.head.seq, shards: book.records().length },
      `acting witness: chain of ${chain.value.length} votes verified; ` +
        `no claim before a whole lease (${this.#bookOptions.leaseMs} ms)`,
    );
  }

  #witnessKeys(): KeyLookup {
    const own = this.#o.key.publicKey;
    return (id) => (id === this.#keyId ? own : this.#o.previousKeys?.(id));
  }

  async #loadOperators(): Promise<void> {
    const page = await this.#o.store.list(OPERATOR_TRUST, { limit: 10_000 });
    this.#operatorKeys.clear();
    for (const e of page.entries) {
      const key = keyOfEntry(e.value);
      if (key) this.#operatorKeys.set(e.key.slice(OPERATOR_TRUST.length), key);
      else this.#log.warn({ key: e.key }, 'a trusted operator entry is not an SM2 public key; ignored');
    }
  }

  /** A site's trusted public service key (undefined: not trusted); read from the store, cached briefly. */
  async siteKey(site: string): Promise<Result<Sm2PublicKey | undefined, WitnessError>> {
    if (!TRUST_ID.test(site)) return ok(undefined);
    const hit = this.#siteKeys.get(site);
    const now = this.#now();
    if (hit && now - hit.readAt < TRUST_CACHE_MS) return ok(hit.key);
    try {
      const e = await this.#o.store.get(`${SITE_TRUST}${site}`);
      const key = e ? keyOfEntry(e.value) : undefined;
      if (this.#siteKeys.size > 10_000) this.#siteKeys.clear();
      this.#siteKeys.set(site, { key, readAt: now });
      return ok(key);
    } catch (e) {
      return err(unavailable(`the witness's store did not answer: ${reasonOf(e)}`));
    }
  }

  async trustSite(id: string, key: Sm2PublicKey): Promise<void> {
    await trustSite(this.#o.store, id, key);
    this.#siteKeys.delete(id);
  }

  async trustOperator(id: string, key: Sm2PublicKey): Promise<void> {
    await trustOperator(this.#o.store, id, key);
    this.#operatorKeys.set(id, key);
  }

  // ---- requests -------------------------------------------------------------------------------

  renew(req: { site: string; shards: ReadonlyArray<{ shard: string; position: Hlc }> }) {
    return this.#decide(async (o) => {
      const answers: ShardAnswer[] = [];
      for (const s of req.shards) {
        const a = await this.#carry(o, s.shard, o.book.renew(s.shard, req.site, { position: s.position }, this.#now()));
        if (!a.ok) return a;
        answers.push(a.value);
      }
      return ok({ answers, head: o.chain.head });
    });
  }

  report(req: { site: string; shards: ReadonlyArray<{ shard: string; appliedPosition: Hlc }> }) {
    return this.#decide((o) => {
      const answers: ShardAnswer[] = req.shards.map((s) => {
        const r = o.book.report(s.shard, req.site, { appliedPosition: s.appliedPosition }, this.#now());
        return r.ok ? { shard: s.shard, ok: true, lease: r.value } : { shard: s.shard, ok: false, refusal: r.error };
      });
      return Promise.resolve(ok({ answers, head: o.chain.head }));
    });
  }

  claim(req: { site: string; shard: string; appliedPosition: Hlc }) {
    return this.#decide(async (o) => {
      const d = o.book.claim(req.shard, req.site, { appliedPosition: req.appliedPosition }, this.#now());
      return this.#answer(o, req.shard, d);
    });
  }

  release(req: { site: string; shard: string; successor: string; finalPosition: Hlc }) {
    return this.#decide(async (o) => {
      const handover = { finalPosition: req.finalPosition, successor: req.successor };
      return this.#answer(o, req.shard, o.book.release(req.shard, req.site, handover, this.#now()));
    });
  }

  manualFailover(req: { shard: string; toSite: string; approval: OperatorApproval }) {
    return this.#decide(async (o) => {
      await this.#loadOperators(); // an operator trusted a moment ago counts
      return this.#answer(o, req.shard, o.book.manualFailover(req.shard, req.toSite, req.approval, this.#now()));
    });
  }

  fence(req: { shard: string; approval: OperatorApproval }) {
    return this.#decide(async (o) => {
      await this.#loadOperators();
      return this.#answer(o, req.shard, o.book.fence(req.shard, req.approval, this.#now()));
    });
  }

  chain(req: { after: number; limit?: number }): Promise<Result<{ votes: Vote[]; head: ChainHead }, WitnessError>> {
    const limit = req.limit ?? MAX_CHAIN_PAGE;
    if (!Number.isSafeInteger(req.after) || req.after < 0)
      return Promise.resolve(err(badRequest('after must be a sequence number >= 0')));
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_CHAIN_PAGE)
      return Promise.resolve(err(badRequest(`limit must be 1-${MAX_CHAIN_PAGE}`)));
    return this.#decide((o) => Promise.resolve(ok({ votes: o.chain.votesAfter(req.after).slice(0, limit), head: o.chain.head })));
  }

  /** Every shard's lease now, the chain's head and the acting witness. */
  leases(): Promise<Result<LeasesSnapshot, WitnessError>> {
    return this.#decide((o) => {
      const now = this.#now();
      const leases = this.#o.shards.map((s) => o.book.view(s.id, now)!);
      return Promise.resolve(ok({ leases, head: o.chain.head, leader: this.#o.url }));
    });
  }

  /** For /healthz: whether this witness acts, its head, and whether its store answers (within `timeoutMs`). */
  async health(timeoutMs = 1000): Promise<{ reachable: boolean; leader: boolean; head: ChainHead | undefined }> {
    const o = this.#office;
    const leader = o !== undefined && isHeld(o.leadership);
    const probe = this.#o.store.leader(WITNESS_ELECTION).then(
      () => true,
      () => false,
    );
    const timeout = new Promise<boolean>((resolve) => setTimeout(() => resolve(false), timeoutMs).unref());
    const reachable = await Promise.race([probe, timeout]);
    return { reachable, leader, head: leader ? o.chain.head : undefined };
  }

  // ---- one decision at a time -------------------------------------------------------------------

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  #decide<T>(fn: (o: Office) => Promise<Result<T, WitnessError>>): Promise<Result<T, WitnessError>> {
    return this.#serial(async (): Promise<Result<T, WitnessError>> => {
      const o = this.#office;
      if (!o || !isHeld(o.leadership)) return err(await this.#notLeader());
      if (o.dirty) {
        const s = await this.#catchUp(o);
        if (!s.ok) return s;
      }
      const r = await fn(o);
      // A renewal takes effect without a write: answer it only if this witness still leads.
      if (r.ok && !isHeld(o.leadership)) return err(await this.#notLeader());
      return r;
    }).catch((e: unknown): Result<T, WitnessError> => {
      if (!(e instanceof CoordinationError)) this.#log.error({ err: reasonOf(e) }, 'witness request failed');
      return err(unavailable(`the witness's store did not answer: ${reasonOf(e)}`));
    });
  }

  async #notLeader(): Promise<WitnessError> {
    if (this.#closing.signal.aborted) return unavailable('this witness is stopping');
    try {
      const l = await this.#o.store.leader(WITNESS_ELECTION);
      if (l && l.candidate !== this.#o.url)
        return { code: 'not-leader', message: `this witness does not act; ${l.candidate} does`, leader: l.candidate };
      return unavailable(l ? 'this witness is taking office (loading its chain)' : 'no witness acts now (an election is on)');
    } catch (e) {
      return unavailable(`the witness's store did not answer: ${reasonOf(e)}`);
    }
  }

  /** After a write of unknown outcome: the votes the store holds beyond this witness's head are taken in. */
  async #catchUp(o: Office): Promise<Result<void, WitnessError>> {
    const more = await loadStoredVotes(this.#o.store, o.chain.head.seq);
    for (const v of more) {
      const a = o.chain.append(v);
      const applied = a.ok ? o.book.apply(a.value.vote, this.#now()) : a;
      if (!applied.ok) {
        // Not a continuation of this chain: start over from the store, as a new leader does.
        this.#log.error({ err: applied.error.message }, 'the stored chain diverged; reloading it');
        await this.#takeOffice(o.leadership); // already inside the queue
        return err(unavailable('the witness reloaded its chain; retry'));
      }
    }
    o.dirty = false;
    return ok(undefined);
  }

  #answer(o: Office, shard: string, d: Result<Decision, LeaseRefusal>): Promise<Result<WitnessAnswer, WitnessError>> {
    return this.#carry(o, shard, d).then((a) => (a.ok ? ok({ answers: [a.value], head: o.chain.head }) : a));
  }

  /** A decision carried out: a refusal as it is, a vote stored then taken into the chain and book. */
  async #carry(o: Office, shard: string, d: Result<Decision, LeaseRefusal>): Promise<Result<ShardAnswer, WitnessError>> {
    if (!d.ok) return ok({ shard, ok: false, refusal: d.error });
    const vote = d.value.action === 'vote' ? d.value.vote : d.value.summary;
    if (vote) {
      const c = await this.#commit(o, vote);
      if (!c.ok) return c;
    }
    return ok({ shard, ok: true, lease: o.book.view(shard, this.#now())! });
  }

  /** Seal, store (fenced, where no vote is yet), append, apply. Nothing is applied unless the store holds it. */
  async #commit(o: Office, body: VoteBody): Promise<Result<Vote, WitnessError>> {
    const sealed = o.chain.seal(body, { at: this.#wall().toISOString(), witnessKey: this.#keyId, key: this.#o.key });
    if (!sealed.ok) {
      this.#log.error({ refusal: sealed.error }, 'the chain refused a vote the book decided');
      return err(unavailable(`the witness could not seal its decision: ${sealed.error.message}`));
    }
    const vote = sealed.value;
    const key = chainKey(vote.seq);
    let stored: boolean;
    try {
      stored = (
        await this.#o.store.txn({
          compare: [{ key, revision: 0n }],
          put: [{ key, value: JSON.stringify(vote) }],
          leadership: o.leadership,
        })
      ).succeeded;
    } catch (e) {
      o.dirty = true; // it may have landed: read the tail before the next decision
      return err(unavailable(`the witness's store did not answer; nothing was decided: ${reasonOf(e)}`));
    }
    if (!stored) {
      o.dirty = true;
      const leader = await this.#o.store.leader(WITNESS_ELECTION).catch(() => undefined);
      if (!isHeld(o.leadership) || !leader || leader.fence !== o.leadership.fence) {
        this.#log.warn({ seq: vote.seq }, 'a fenced write failed: this witness no longer leads; the decision is dropped');
        void o.leadership.resign();
        return err(await this.#notLeader());
      }
      return err(unavailable(`vote ${vote.seq} is already in the store; retry`));
    }
    o.chain.append(vote);
    const applied = o.book.apply(vote, this.#now());
    if (!applied.ok) {
      this.#log.error({ refusal: applied.error, seq: vote.seq }, 'the book refused a stored vote; reloading the chain');
      o.dirty = true;
    }
    return ok(vote);
  }
}
