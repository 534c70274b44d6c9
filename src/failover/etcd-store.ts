// The coordination store on etcd (v3 API, the etcd3 client): for a witness of several processes
// on an etcd cluster (3 members in production). Keys live under `<namespace>kv/`. An election is
// etcd's recipe (as in its Go client's concurrency package): each campaigner puts
// `<namespace>election/<name>/<lease id>` under its own lease; the key with the lowest create
// revision leads, and that create revision is the fence (a later leader's key was created
// later). A fenced transaction compares the leader key's create revision, so it fails once the
// lease is gone. Every call carries a deadline and every emitter and promise of the client has a
// handler: a lost etcd makes calls fail (CoordinationError 'unavailable'), never the process.
import {
  CompareResult,
  CompareTarget,
  Etcd3,
  EtcdLeaseInvalidError,
  SortOrder,
  SortTarget,
  type ICompare,
  type IKeyValue,
  type IRequestOp,
  type Lease,
} from 'etcd3';
import type { Logger } from '../common/index.ts';
import { err, ok, reasonOf, type Result } from '../common/index.ts';
import {
  checkCampaign,
  checkKey,
  checkListOptions,
  checkPrefix,
  checkRevision,
  checkTxn,
  checkValue,
  CoordinationError,
  prefixEnd,
  type CampaignOptions,
  type CoordinationStore,
  type Entry,
  type LeaderInfo,
  type Leadership,
  type ListPage,
  type PutConflict,
  type TxnRequest,
  type TxnResult,
  type Watch,
  type WatchEvent,
  type WatchOptions,
} from './coordination.ts';
import { LeaseKeeper } from './keeper.ts';
import { HeldLeadership } from './leadership.ts';
import { raceAbort, sleep } from './waits.ts';

export interface EtcdStoreOptions {
  /** Client URLs of the etcd members, e.g. ["http://10.0.0.1:2379", ...] (plain HTTP for now). */
  endpoints: string[];
  /** Prefix of every key this store uses (one region's witness per prefix). Default "medmesh/". */
  namespace?: string;
  log: Logger;
  /** Deadline of each etcd call. Default 2000 ms. */
  callTimeoutMs?: number;
}

/** A campaigner waiting behind another re-checks this often even if its watch says nothing. */
const RECHECK_MS = 1000;

export function openEtcdStore(o: EtcdStoreOptions): CoordinationStore {
  if (!Array.isArray(o.endpoints) || o.endpoints.length === 0)
    throw new CoordinationError('invalid', 'etcd: at least one endpoint is needed');
  for (const e of o.endpoints)
    if (!/^http:\/\/[^\s/]+:\d+\/?$/.test(e))
      throw new CoordinationError('invalid', `etcd endpoint ${e}: expected http://host:port (TLS to etcd is not supported yet)`);
  const namespace = o.namespace ?? 'medmesh/';
  checkKey(namespace, 'namespace');
  return new EtcdStore(o, namespace);
}

const text = (b: Buffer) => b.toString('utf8');

class EtcdStore implements CoordinationStore {
  readonly kind = 'etcd' as const;
  readonly #client: Etcd3;
  readonly #log: Logger;
  readonly #timeoutMs: number;
  readonly #kvPrefix: Buffer;
  readonly #electionPrefix: string;
  readonly #closing = new AbortController();
  readonly #held = new Set<HeldLeadership>();
  /** The election key of each leadership this store won (what a fenced transaction compares). */
  readonly #keys = new WeakMap<Leadership, Buffer>();
  readonly #watches = new Set<() => Promise<void>>();

  constructor(o: EtcdStoreOptions, namespace: string) {
    this.#log = o.log.child({ component: 'coordination' });
    this.#timeoutMs = o.callTimeoutMs ?? 2000;
    this.#kvPrefix = Buffer.from(`${namespace}kv/`);
    this.#electionPrefix = `${namespace}election/`;
    this.#client = new Etcd3({
      hosts: o.endpoints,
      dialTimeout: this.#timeoutMs,
      // Streams (watch, keepalive) live long; every unary call gets a deadline.
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: new Date(Date.now() + this.#timeoutMs) }),
    });
  }

  #open(): void {
    if (this.#closing.signal.aborted) throw new CoordinationError('closed', 'the coordination store is closed');
  }

  async #call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    this.#open();
    try {
      return await fn();
    } catch (e) {
      if (e instanceof CoordinationError) throw e;
      throw new CoordinationError('unavailable', `etcd: ${what} failed: ${reasonOf(e)}`, { cause: e });
    }
  }

  #key(key: string): Buffer {
    return Buffer.concat([this.#kvPrefix, Buffer.from(key)]);
  }

  #entry(kv: IKeyValue): Entry {
    return {
      key: text(kv.key.subarray(this.#kvPrefix.length)),
      value: text(kv.value),
      revision: BigInt(kv.mod_revision),
      createRevision: BigInt(kv.create_revision),
    };
  }

  async #revision(): Promise<bigint> {
    const r = await this.#client.kv.range({ key: this.#kvPrefix, limit: 1, keys_only: true });
    return BigInt(r.header.revision);
  }

  get(key: string): Promise<Entry | undefined> {
    return this.#call('get', async () => {
      checkKey(key);
      const r = await this.#client.kv.range({ key: this.#key(key) });
      return r.kvs[0] && this.#entry(r.kvs[0]);
    });
  }

  list(prefix: string, opts: { limit?: number; from?: string } = {}): Promise<ListPage> {
    return this.#call('list', async () => {
      checkPrefix(prefix);
      checkListOptions(opts);
      const start = this.#key(prefix);
      const from = opts.from !== undefined ? this.#key(opts.from) : start;
      const r = await this.#client.kv.range({
        key: Buffer.compare(from, start) > 0 ? from : start,
        range_end: prefixEnd(start) ?? Buffer.from([0]),
        limit: opts.limit ?? 1000,
        sort_target: SortTarget.Key,
        sort_order: SortOrder.Ascend,
      });
      return { entries: r.kvs.map((kv) => this.#entry(kv)), more: r.more, revision: BigInt(r.header.revision) };
    });
  }

  put(key: string, value: string, opts: { expectRevision?: bigint } = {}): Promise<Result<{ revision: bigint }, PutConflict>> {
    return this.#call('put', async () => {
      checkKey(key);
      checkValue(key, value);
      const k = this.#key(key);
      const v = Buffer.from(value);
      if (opts.expectRevision === undefined) {
        const r = await this.#client.kv.put({ key: k, value: v });
        return ok({ revision: BigInt(r.header.revision) });
      }
      checkRevision(opts.expectRevision, 'expectRevision');
      // A missing key's mod revision compares as 0.
      const t = await this.#client.kv.txn({
        compare: [{ key: k, target: CompareTarget.Mod, result: CompareResult.Equal, mod_revision: String(opts.expectRevision) }],
        success: [{ request_put: { key: k, value: v } }],
        failure: [{ request_range: { key: k } }],
      });
      if (t.succeeded) return ok({ revision: BigInt(t.header.revision) });
      const now = t.responses[0]?.response_range.kvs[0];
      return err<PutConflict>(now ? { code: 'conflict', current: BigInt(now.mod_revision) } : { code: 'conflict' });
    });
  }

  txn(req: TxnRequest): Promise<TxnResult> {
    return this.#call('txn', async () => {
      checkTxn(req);
      const compare: ICompare[] = (req.compare ?? []).map((c) => ({
        key: this.#key(c.key),
        target: CompareTarget.Mod,
        result: CompareResult.Equal,
        mod_revision: String(c.revision),
      }));
      const l = req.leadership;
      if (l) {
        const key = this.#keys.get(l);
        if (!key)
          throw new CoordinationError('invalid', `leadership ${l.name} (fence ${l.fence}) was not won through this store`);
        // Given up or possibly expired here: refused without asking etcd.
        if (l instanceof HeldLeadership && !l.held) return { succeeded: false, revision: await this.#revision() };
        compare.push({ key, target: CompareTarget.Create, result: CompareResult.Equal, create_revision: String(l.fence) });
      }
      const success: IRequestOp[] = [
        ...(req.put ?? []).map((p) => ({ request_put: { key: this.#key(p.key), value: Buffer.from(p.value) } })),
        ...(req.delete ?? []).map((d) => ({ request_delete_range: { key: this.#key(d) } })),
      ];
      const t = await this.#client.kv.txn({ compare, success, failure: [] });
      return { succeeded: t.succeeded, revision: BigInt(t.header.revision) };
    });
  }

  async campaign(name: string, opts: CampaignOptions): Promise<Leadership> {
    this.#open();
    checkCampaign(name, opts);
    const signal = opts.signal ? AbortSignal.any([this.#closing.signal, opts.signal]) : this.#closing.signal;
    const stopped = () =>
      this.#closing.signal.aborted
        ? new CoordinationError('closed', 'the coordination store is closed')
        : (opts.signal!.reason as Error);
    for (let failures = 0; ;) {
      if (signal.aborted) throw stopped();
      try {
        return await this.#campaignOnce(name, opts, signal);
      } catch (e) {
        if (signal.aborted) throw stopped();
        if (++failures === 1 || failures % 20 === 0)
          this.#log.warn({ election: name, err: reasonOf(e), failures }, 'campaign: etcd did not answer (trying again)');
        await sleep(Math.min(100 * failures, 1000), signal);
      }
    }
  }

  async #campaignOnce(name: string, opts: CampaignOptions, outer: AbortSignal): Promise<Leadership> {
    const ttlSec = Math.max(1, Math.ceil(opts.ttlMs / 1000));
    const sentAt = performance.now();
    const lease: Lease = this.#client.lease(ttlSec, { autoKeepAlive: false });
    // The client reports a failed grant here too; the grant's own rejection is what we act on.
    lease.on('lost', (e) => this.#log.debug({ election: name, err: reasonOf(e) }, 'campaign lease lost'));
    const waiting = new AbortController();
    const signal = AbortSignal.any([outer, waiting.signal]);
    let keeper: LeaseKeeper | undefined;
    const revoke = () =>
      lease.revoke().catch((e: unknown) => this.#log.warn({ election: name, err: reasonOf(e) }, 'revoking a lease failed'));
    try {
      const id = await raceAbort(lease.grant(), signal);
      // While it waits in line its lease must live (its key holds its place).
      keeper = new LeaseKeeper({
        ttlMs: opts.ttlMs,
        grantedSentAt: sentAt,
        renew: (s) => this.#renew(lease, s),
        onLost: (reason) => waiting.abort(reason),
        log: this.#log,
        what: `campaign ${name}`,
      });
      const key = Buffer.from(`${this.#electionPrefix}${name}/${BigInt(id).toString(16)}`);
      const t = await this.#client.kv.txn({
        compare: [{ key, target: CompareTarget.Create, result: CompareResult.Equal, create_revision: '0' }],
        success: [{ request_put: { key, value: Buffer.from(opts.candidate), lease: id } }],
        failure: [{ request_range: { key } }],
      });
      const mine = t.succeeded ? BigInt(t.header.revision) : BigInt(t.responses[0]!.response_range.kvs[0]!.create_revision);
      const election = Buffer.from(`${this.#electionPrefix}${name}/`);
      for (;;) {
        const before = await raceAbort(
          this.#client.kv.range({
            key: election,
            range_end: prefixEnd(election)!,
            max_create_revision: String(mine - 1n),
            sort_target: SortTarget.Create,
            sort_order: SortOrder.Descend,
            limit: 1,
          }),
          signal,
        );
        const ahead = before.kvs[0];
        if (!ahead) break;
        await this.#waitDeleted(ahead.key, BigInt(before.header.revision) + 1n, signal);
      }
      keeper.stop();
      const held = new HeldLeadership({
        name,
        candidate: opts.candidate,
        fence: mine,
        ttlMs: opts.ttlMs,
        grantedSentAt: keeper.lastSentAt,
        log: this.#log,
        renew: (s) => this.#renew(lease, s),
        release: () => lease.revoke(),
        onEnd: (l) => this.#held.delete(l),
      });
      this.#keys.set(held, key);
      this.#held.add(held);
      return held;
    } catch (e) {
      keeper?.stop();
      await revoke();
      throw signal.aborted && !outer.aborted ? (waiting.signal.reason as Error) : e;
    }
  }

  /** One keepalive: true while the lease lives, false when etcd says it is gone. */
  async #renew(lease: Lease, signal: AbortSignal): Promise<boolean> {
    try {
      const r = await raceAbort(lease.keepaliveOnce({ deadline: new Date(Date.now() + this.#timeoutMs) }), signal);
      return BigInt(r.TTL) > 0n;
    } catch (e) {
      if (e instanceof EtcdLeaseInvalidError) return false;
      throw e;
    }
  }

  /** Resolves when `key` is deleted at or after revision `from` (a watch, re-checked now and then). */
  async #waitDeleted(key: Buffer, from: bigint, signal: AbortSignal): Promise<void> {
    const wakers = new Set<() => void>();
    let deleted = false;
    const watcher = this.#client.watch().key(key).startRevision(String(from)).only('delete').watcher();
    watcher.on('delete', () => {
      deleted = true;
      for (const w of [...wakers]) w();
    });
    watcher.on('error', (e) => {
      this.#log.warn({ err: reasonOf(e) }, 'campaign: watch of the leader key failed (re-checking)');
      for (const w of [...wakers]) w();
    });
    watcher.on('disconnected', () => undefined);
    try {
      for (;;) {
        await sleep(RECHECK_MS, signal, wakers);
        if (signal.aborted) throw signal.reason as Error;
        if (deleted) return;
        const r = await raceAbort(this.#client.kv.range({ key, count_only: true }), signal);
        if (r.count === '0') return;
      }
    } finally {
      watcher.cancel().catch((e: unknown) => this.#log.debug({ err: reasonOf(e) }, 'cancelling a watch failed'));
    }
  }

  leader(name: string): Promise<LeaderInfo | undefined> {
    return this.#call('leader', async () => {
      checkKey(name, 'election name');
      const election = Buffer.from(`${this.#electionPrefix}${name}/`);
      const r = await this.#client.kv.range({
        key: election,
        range_end: prefixEnd(election)!,
        sort_target: SortTarget.Create,
        sort_order: SortOrder.Ascend,
        limit: 1,
      });
      const kv = r.kvs[0];
      return kv && { candidate: text(kv.value), fence: BigInt(kv.create_revision) };
    });
  }

  watch(prefix: string, onChange: (e: WatchEvent) => void, opts: WatchOptions = {}): Promise<Watch> {
    return this.#call('watch', async () => {
      checkPrefix(prefix);
      let start: bigint;
      if (opts.fromRevision !== undefined && opts.fromRevision > 0n) {
        checkRevision(opts.fromRevision, 'fromRevision');
        start = opts.fromRevision;
        // A read at the start revision fails if etcd compacted it away.
        try {
          await this.#client.kv.range({ key: this.#kvPrefix, limit: 1, keys_only: true, revision: String(start) });
        } catch (e) {
          if (/compacted/.test(reasonOf(e)))
            throw new CoordinationError('compacted', `watch of ${JSON.stringify(prefix)}: revision ${start} was compacted`);
          if (!/future revision/.test(reasonOf(e))) throw e;
        }
      } else start = (await this.#revision()) + 1n;
      const deliver = (e: WatchEvent) => {
        try {
          const r: unknown = onChange(e);
          if (r instanceof Promise)
            r.catch((x: unknown) => this.#log.warn({ err: reasonOf(x) }, 'watch: the change handler failed'));
        } catch (x) {
          this.#log.warn({ err: reasonOf(x) }, 'watch: the change handler failed');
        }
      };
      const skip = this.#kvPrefix.length;
      const watcher = this.#client.watch().prefix(this.#key(prefix)).startRevision(String(start)).watcher();
      let closed = false;
      watcher.on('put', (kv) => {
        if (!closed)
          deliver({ type: 'put', key: text(kv.key.subarray(skip)), value: text(kv.value), revision: BigInt(kv.mod_revision) });
      });
      watcher.on('delete', (kv) => {
        if (!closed) deliver({ type: 'delete', key: text(kv.key.subarray(skip)), revision: BigInt(kv.mod_revision) });
      });
      watcher.on('disconnected', (e) =>
        this.#log.warn({ prefix, err: reasonOf(e) }, 'watch: etcd connection lost (reconnecting)'),
      );
      watcher.on('error', (e) => {
        // etcd cancelled the watch (its history was compacted while this watch was away).
        const message = `watch of ${JSON.stringify(prefix)} was cancelled by etcd: ${reasonOf(e)}`;
        this.#log.warn({ err: message }, 'watch stopped');
        if (!closed) opts.onError?.(new CoordinationError('compacted', message));
        closed = true;
      });
      const close = async () => {
        if (closed && !this.#watches.has(close)) return;
        closed = true;
        this.#watches.delete(close);
        // Not awaited past a deadline: cancelling waits for etcd's answer.
        await raceAbort(watcher.cancel(), AbortSignal.timeout(this.#timeoutMs)).catch((e: unknown) =>
          this.#log.debug({ err: reasonOf(e) }, 'cancelling a watch failed'),
        );
      };
      this.#watches.add(close);
      return { close };
    });
  }

  compact(revision: bigint): Promise<void> {
    return this.#call('compact', async () => {
      checkRevision(revision, 'revision');
      try {
        await this.#client.kv.compact({ revision: String(revision) });
      } catch (e) {
        if (/future revision/.test(reasonOf(e))) throw new CoordinationError('invalid', `revision ${revision} is in the future`);
        if (!/compacted/.test(reasonOf(e))) throw e; // already compacted that far
      }
    });
  }

  async close(): Promise<void> {
    if (this.#closing.signal.aborted) return;
    this.#closing.abort();
    await Promise.all([...this.#held].map((l) => l.resign()));
    await Promise.all([...this.#watches].map((close) => close()));
    this.#client.close();
  }
}
