// A leadership this process holds, the same for both stores: renewed by a LeaseKeeper, `lost`
// aborted when it is gone or may be, and released (row deleted, lease revoked) when given up.
import type { Logger } from '../common/index.ts';
import { reasonOf } from '../common/index.ts';
import type { Leadership } from './coordination.ts';
import { LeaseKeeper } from './keeper.ts';

export interface HeldLeadershipOptions {
  name: string;
  candidate: string;
  fence: bigint;
  ttlMs: number;
  /** performance.now() when the request that won the election was sent. */
  grantedSentAt: number;
  log: Logger;
  renew(signal: AbortSignal): Promise<boolean>;
  /** Gives the leadership back in the store (best effort: it lapses after the ttl anyway). */
  release(): Promise<void>;
  /** The leadership ended (lost, resigned): the store forgets it. */
  onEnd(l: HeldLeadership): void;
}

export class HeldLeadership implements Leadership {
  readonly name: string;
  readonly candidate: string;
  readonly fence: bigint;
  readonly #lost = new AbortController();
  readonly #keeper: LeaseKeeper;
  readonly #o: HeldLeadershipOptions;
  #released: Promise<void> | undefined;

  constructor(o: HeldLeadershipOptions) {
    this.#o = o;
    this.name = o.name;
    this.candidate = o.candidate;
    this.fence = o.fence;
    this.#keeper = new LeaseKeeper({
      ttlMs: o.ttlMs,
      grantedSentAt: o.grantedSentAt,
      renew: (signal) => o.renew(signal),
      log: o.log,
      what: `leadership ${o.name} (fence ${o.fence})`,
      onLost: (reason) => {
        o.log.warn({ election: o.name, fence: String(o.fence), reason: reason.message }, 'leadership lost');
        this.#end(reason);
      },
    });
  }

  get lost(): AbortSignal {
    return this.#lost.signal;
  }

  /** Held by the local clock and not given up: a fenced write may be tried. */
  get held(): boolean {
    return !this.#lost.signal.aborted && this.#keeper.held;
  }

  resign(): Promise<void> {
    this.#end(new Error(`leadership ${this.name} (fence ${this.fence}) was resigned`));
    return this.#released ?? Promise.resolve();
  }

  #end(reason: Error): void {
    this.#keeper.stop();
    if (this.#lost.signal.aborted) return;
    this.#lost.abort(reason);
    this.#o.onEnd(this);
    this.#released = this.#o.release().catch((e: unknown) => {
      this.#o.log.warn({ election: this.name, fence: String(this.fence), err: reasonOf(e) }, 'giving the leadership back failed');
    });
  }
}
