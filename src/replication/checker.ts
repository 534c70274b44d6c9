// Runs consistency checks of this site against its peers: on demand (operators, `medmesh
// verify`) and on a schedule, once per site whatever the number of API nodes (a lease per
// peer in replication_lease). Results go to the link metrics. With repair, the check is run
// again afterwards so the report says what remains.
import { randomUUID } from 'node:crypto';
import type { Sm2PrivateKey, Sm2PublicKey } from '../security/crypto/index.ts';
import type { ApplyContext } from './apply-batch.ts';
import type { ReplicationMetrics } from './metrics.ts';
import { httpVerifyPeer } from './verify-client.ts';
import { claimLease } from '../db/index.ts';
import { divergentResources, verifyPair, watermarkBefore, type VerifyPeer, type VerifyReport } from './verify.ts';

export interface CheckerOptions {
  apply: ApplyContext;
  /** Peer id -> base URL of its API. */
  peers: () => ReadonlyMap<string, string>;
  key: () => Sm2PrivateKey | undefined;
  peerKey: (peer: string) => Promise<Sm2PublicKey | undefined>;
  metrics?: ReplicationMetrics;
  buckets?: number;
  onError?: (peer: string, message: string) => void;
}

export interface CheckRequest {
  peers?: readonly string[];
  repair?: boolean;
  /** Changes younger than this may still be on the wire: the watermark is this far back. */
  graceMs?: number;
}

export class ConsistencyChecker {
  readonly #o: CheckerOptions;
  readonly #holder = randomUUID();
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<unknown> | undefined;

  constructor(opts: CheckerOptions) {
    this.#o = opts;
  }

  async peer(id: string): Promise<VerifyPeer> {
    const url = this.#o.peers().get(id);
    if (!url) throw new Error(`site ${this.#o.apply.siteId} has no link to ${id}`);
    const key = this.#o.key();
    if (!key) throw new Error(`site ${this.#o.apply.siteId} is sealed: it cannot authenticate to ${id}`);
    const peerKey = await this.#o.peerKey(id);
    if (!peerKey) throw new Error(`no public key is registered for site ${id}`);
    return httpVerifyPeer({ peer: { id, url }, selfId: this.#o.apply.siteId, key, peerKey });
  }

  async run(req: CheckRequest = {}): Promise<VerifyReport[]> {
    const ids = req.peers?.length ? req.peers : [...this.#o.peers().keys()];
    const reports: VerifyReport[] = [];
    for (const id of ids) {
      const peer = await this.peer(id);
      const watermark = watermarkBefore(req.graceMs ?? 5000);
      const opts = { apply: this.#o.apply, peer, watermark, ...(this.#o.buckets ? { buckets: this.#o.buckets } : {}) };
      let report = await verifyPair({ ...opts, repair: req.repair ?? false });
      if (report.repair) {
        const repair = report.repair;
        const before = divergentResources(report);
        report = { ...(await verifyPair(opts)), repair, divergentBeforeRepair: before };
      }
      this.#o.metrics?.verified(report);
      reports.push(report);
    }
    return reports;
  }

  /** Checks every peer every `everyMs` (no repair: divergence is an operator's call). */
  start(everyMs: number): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => {
      if (this.#running) return;
      this.#running = this.#scheduled(everyMs)
        .catch((e: unknown) => {
          // #scheduled reports every peer's failure itself: reaching this is a bug, and must not end the process.
          process.emitWarning(
            `scheduled consistency check failed: ${e instanceof Error ? e.message : String(e)}`,
            'MedmeshCheckerWarning',
          );
        })
        .finally(() => (this.#running = undefined));
    }, everyMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#running;
  }

  async #scheduled(everyMs: number): Promise<void> {
    for (const id of this.#o.peers().keys()) {
      try {
        // One node of the site checks each peer per period: the lease outlives the period's start.
        const mine = await claimLease(this.#o.apply.db, {
          name: `verify:${id}`,
          holder: this.#holder,
          seconds: Math.max(1, Math.floor(everyMs / 1000) - 1),
          renew: false,
        });
        if (mine) await this.run({ peers: [id] });
      } catch (e) {
        // One peer failing (down, sealed, answering errors) neither stops the schedule nor hides: metrics and the log say so.
        const message = e instanceof Error ? e.message : String(e);
        this.#o.metrics?.verifyFailed(id, message);
        try {
          this.#o.onError?.(id, message);
        } catch (thrown) {
          process.emitWarning(`consistency check callback threw: ${String(thrown)}`, 'MedmeshCheckerWarning');
        }
      }
    }
  }
}
