// Group commit for plain creates: creates that arrive while a write is in flight are
// written together by one statement (one round trip, one commit) once it finishes. Alone,
// a create is written at once (a batch of one), so latency does not grow.
// Each caller is answered only after the statement that holds its row has committed.
import type { Queryable } from '../db/index.ts';
import { writeVersions, type PendingWrite } from './write-version.ts';

export type { PendingWrite };

interface Waiting extends PendingWrite {
  resolve: () => void;
  reject: (e: unknown) => void;
}

export class CreateBatcher {
  readonly #q: Queryable;
  readonly #max: number;
  readonly #maxInFlight: number;
  readonly #fenced: boolean;
  #queue: Waiting[] = [];
  #inFlight = 0;

  constructor(q: Queryable, opts: { maxBatch?: number; maxInFlight?: number; fenced?: boolean } = {}) {
    this.#q = q;
    this.#fenced = opts.fenced ?? false;
    this.#max = opts.maxBatch ?? 64;
    // A few statements in flight keep the pool busy while the next batch gathers.
    this.#maxInFlight = opts.maxInFlight ?? 2;
  }

  write(item: PendingWrite): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ ...item, resolve, reject });
      if (this.#inFlight < this.#maxInFlight) void this.#drain();
    });
  }

  async #drain(): Promise<void> {
    this.#inFlight++;
    try {
      while (this.#queue.length) {
        const batch = this.#queue.splice(0, this.#max);
        try {
          await writeVersions(this.#q, batch, { replace: false, fenced: this.#fenced });
          batch.forEach((w) => w.resolve());
        } catch (e) {
          if (batch.length === 1) batch[0]!.reject(e);
          // One bad row must not fail its neighbours: retry each on its own.
          else for (const w of batch) await writeOne(this.#q, w, this.#fenced).then(w.resolve, w.reject);
        }
      }
    } finally {
      this.#inFlight--;
    }
  }
}

function writeOne(q: Queryable, w: PendingWrite, fenced: boolean): Promise<void> {
  return writeVersions(q, [w], { replace: false, fenced });
}
