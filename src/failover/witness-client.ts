// The witness over HTTP, for a site (its lease keeper) and for tools: WitnessApi on the witness's
// /witness/v1 routes. Every call is signed with the site's service key (an assertion for
// audience 'witness', reused for half its life), bounded by one deadline, and answers a Result:
// a failure is `unavailable`, never an exception. Several witness URLs may be given (witnesses
// sharing one etcd): a `not-leader` answer names the leader, which is asked next; a witness that
// cannot be reached is passed over for the next. The last one that answered is asked first.
import type { z } from 'zod';
import { err, ok, reasonOf, type Result } from '../common/index.ts';
import type { Hlc } from '../clock/index.ts';
import type { Sm2PrivateKey } from '../security/crypto/index.ts';
import { AssertionCache } from '../security/identity/index.ts';
import type { LeaseView, OperatorApproval } from './lease-book.ts';
import type { ChainHead } from './vote-chain.ts';
import { positionHex, type Vote } from './vote.ts';
import type { WitnessAnswer, WitnessApi, WitnessError } from './witness-api.ts';
import {
  answerOfJson,
  chainAnswerJson,
  errorJson,
  leaseOfJson,
  leasesAnswerJson,
  WITNESS_API_PREFIX,
  witnessAnswerJson,
} from './witness-wire.ts';

export interface WitnessClientOptions {
  /** Base URLs of the witness processes (e.g. the region's witness.url, or several on one etcd). */
  urls: readonly string[];
  /**
   * The calling site, and its service key (the witness trusts its public half); a function for a
   * site whose key is out of reach while its KMS is sealed (calls then answer `unavailable`).
   */
  siteId: string;
  key: Sm2PrivateKey | (() => Sm2PrivateKey | undefined);
  /** Deadline of one call, every redirect and retry included (default 1000 ms). */
  timeoutMs?: number;
}

const trimSlash = (u: string) => u.replace(/\/+$/, '');
const unavailable = (message: string): WitnessError => ({ code: 'unavailable', message });

export class WitnessClient implements WitnessApi {
  readonly #o: WitnessClientOptions;
  readonly #urls: string[];
  readonly #assertions = new AssertionCache();
  /** The witness that answered last: asked first next time. */
  #preferred: string;

  constructor(o: WitnessClientOptions) {
    if (o.urls.length === 0) throw new RangeError('witness client: at least one witness URL is needed');
    for (const u of o.urls) if (!URL.canParse(u)) throw new RangeError(`witness client: ${u} is not a URL`);
    this.#o = o;
    this.#urls = o.urls.map(trimSlash);
    this.#preferred = this.#urls[0]!;
  }

  renew(req: { site: string; shards: ReadonlyArray<{ shard: string; position: Hlc }> }) {
    const shards = req.shards.map((s) => ({ shard: s.shard, position: positionHex(s.position) }));
    return this.#answer('/renew', { site: req.site, shards });
  }

  report(req: { site: string; shards: ReadonlyArray<{ shard: string; appliedPosition: Hlc }> }) {
    const shards = req.shards.map((s) => ({ shard: s.shard, appliedPosition: positionHex(s.appliedPosition) }));
    return this.#answer('/report', { site: req.site, shards });
  }

  claim(req: { site: string; shard: string; appliedPosition: Hlc }) {
    return this.#answer('/claim', { site: req.site, shard: req.shard, appliedPosition: positionHex(req.appliedPosition) });
  }

  release(req: { site: string; shard: string; successor: string; finalPosition: Hlc }) {
    const body = { site: req.site, shard: req.shard, successor: req.successor, finalPosition: positionHex(req.finalPosition) };
    return this.#answer('/release', body);
  }

  manualFailover(req: { shard: string; toSite: string; approval: OperatorApproval }) {
    return this.#answer('/manual-failover', req);
  }

  fence(req: { shard: string; approval: OperatorApproval }) {
    return this.#answer('/fence', req);
  }

  async chain(req: { after: number; limit?: number }): Promise<Result<{ votes: Vote[]; head: ChainHead }, WitnessError>> {
    const q = new URLSearchParams({ after: String(req.after), ...(req.limit !== undefined ? { limit: String(req.limit) } : {}) });
    const r = await this.#call('GET', `/chain?${q.toString()}`, undefined, chainAnswerJson);
    // The votes are checked by the caller's own VoteChain (a bad one is an alarm there, not dropped here).
    return r.ok ? ok({ votes: r.value.votes as unknown as Vote[], head: r.value.head }) : r;
  }

  /** Every shard's lease as the acting witness sees it, its head and its URL. */
  async leases(): Promise<Result<{ leases: LeaseView[]; head: ChainHead; leader: string }, WitnessError>> {
    const r = await this.#call('GET', '/leases', undefined, leasesAnswerJson);
    return r.ok ? ok({ ...r.value, leases: r.value.leases.map(leaseOfJson) }) : r;
  }

  async #answer(path: string, body: unknown): Promise<Result<WitnessAnswer, WitnessError>> {
    const r = await this.#call('POST', path, body, witnessAnswerJson);
    return r.ok ? ok(answerOfJson(r.value)) : r;
  }

  async #call<S extends z.ZodType>(
    method: 'GET' | 'POST',
    path: string,
    body: unknown,
    schema: S,
  ): Promise<Result<z.infer<S>, WitnessError>> {
    const deadline = AbortSignal.timeout(this.#o.timeoutMs ?? 1000);
    const queue = [this.#preferred, ...this.#urls.filter((u) => u !== this.#preferred)];
    const asked = new Set<string>();
    let last: WitnessError = unavailable('no witness was asked');
    const key = typeof this.#o.key === 'function' ? this.#o.key() : this.#o.key;
    if (!key) return err(unavailable(`site ${this.#o.siteId} is sealed: it cannot sign its calls to the witness`));
    try {
      while (queue.length && asked.size < this.#urls.length + 3) {
        const url = queue.shift()!;
        if (asked.has(url)) continue;
        asked.add(url);
        let res: Response;
        try {
          const token = this.#assertions.for({ serviceId: this.#o.siteId, key, site: 'witness' });
          res = await fetch(`${url}${WITNESS_API_PREFIX}${path}`, {
            method,
            headers: {
              authorization: `Bearer ${token}`,
              ...(body === undefined ? {} : { 'content-type': 'application/json' }),
            },
            ...(body === undefined ? {} : { body: JSON.stringify(body) }),
            signal: deadline,
          });
        } catch (e) {
          last = unavailable(`witness ${url} did not answer: ${deadline.aborted ? 'timed out' : reasonOf(e)}`);
          if (deadline.aborted) return err(last);
          continue;
        }
        const text = await res.text();
        let json: unknown;
        try {
          json = JSON.parse(text);
        } catch {
          last = unavailable(`witness ${url} answered ${res.status} without JSON`);
          continue;
        }
        if (res.ok) {
          const p = schema.safeParse(json);
          if (!p.success) return err(unavailable(`witness ${url} answered an unexpected shape: ${p.error.issues[0]?.message}`));
          this.#preferred = url;
          return ok(p.data);
        }
        const e = errorJson.safeParse(json);
        const code = e.success ? e.data.code : '';
        const message = e.success ? e.data.message : `witness ${url} answered ${res.status}`;
        if (code === 'not-leader' && e.success && e.data.leader) {
          const leader = trimSlash(e.data.leader);
          last = { code: 'not-leader', message, leader };
          if (!asked.has(leader)) queue.unshift(leader);
          continue;
        }
        if (res.status === 401) return err({ code: 'unauthorized', message });
        if (res.status === 400) return err({ code: 'bad-request', message });
        last = unavailable(`witness ${url}: ${message}`);
      }
      return err(last);
    } catch (e) {
      return err(unavailable(`witness call failed: ${reasonOf(e)}`));
    }
  }
}
