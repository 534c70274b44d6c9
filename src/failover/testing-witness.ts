// Test helper: a WitnessApi in process over testWitness() (testing-votes.ts), deciding the way
// the witness service does (decide, seal, append, apply, one request at a time), on an injectable
// monotonic clock. `reachable = false` makes every call fail as a witness that does not answer,
// and `client(site)` is that site's view of it, cut off while `partitioned` holds the site;
// `injected` serves extra votes after the real chain (a forgery, a replay) to see a site refuse them.
import { err, ok, type Result } from '../common/index.ts';
import type { Decision, LeaseBookOptions, LeaseRefusal } from './lease-book.ts';
import { testWitness, type TestWitness } from './testing-votes.ts';
import type { ChainHead } from './vote-chain.ts';
import { voteHash, type Vote } from './vote.ts';
import type { ShardAnswer, WitnessAnswer, WitnessApi, WitnessError } from './witness-api.ts';

export interface InProcessWitness extends WitnessApi {
  w: TestWitness;
  /** The witness's monotonic clock (default performance.now). */
  now: () => number;
  reachable: boolean;
  /** Votes served after the real ones by `chain` (and counted in the head every answer names). */
  injected: Vote[];
  /** The calls answered, by kind (a test waits on them). */
  calls: Map<string, number>;
  /** Sites the witness does not hear from, nor answer (a partition between it and them). */
  partitioned: Set<string>;
  /** The witness as `site` reaches it: unreachable while the site is partitioned. */
  client(site: string): WitnessApi;
}

export function inProcessWitness(
  o: Partial<LeaseBookOptions> & { operators?: readonly string[]; now?: () => number } = {},
): InProcessWitness {
  const w = testWitness(o);
  const unreachable: Result<never, WitnessError> = err({ code: 'unavailable', message: 'the witness does not answer (test)' });
  const head = (): ChainHead => {
    const last = api.injected.at(-1);
    return last ? { seq: last.seq, hash: voteHash(last) } : w.chain.head;
  };
  const count = (k: string) => api.calls.set(k, (api.calls.get(k) ?? 0) + 1);
  /** Runs one decision per shard the way the service does; answers each shard and the head after. */
  const answer = (
    kind: string,
    shards: readonly string[],
    decide: (shard: string, now: number) => Result<Decision, LeaseRefusal>,
  ): Promise<Result<WitnessAnswer, WitnessError>> => {
    if (!api.reachable) return Promise.resolve(unreachable);
    count(kind);
    const answers: ShardAnswer[] = shards.map((shard) => {
      const now = api.now();
      const d = decide(shard, now);
      if (!d.ok) return { shard, ok: false, refusal: d.error };
      const { lease } = w.record(d.value, now);
      return { shard, ok: true, lease: lease ?? w.book.view(shard, now)! };
    });
    return Promise.resolve(ok({ answers, head: head() }));
  };
  const api: InProcessWitness = {
    w,
    now: o.now ?? (() => performance.now()),
    reachable: true,
    injected: [],
    calls: new Map(),
    partitioned: new Set(),
    client(site) {
      const cut = <T>(f: () => Promise<Result<T, WitnessError>>): Promise<Result<T, WitnessError>> =>
        api.partitioned.has(site) ? Promise.resolve(unreachable) : f();
      return {
        renew: (req) => cut(() => api.renew(req)),
        report: (req) => cut(() => api.report(req)),
        claim: (req) => cut(() => api.claim(req)),
        release: (req) => cut(() => api.release(req)),
        manualFailover: (req) => cut(() => api.manualFailover(req)),
        fence: (req) => cut(() => api.fence(req)),
        chain: (req) => cut(() => api.chain(req)),
      };
    },
    renew: (req) =>
      answer(
        'renew',
        req.shards.map((s) => s.shard),
        (shard, now) => w.book.renew(shard, req.site, { position: req.shards.find((s) => s.shard === shard)!.position }, now),
      ),
    report: (req) => {
      if (!api.reachable) return Promise.resolve(unreachable);
      count('report');
      const answers: ShardAnswer[] = req.shards.map(({ shard, appliedPosition }) => {
        const r = w.book.report(shard, req.site, { appliedPosition }, api.now());
        return r.ok ? { shard, ok: true, lease: r.value } : { shard, ok: false, refusal: r.error };
      });
      return Promise.resolve(ok({ answers, head: head() }));
    },
    claim: (req) => answer('claim', [req.shard], (shard, now) => w.book.claim(shard, req.site, req, now)),
    release: (req) => answer('release', [req.shard], (shard, now) => w.book.release(shard, req.site, req, now)),
    manualFailover: (req) =>
      answer('manual-failover', [req.shard], (shard, now) => w.book.manualFailover(shard, req.toSite, req.approval, now)),
    fence: (req) => answer('fence', [req.shard], (shard, now) => w.book.fence(shard, req.approval, now)),
    chain: (req) => {
      if (!api.reachable) return Promise.resolve(unreachable);
      count('chain');
      const all = [...w.chain.votes(), ...api.injected];
      const votes = all.filter((v) => v.seq > req.after).slice(0, req.limit ?? 200);
      return Promise.resolve(ok({ votes, head: head() }));
    },
  };
  return api;
}
