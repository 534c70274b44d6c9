// A patient's home shard, from the EMPI directory. Every write into a patient's compartment
// asks for it before it may write (residency), and alone that round trip costs about as much
// as the write itself. HomeLookup answers the lookups of concurrent plain writes with one
// query per batch; a lookup is only ever answered by a query that started after it was
// asked, so it sees every patient committed before it, exactly as its own query would.
// A placement, once committed, never changes (empi_patient rows are only ever inserted:
// first placement wins, and moving a patient is not an operation medmesh has), so a home
// found is remembered and answered again without a query; a patient not found is asked
// for again next time. Should moving a patient ever exist, it must clear these caches.
import type { Queryable } from '../db/index.ts';

export interface EmpiRecord {
  shard: string;
  reason: string;
}

/** One lookup, inside the caller's transaction when it has one. */
export async function empiRecord(q: Queryable, patientId: string): Promise<EmpiRecord | undefined> {
  const { rows } = await q.query<{ home_shard: string; reason: string }>(
    'SELECT home_shard, reason FROM empi_patient WHERE patient_id = $1',
    [patientId],
  );
  return rows[0] ? { shard: rows[0].home_shard, reason: rows[0].reason } : undefined;
}

interface Waiting {
  resolve: (r: EmpiRecord | undefined) => void;
  reject: (e: unknown) => void;
}

export class HomeLookup {
  readonly #q: Queryable;
  readonly #maxInFlight: number;
  readonly #maxKnown: number;
  /** Committed placements, oldest first (evicted first once `maxKnown` are held). */
  readonly #known = new Map<string, EmpiRecord>();
  #queue = new Map<string, Waiting[]>();
  #inFlight = 0;

  /** `q` is the pool (never a transaction): batches belong to no caller's transaction. */
  constructor(q: Queryable, opts: { maxInFlight?: number; maxKnown?: number } = {}) {
    this.#q = q;
    this.#maxInFlight = opts.maxInFlight ?? 2;
    this.#maxKnown = opts.maxKnown ?? 100_000;
  }

  find(patientId: string): Promise<EmpiRecord | undefined> {
    const known = this.#known.get(patientId);
    if (known) return Promise.resolve(known);
    return new Promise((resolve, reject) => {
      const waiting = this.#queue.get(patientId);
      if (waiting) waiting.push({ resolve, reject });
      else this.#queue.set(patientId, [{ resolve, reject }]);
      if (this.#inFlight < this.#maxInFlight) void this.#drain();
    });
  }

  async #drain(): Promise<void> {
    this.#inFlight++;
    try {
      while (this.#queue.size) {
        // Taken whole before the query starts: what is asked from now on waits for the next one.
        const batch = this.#queue;
        this.#queue = new Map();
        try {
          const { rows } = await this.#q.query<{ patient_id: string; home_shard: string; reason: string }>(
            'SELECT patient_id, home_shard, reason FROM empi_patient WHERE patient_id = ANY($1::text[])',
            [[...batch.keys()]],
            { name: 'medmesh_home_lookup' },
          );
          const found = new Map(rows.map((r) => [r.patient_id, { shard: r.home_shard, reason: r.reason }]));
          for (const [id, home] of found) this.#remember(id, home);
          for (const [id, waiting] of batch) for (const w of waiting) w.resolve(found.get(id));
        } catch (e) {
          for (const waiting of batch.values()) for (const w of waiting) w.reject(e);
        }
      }
    } finally {
      this.#inFlight--;
    }
  }

  #remember(patientId: string, home: EmpiRecord): void {
    if (this.#known.size >= this.#maxKnown) this.#known.delete(this.#known.keys().next().value!);
    this.#known.set(patientId, home);
  }
}
