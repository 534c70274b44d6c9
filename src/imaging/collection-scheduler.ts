// Active collection on a schedule: every few minutes, each configured source PACS is asked
// for the last few study days and whatever medmesh lacks is pulled (Collector). A site-wide
// lease per source means one API node collects a source at a time, however many run; a node
// that dies mid-run leaves its lease to lapse and the next run goes on from the checkpoints.
import { reasonOf, type Logger } from '../common/index.ts';
import { claimLease, releaseLease, type Db } from '../db/index.ts';
import type { Collector, DayRun } from './collector.ts';

export interface CollectionSchedulerOptions {
  db: Db;
  /** One per source PACS. */
  collectors: readonly Collector[];
  /** This node, as lease holder. */
  holder: string;
  /** Time between runs (default 15 minutes); also how long a run's lease lasts without renewal. */
  everyMs?: number;
  /** Study days looked at per run, ending today (default 2: yesterday and today). */
  days?: number;
  /** The clock (tests); study days are taken in local time, as modalities write them. */
  now?: () => Date;
  onRun?: (run: SourceRun) => void;
  log: Logger;
}

export interface SourceRun {
  source: string;
  /** held-elsewhere: another node of the site holds this source's lease. */
  outcome: 'collected' | 'held-elsewhere' | 'failed';
  days: Array<{ ok: true; value: DayRun } | { ok: false; day: string; error: string }>;
  error?: string;
}

export class CollectionScheduler {
  readonly #o: CollectionSchedulerOptions;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<SourceRun[]> | undefined;
  #stopped = false;

  constructor(opts: CollectionSchedulerOptions) {
    this.#o = opts;
  }

  get everyMs(): number {
    return this.#o.everyMs ?? 15 * 60_000;
  }

  /**
   * A run in flight or the next one scheduled. False once stop() has resolved: no timer is left
   * to start another run (what a test asserts instead of waiting to see none come).
   */
  get scheduled(): boolean {
    return this.#timer !== undefined || this.#running !== undefined;
  }

  /** Runs now, then every `everyMs` until stopped. */
  start(): void {
    this.#stopped = false;
    const tick = () => {
      this.#timer = undefined;
      this.#running = this.runOnce()
        .catch(() => []) // runOnce does not throw; should it, the next period still comes
        .finally(() => {
          this.#running = undefined;
          if (!this.#stopped) this.#timer = setTimeout(tick, this.everyMs);
        });
    };
    tick();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#running?.catch(() => undefined);
  }

  /** One pass over every source (each under its lease); never throws. */
  async runOnce(): Promise<SourceRun[]> {
    const runs: SourceRun[] = [];
    for (const c of this.#o.collectors) {
      if (this.#stopped) break;
      const run = await this.#collect(c);
      runs.push(run);
      try {
        this.#o.onRun?.(run);
      } catch (e) {
        // The caller's report of a run failing does not stop the other sources; it is logged.
        this.#o.log.warn({ err: e, source: run.source }, `the report of a collection run failed: ${reasonOf(e)}`);
      }
    }
    return runs;
  }

  /** The study days of a run, oldest first (YYYYMMDD, local time). */
  days(): string[] {
    const now = (this.#o.now ?? (() => new Date()))();
    const out: string[] = [];
    for (let i = Math.max(1, this.#o.days ?? 2) - 1; i >= 0; i--) {
      const d = new Date(now.getFullYear(), now.getMonth(), now.getDate() - i);
      out.push(`${d.getFullYear()}${String(d.getMonth() + 1).padStart(2, '0')}${String(d.getDate()).padStart(2, '0')}`);
    }
    return out;
  }

  async #collect(c: Collector): Promise<SourceRun> {
    const { db, holder } = this.#o;
    const lease = { name: `collect:${c.sourceId}`, holder, seconds: Math.max(1, Math.ceil(this.everyMs / 1000)) };
    const days: SourceRun['days'] = [];
    try {
      // Taken once per period (not renewed at the start): a source is collected once per
      // period site-wide. Renewed between days so a long run keeps it.
      if (!(await claimLease(db, { ...lease, renew: false }))) return { source: c.sourceId, outcome: 'held-elsewhere', days };
      for (const day of this.days()) {
        if (this.#stopped) break;
        const r = await c.collectDay(day);
        days.push(r.ok ? r : { ok: false, day, error: r.error });
        await claimLease(db, { ...lease, renew: true });
      }
      if (this.#stopped) await releaseLease(db, lease);
      const failed = days.find((d) => !d.ok);
      return {
        source: c.sourceId,
        outcome: failed ? 'failed' : 'collected',
        days,
        ...(failed && !failed.ok ? { error: failed.error } : {}),
      };
    } catch (e) {
      // The database or the network failed under the collector: reported, tried next period.
      return { source: c.sourceId, outcome: 'failed', days, error: e instanceof Error ? e.message : String(e) };
    }
  }
}
