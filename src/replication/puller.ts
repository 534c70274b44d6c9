// One puller per peer: takes the site-wide lease for that peer, long-polls the peer's
// changefeed with this site's service assertion, opens the sealed page and applies it with
// the cursor in one transaction. The cursor makes every break resumable; the loop never ends
// on its own (every failure is reported, counted and retried).
//
// Retrying: a peer that does not answer at all (connection refused, host unreachable, or a
// 502/503: stopped, restarting, sealed) is asked again every `probeMs` (0.5 s), which costs
// it nothing, so a restarted peer is noticed at once. A peer that answers but fails (500, a
// page that does not open or apply, a timeout) is backed off exponentially with jitter up to
// `backoff.maxMs`, so a struggling peer is not hammered; during such a wait a TCP probe every
// `probeMs` notices the peer going away and coming back (a restart) and ends the wait.
import { randomUUID } from 'node:crypto';
import { connect } from 'node:net';
import { AssertionCache } from '../security/identity/index.ts';
import type { Sm2PrivateKey, Sm2PublicKey } from '../security/crypto/index.ts';
import { applyBatch, cursorFor, type ApplyContext, type ApplyReport } from './apply-batch.ts';
import { feedAad, MAX_FRAME_BYTES, openPage } from './wire.ts';
import { LinkKeyReceiver } from './link-keys.ts';
import { claimLease, releaseLease } from '../db/index.ts';
import type { ReplicationMetrics } from './metrics.ts';

export interface PullerOptions {
  peer: { id: string; url: string };
  /** This site's SM2 key: signs its service assertions and opens the pages sealed to it. */
  key: () => Sm2PrivateKey | undefined;
  /** The peer's registered public key: pages must be signed with it. */
  peerKey: () => Promise<Sm2PublicKey | undefined>;
  apply: ApplyContext;
  waitSeconds?: number;
  limit?: number;
  leaseSeconds?: number;
  /** Backoff for a peer that answers but fails (default 200 ms doubling to 30 s). */
  backoff?: { minMs: number; maxMs: number };
  /** Retry period while the peer does not answer, and TCP probe period during a backoff (default 500 ms). */
  probeMs?: number;
  /** A pull not answered within the long-poll wait plus this is abandoned (default 10 s). */
  answerGraceMs?: number;
  /** Pause after an empty answer (default 250 ms). */
  idleMs?: number;
  onReport?: (r: ApplyReport) => void;
  /** Failures, at most once per `reportEveryMs` for the same message (the count of the others is added). */
  onError?: (message: string) => void;
  /** The link works again after failures. */
  onRecovered?: (o: { downMs: number; failures: number }) => void;
  /** Repeats of one failure message are reported at most this often (default 30 s). */
  reportEveryMs?: number;
  /** The site's link metrics (lag, totals, link state). */
  metrics?: ReplicationMetrics;
}

/** Why a pull failed: `unavailable` when the peer did not answer (or said it cannot serve now), `failing` otherwise. */
export class PullFailure extends Error {
  readonly kind: 'unavailable' | 'failing';

  constructor(kind: 'unavailable' | 'failing', message: string) {
    super(message);
    this.kind = kind;
  }
}

/** Errors at connect time: nothing reached the peer, asking again costs it nothing. */
const UNREACHABLE = new Set([
  'ECONNREFUSED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EHOSTDOWN',
  'ENETDOWN',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EADDRNOTAVAIL',
  'UND_ERR_CONNECT_TIMEOUT',
]);

function codesOf(e: unknown, depth = 0): string[] {
  if (!e || typeof e !== 'object' || depth > 3) return [];
  const o = e as { code?: unknown; cause?: unknown; errors?: unknown };
  return [
    ...(typeof o.code === 'string' ? [o.code] : []),
    ...codesOf(o.cause, depth + 1),
    ...(Array.isArray(o.errors) ? o.errors.flatMap((x) => codesOf(x, depth + 1)) : []),
  ];
}

function describe(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  const cause = e.cause instanceof Error ? `: ${e.cause.message}` : '';
  return `${e.message}${cause}`;
}

/** Classifies what a pull threw. */
export function pullFailure(e: unknown, peer: string): PullFailure {
  if (e instanceof PullFailure) return e;
  if (e instanceof Error && e.name === 'TimeoutError')
    return new PullFailure('failing', `${peer} did not answer in time: ${e.message}`);
  const codes = codesOf(e);
  if (codes.length && codes.every((c) => UNREACHABLE.has(c)))
    return new PullFailure('unavailable', `${peer} is unreachable: ${describe(e)}`);
  return new PullFailure('failing', `pull from ${peer} failed: ${describe(e)}`);
}

/** Reads a body of at most `max` bytes (a peer cannot make this process hold more). */
async function readCapped(res: Response, max: number): Promise<Buffer> {
  const declared = Number(res.headers.get('content-length'));
  if (Number.isFinite(declared) && declared > max) {
    await res.body?.cancel().catch(() => undefined); // the answer is refused either way
    throw new Error(`answer of ${declared} bytes exceeds ${max}`);
  }
  const chunks: Uint8Array[] = [];
  let n = 0;
  if (res.body)
    for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
      n += chunk.length;
      if (n > max) throw new Error(`answer exceeds ${max} bytes`); // leaving the loop cancels the stream
      chunks.push(chunk);
    }
  return Buffer.concat(chunks);
}

/** Whether a TCP connection to the URL's host and port opens within `timeoutMs`. */
function reachable(url: string, timeoutMs: number): Promise<boolean> {
  const u = new URL(url);
  const port = Number(u.port || (u.protocol === 'https:' ? 443 : 80));
  return new Promise((resolve) => {
    const socket = connect({ host: u.hostname.replace(/^\[|\]$/g, ''), port });
    const done = (ok: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

export class Puller {
  readonly #o: PullerOptions;
  readonly #holder = randomUUID();
  readonly #assertions = new AssertionCache();
  readonly #linkKeys = new LinkKeyReceiver();
  #running = false;
  #loop: Promise<void> | undefined;
  #abort = new AbortController();
  /** The failure streak: when it began, how many, and what was last reported to onError. */
  #streak: { since: number; failures: number; reported?: { message: string; at: number; suppressed: number } } | undefined;

  constructor(opts: PullerOptions) {
    this.#o = opts;
  }

  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#abort = new AbortController();
    this.#loop = this.#run().catch((e: unknown) => {
      // #run handles every failure itself: reaching this is a bug, and must not end the process.
      process.emitWarning(`replication puller for ${this.#o.peer.id} stopped: ${describe(e)}`, 'MedmeshPullerWarning');
    });
  }

  async stop(): Promise<void> {
    this.#running = false;
    this.#abort.abort();
    await this.#loop;
    this.#o.metrics?.idle(this.#o.peer.id, { by: this.#holder });
    // Hand the link over at once: another node (or a restarted puller) need not wait for the lease to lapse.
    await releaseLease(this.#o.apply.db, { name: this.#o.peer.id, holder: this.#holder }).catch((e: unknown) =>
      this.#call(() => this.#o.onError?.(`could not hand back the lease (it lapses by itself): ${describe(e)}`)),
    );
  }

  /** One pull and apply; what it brought and whether the peer said more is ready. `wait` overrides the long-poll wait. */
  async pullOnce(opts: { wait?: number } = {}): Promise<{ changes: number; more: boolean }> {
    const { peer, apply } = this.#o;
    const key = this.#o.key();
    if (!key) throw new PullFailure('failing', `site ${apply.siteId} is sealed: it cannot authenticate to ${peer.id}`);
    const after = await cursorFor(apply.db, peer.id);
    const wait = opts.wait ?? this.#o.waitSeconds ?? 20;
    const url = `${peer.url}/replication/changes?after=${after.txid}:${after.pos}&limit=${this.#o.limit ?? 500}&wait=${wait}`;
    // A peer that accepts the connection but never answers (stopped, partitioned) must not hold the link.
    const signal = AbortSignal.any([this.#abort.signal, AbortSignal.timeout(wait * 1000 + (this.#o.answerGraceMs ?? 10_000))]);
    const res = await fetch(url, {
      headers: { authorization: `MedmeshService ${this.#assertions.for({ serviceId: apply.siteId, key, site: peer.id })}` },
      signal,
    });
    if (res.status !== 200) {
      const text = await readCapped(res, 4096).then(
        (b) => b.toString('utf8').slice(0, 300),
        (e: unknown) => `(answer unreadable: ${describe(e)})`,
      );
      // 502/503: a proxy without its peer behind it, or a peer that cannot serve now (sealed, starting, stopping).
      throw new PullFailure(
        res.status === 502 || res.status === 503 ? 'unavailable' : 'failing',
        `${peer.id} answered ${res.status}: ${text}`,
      );
    }
    const frame = await readCapped(res, MAX_FRAME_BYTES);
    const senderKey = await this.#o.peerKey();
    if (!senderKey)
      throw new Error(`no public key is registered for site ${peer.id}: register it (iam_service) before pulling from it`);
    const opened = openPage(new Uint8Array(frame), {
      from: peer.id,
      to: apply.siteId,
      keys: this.#linkKeys,
      key,
      senderKey,
      aad: feedAad(peer.id, apply.siteId, after),
    });
    if (!opened.ok) throw new Error(`page from ${peer.id} refused: ${opened.error.message}`);
    const report = await applyBatch(apply, {
      peer: peer.id,
      changes: opened.page.changes,
      next: opened.page.next,
      expect: after,
    });
    this.#call(() => this.#o.onReport?.(report));
    const newest = opened.page.changes.reduce<bigint | undefined>(
      (m, c) => (m === undefined || c.hlc > m ? c.hlc : m),
      undefined,
    );
    this.#o.metrics?.pulled(peer.id, {
      report,
      newest,
      backlog: Number(res.headers.get('x-medmesh-backlog') ?? 0) || 0,
      by: this.#holder,
    });
    return { changes: opened.page.changes.length, more: opened.page.more };
  }

  async #run(): Promise<void> {
    const { minMs, maxMs } = this.#o.backoff ?? { minMs: 200, maxMs: 30_000 };
    const probeMs = this.#o.probeMs ?? 500;
    const peer = this.#o.peer.id;
    let delay = 0;
    let holding = false;
    // After a start or a failure, ask without waiting: the link's state is known at once, not after a long poll.
    let fresh = true;
    while (this.#running) {
      try {
        if (
          !(await claimLease(this.#o.apply.db, {
            name: peer,
            holder: this.#holder,
            seconds: this.#o.leaseSeconds ?? 30,
            renew: true,
          }))
        ) {
          holding = false;
          this.#o.metrics?.idle(peer, { by: this.#holder });
          await this.#sleep((this.#o.leaseSeconds ?? 30) * 500); // another node of this site pulls this peer
          continue;
        }
        if (!holding) {
          holding = true;
          fresh = true;
          this.#o.metrics?.connecting(peer, { by: this.#holder });
        }
        if (!this.#o.key()) {
          // Sealed: nothing to back off from, the custodians may unseal at any moment.
          this.#o.metrics?.failed(peer, `site ${this.#o.apply.siteId} is sealed`, { by: this.#holder });
          await this.#sleep(1000);
          continue;
        }
        const got = await this.pullOnce(fresh ? { wait: 0 } : {});
        this.#recovered();
        delay = 0;
        const wasFresh = fresh;
        fresh = false;
        // The peer long-polls; should it answer at once with nothing, do not spin.
        if (got.changes === 0 && !got.more && !wasFresh) await this.#sleep(this.#o.idleMs ?? 250);
      } catch (e) {
        if (!this.#running) break;
        const failure = pullFailure(e, peer);
        fresh = true;
        this.#failed(failure.message);
        if (failure.kind === 'unavailable') await this.#sleep(probeMs * (0.5 + Math.random()));
        else {
          delay = Math.min(maxMs, Math.max(minMs, delay * 2));
          await this.#backoff(delay / 2 + Math.random() * (delay / 2), probeMs); // jitter: peers do not retry in step
        }
      }
    }
  }

  #failed(message: string): void {
    const now = Date.now();
    this.#o.metrics?.failed(this.#o.peer.id, message, { by: this.#holder, now });
    const s = (this.#streak ??= { since: now, failures: 0 });
    s.failures++;
    const r = s.reported;
    if (r && r.message === message && now - r.at < (this.#o.reportEveryMs ?? 30_000)) {
      r.suppressed++;
      return;
    }
    const more = r?.suppressed ? ` (${r.suppressed} more failed pulls since the last report)` : '';
    s.reported = { message, at: now, suppressed: 0 };
    this.#call(() => this.#o.onError?.(`${message}${more}`));
  }

  #recovered(): void {
    const s = this.#streak;
    if (!s) return;
    this.#streak = undefined;
    this.#call(() => this.#o.onRecovered?.({ downMs: Date.now() - s.since, failures: s.failures }));
  }

  /** Callbacks are the caller's code: a throw there must not end the loop. */
  #call(f: () => void): void {
    try {
      f();
    } catch (e) {
      process.emitWarning(`replication callback for ${this.#o.peer.id} threw: ${describe(e)}`, 'MedmeshPullerWarning');
    }
  }

  /** Waits `ms`, or less if a TCP probe sees the peer go away and come back (restarted) meanwhile. */
  async #backoff(ms: number, probeMs: number): Promise<void> {
    const until = Date.now() + ms;
    let wentAway = false;
    while (this.#running && Date.now() < until) {
      await this.#sleep(Math.min(probeMs, until - Date.now()));
      if (!this.#running || Date.now() >= until) return;
      const up = await reachable(this.#o.peer.url, Math.min(1000, probeMs * 2));
      if (!up) wentAway = true;
      else if (wentAway) return;
    }
  }

  #sleep(ms: number): Promise<void> {
    const signal = this.#abort.signal;
    if (signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      // The listener goes with the timer: a loop that runs for months must not pile them up on the signal.
      const done = () => {
        clearTimeout(t);
        signal.removeEventListener('abort', done);
        resolve();
      };
      const t = setTimeout(done, ms);
      signal.addEventListener('abort', done, { once: true });
    });
  }
}
