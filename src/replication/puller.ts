// One puller per peer: takes the site-wide lease for that peer, long-polls the peer's
// changefeed with this site's service assertion, opens the sealed page and applies it with
// the cursor in one transaction. Transport failures retry forever with exponential backoff
// and jitter; the cursor makes every break resumable.
import { randomUUID } from 'node:crypto';
import { AssertionCache } from '../security/identity/index.ts';
import type { Sm2PrivateKey, Sm2PublicKey } from '../security/crypto/index.ts';
import { applyBatch, cursorFor, type ApplyContext, type ApplyReport } from './apply-batch.ts';
import { feedAad, openPage } from './wire.ts';
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
  backoff?: { minMs: number; maxMs: number };
  /** Pause after an empty answer (default 250 ms). */
  idleMs?: number;
  onReport?: (r: ApplyReport) => void;
  onError?: (message: string) => void;
  /** The site's link metrics (lag, totals, link state). */
  metrics?: ReplicationMetrics;
}

export class Puller {
  readonly #o: PullerOptions;
  readonly #holder = randomUUID();
  readonly #assertions = new AssertionCache();
  readonly #linkKeys = new LinkKeyReceiver();
  #running = false;
  #loop: Promise<void> | undefined;
  #abort = new AbortController();

  constructor(opts: PullerOptions) {
    this.#o = opts;
  }

  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#abort = new AbortController();
    this.#loop = this.#run();
  }

  async stop(): Promise<void> {
    this.#running = false;
    this.#abort.abort();
    await this.#loop;
    // Hand the link over at once: another node (or a restarted puller) need not wait for the lease to lapse.
    await releaseLease(this.#o.apply.db, { name: this.#o.peer.id, holder: this.#holder }).catch(() => undefined);
  }

  /** One pull and apply; what it brought and whether the peer said more is ready. */
  async pullOnce(): Promise<{ changes: number; more: boolean }> {
    const { peer, apply } = this.#o;
    const key = this.#o.key();
    if (!key) throw new Error(`site ${apply.siteId} is sealed: it cannot authenticate to ${peer.id}`);
    const after = await cursorFor(apply.db, peer.id);
    const url = `${peer.url}/replication/changes?after=${after.txid}:${after.pos}&limit=${this.#o.limit ?? 500}&wait=${this.#o.waitSeconds ?? 20}`;
    const res = await fetch(url, {
      headers: { authorization: `MedmeshService ${this.#assertions.for({ serviceId: apply.siteId, key, site: peer.id })}` },
      signal: this.#abort.signal,
    });
    if (res.status !== 200) throw new Error(`${peer.id} answered ${res.status}: ${(await res.text()).slice(0, 300)}`);
    const senderKey = await this.#o.peerKey();
    if (!senderKey)
      throw new Error(`no public key is registered for site ${peer.id}: register it (iam_service) before pulling from it`);
    const opened = openPage(new Uint8Array(await res.arrayBuffer()), {
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
    this.#o.onReport?.(report);
    const newest = opened.page.changes.reduce<bigint | undefined>(
      (m, c) => (m === undefined || c.hlc > m ? c.hlc : m),
      undefined,
    );
    this.#o.metrics?.pulled(peer.id, report, newest, Date.now(), Number(res.headers.get('x-medmesh-backlog') ?? 0) || 0);
    return { changes: opened.page.changes.length, more: opened.page.more };
  }

  async #run(): Promise<void> {
    const { minMs, maxMs } = this.#o.backoff ?? { minMs: 200, maxMs: 30_000 };
    let delay = 0;
    while (this.#running) {
      try {
        if (
          !(await claimLease(this.#o.apply.db, {
            name: this.#o.peer.id,
            holder: this.#holder,
            seconds: this.#o.leaseSeconds ?? 30,
            renew: true,
          }))
        ) {
          await this.#sleep((this.#o.leaseSeconds ?? 30) * 500); // another node of this site pulls this peer
          continue;
        }
        if (!this.#o.key()) {
          // Sealed: nothing to back off from, the custodians may unseal at any moment.
          this.#o.metrics?.failed(this.#o.peer.id, `site ${this.#o.apply.siteId} is sealed`);
          await this.#sleep(1000);
          continue;
        }
        const got = await this.pullOnce();
        delay = 0;
        // The peer long-polls; should it answer at once with nothing, do not spin.
        if (got.changes === 0 && !got.more) await this.#sleep(this.#o.idleMs ?? 250);
      } catch (e) {
        if (!this.#running) break;
        const message = e instanceof Error ? e.message : String(e);
        this.#o.metrics?.failed(this.#o.peer.id, message);
        this.#o.onError?.(message);
        delay = Math.min(maxMs, Math.max(minMs, delay * 2));
        await this.#sleep(delay / 2 + Math.random() * (delay / 2)); // jitter: peers do not retry in step
      }
    }
  }

  #sleep(ms: number): Promise<void> {
    if (this.#abort.signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      this.#abort.signal.addEventListener(
        'abort',
        () => {
          clearTimeout(t);
          resolve();
        },
        { once: true },
      );
    });
  }
}
