// Keeps a leadership alive and says when it may be gone: both stores renew the same way.
// A renewal is sent every ttl/3; the leadership counts as held until ttl after the send time
// of the last renewal that succeeded (the store computes its expiry after it receives the
// renewal, so the holder gives up first), less a safety margin for the rate difference of
// the two clocks and for a late timer. `lost` fires at that moment if no later renewal
// succeeded, or at once when the store answers that the leadership is gone.
import type { Logger } from '../common/index.ts';
import { reasonOf } from '../common/index.ts';

/** Part of the ttl the holder gives up early: clock rates and timer lateness (documented in docs/failover.md). */
export const SAFETY_MARGIN = 0.05;

export interface KeeperOptions {
  ttlMs: number;
  /** One renewal: true while held, false when the store says the leadership is gone. Rejects on failure. */
  renew(signal: AbortSignal): Promise<boolean>;
  /** Called once, when the leadership is gone or may be. */
  onLost(reason: Error): void;
  log: Logger;
  /** For log lines: which leadership. */
  what: string;
  /** performance.now() when the request that granted the leadership was sent. */
  grantedSentAt: number;
}

export class LeaseKeeper {
  readonly #o: KeeperOptions;
  #validUntil: number;
  #lastSentAt: number;
  #stopped = false;
  #tick: NodeJS.Timeout | undefined;
  #deadline: NodeJS.Timeout | undefined;
  #failures = 0;
  readonly #stop = new AbortController();

  constructor(o: KeeperOptions) {
    this.#o = o;
    this.#lastSentAt = o.grantedSentAt;
    this.#validUntil = o.grantedSentAt + this.#window();
    this.#armDeadline();
    this.#schedule(Math.floor(o.ttlMs / 3));
  }

  /** Renewals that failed (the store did not answer), for tests and metrics. */
  get failures(): number {
    return this.#failures;
  }

  /** performance.now() when the last renewal that succeeded (or the grant) was sent. */
  get lastSentAt(): number {
    return this.#lastSentAt;
  }

  /** Whether the leadership still counts as held by the local clock. */
  get held(): boolean {
    return !this.#stopped && performance.now() < this.#validUntil;
  }

  /** Stops renewing (resign, close); does not call onLost. */
  stop(): void {
    this.#stopped = true;
    this.#stop.abort();
    clearTimeout(this.#tick);
    clearTimeout(this.#deadline);
  }

  #window(): number {
    return this.#o.ttlMs * (1 - SAFETY_MARGIN);
  }

  #lose(reason: Error): void {
    if (this.#stopped) return;
    this.stop();
    this.#o.onLost(reason);
  }

  #armDeadline(): void {
    clearTimeout(this.#deadline);
    const wait = Math.max(0, this.#validUntil - performance.now());
    this.#deadline = setTimeout(() => {
      if (performance.now() >= this.#validUntil)
        this.#lose(new Error(`${this.#o.what}: no renewal succeeded within the ttl (${this.#o.ttlMs} ms)`));
      else this.#armDeadline();
    }, wait);
    this.#deadline.unref();
  }

  #schedule(ms: number): void {
    if (this.#stopped) return;
    this.#tick = setTimeout(() => {
      this.#renewOnce().catch((e: unknown) => this.#o.log.error({ err: reasonOf(e) }, `${this.#o.what}: renewal loop failed`));
    }, ms);
    this.#tick.unref();
  }

  async #renewOnce(): Promise<void> {
    const interval = Math.max(1, Math.floor(this.#o.ttlMs / 3));
    const sentAt = performance.now();
    try {
      // A renewal that hangs is abandoned after one interval; the next one is sent meanwhile.
      const attempt = AbortSignal.any([this.#stop.signal, AbortSignal.timeout(interval)]);
      const held = await this.#o.renew(attempt);
      if (this.#stopped) return;
      if (!held) {
        this.#lose(new Error(`${this.#o.what}: the store says the leadership is gone`));
        return;
      }
      this.#lastSentAt = Math.max(this.#lastSentAt, sentAt);
      this.#validUntil = Math.max(this.#validUntil, sentAt + this.#window());
      this.#armDeadline();
      this.#schedule(Math.max(0, interval - (performance.now() - sentAt)));
    } catch (e) {
      if (this.#stopped) return;
      this.#failures++;
      this.#o.log.warn({ err: reasonOf(e), failures: this.#failures }, `${this.#o.what}: renewal failed`);
      this.#schedule(Math.min(interval / 2, 200));
    }
  }
}
