// Writes audit entries into `audit_entry`: gapless sequence numbers, HMAC-SM3 per entry,
// concurrent appends sharing one statement (group commit), and several API nodes of one
// site appending to the same log.
import type { Db } from '../../db/index.ts';
import { hmacSm3Keyed } from '../crypto/sm3.ts';

export const APPEND_LOCK = 7_240_612;

/** One entry to append: its canonical bytes, and the search columns beside them. */
export interface PendingEntry {
  /** Stored and MAC'd as they are. */
  bytes: Buffer;
  /** The entry's `resource` and `actor.id`, stored beside the bytes for searches (verify checks them). */
  entity: string | null;
  agent: string;
}

interface Waiting extends PendingEntry {
  resolve: (seq: number) => void;
  reject: (e: unknown) => void;
}

/** HMAC-SM3(key, seq as 8 bytes big-endian || entry). */
export function entryMac(macKey: Uint8Array, seq: number, entry: Uint8Array): Buffer {
  return entryMacFor(macKey)(seq, entry);
}

/** The same MAC with the key schedule done once, for code that MACs many entries. */
export function entryMacFor(macKey: Uint8Array): (seq: number, entry: Uint8Array) => Buffer {
  const mac = hmacSm3Keyed(macKey);
  return (seq, entry) => {
    const s = Buffer.alloc(8);
    s.writeBigUInt64BE(BigInt(seq));
    return mac(s, entry);
  };
}

export interface DbAppenderOptions {
  db: Db;
  macKey: Uint8Array;
  /** Most entries one statement writes. */
  maxBatch?: number;
}

/** One statement at a time, taking every entry queued meanwhile; resolves each with its sequence number once committed. */
export class DbAppender {
  readonly #o: DbAppenderOptions;
  readonly #mac: (seq: number, entry: Uint8Array) => Buffer;
  #queue: Waiting[] = [];
  /** The loop writing the queue, while it runs (cleared in the same turn as it sees the queue empty). */
  #draining: Promise<void> | undefined;
  /** Where this node believes the log ends (after its own last append). */
  #nextSeq: number | undefined;

  constructor(opts: DbAppenderOptions) {
    this.#o = opts;
    this.#mac = entryMacFor(opts.macKey);
  }

  append(entry: PendingEntry): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ ...entry, resolve, reject });
      // The loop writes for every caller: it is none of theirs (no caller's signal or transaction).
      this.#draining ??= this.#o.db.detach(() => this.#drain());
    });
  }

  /** Resolves once every entry appended so far is written (or has failed). */
  async close(): Promise<void> {
    await this.#draining;
  }

  async #drain(): Promise<void> {
    await Promise.resolve(); // a microtask later: entries queued in the same turn share the first statement
    // The loop's last look at the queue and the clearing of #draining happen in one turn, so an
    // entry queued after it starts a new drain.
    while (this.#queue.length) {
      const batch = this.#queue.splice(0, this.#o.maxBatch ?? 2000);
      try {
        const first = (await this.#appendOptimistic(batch)) ?? (await this.#appendLocked(batch));
        this.#nextSeq = first + batch.length;
        batch.forEach((w, i) => w.resolve(first + i));
      } catch (e) {
        this.#nextSeq = undefined;
        batch.forEach((w) => w.reject(e));
      }
    }
    this.#draining = undefined;
  }

  /**
   * One statement when this node wrote the last entries (the usual case): it inserts only if
   * the log still ends where this node left it; the primary key stops a racing node. Returns
   * undefined when the guess was wrong, and the locked path takes over.
   */
  async #appendOptimistic(batch: Waiting[]): Promise<number | undefined> {
    const start = this.#nextSeq;
    if (start === undefined) return undefined;
    try {
      const { rows } = await this.#o.db.query<{ n: number }>(
        // The advisory lock (held to the end of this statement's transaction) keeps the locked
        // path from reading the end of the log while this insert is in flight. max(seq) stays a
        // one-row index probe: it must not be joined with anything.
        `WITH lock AS (SELECT pg_advisory_xact_lock($7)),
         ins AS (INSERT INTO audit_entry (seq, entry, mac, entity, agent)
           SELECT * FROM unnest($1::bigint[], $2::text[]::bytea[], $3::text[]::bytea[], $4::text[], $5::text[])
           WHERE (SELECT coalesce(max(seq) + 1, 0) FROM audit_entry) = $6::bigint AND (SELECT true FROM lock) RETURNING 1)
         SELECT count(*)::int AS n FROM ins`,
        [...this.#rows(batch, start), start, APPEND_LOCK],
        { name: 'audit-append' },
      );
      return rows[0]?.n === batch.length ? start : undefined;
    } catch (e) {
      if ((e as { code?: string }).code === '23505') return undefined; // another node took these numbers
      throw e;
    }
  }

  /** One writer at a time per site assigns the next numbers under an advisory lock. */
  #appendLocked(batch: Waiting[]): Promise<number> {
    return this.#o.db.transaction(async (tx) => {
      await tx.query('SELECT pg_advisory_xact_lock($1)', [APPEND_LOCK]);
      const { rows } = await tx.query<{ next: bigint }>('SELECT coalesce(max(seq) + 1, 0)::bigint AS next FROM audit_entry');
      const start = Number(rows[0]!.next);
      await tx.query(
        `INSERT INTO audit_entry (seq, entry, mac, entity, agent)
         SELECT * FROM unnest($1::bigint[], $2::text[]::bytea[], $3::text[]::bytea[], $4::text[], $5::text[])`,
        this.#rows(batch, start),
      );
      return start;
    });
  }

  #rows(batch: Waiting[], start: number): [string[], string[], string[], Array<string | null>, string[]] {
    return [
      batch.map((_, i) => String(start + i)),
      batch.map((w) => `\\x${w.bytes.toString('hex')}`),
      batch.map((w, i) => `\\x${this.#mac(start + i, w.bytes).toString('hex')}`),
      batch.map((w) => w.entity),
      batch.map((w) => w.agent),
    ];
  }
}
