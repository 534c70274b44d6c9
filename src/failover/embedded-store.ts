// The embedded coordination store: etcd's model on the witness's own database (PGlite or a
// PostgreSQL server, through the Db interface). Every change takes the one coord_meta row's
// lock and bumps the global revision, so changes commit in revision order. Leaders are rows
// with a fence (the revision they were elected at) and an expiry on the database's clock.
// Watches and waiting campaigners ask the database every `pollMs` and are woken at once by
// NOTIFY when a change or a resignation commits.
import type { Logger } from '../common/index.ts';
import { err, ok, reasonOf, type Result } from '../common/index.ts';
import { loadMigrations, migrate, type Db, type Queryable } from '../db/index.ts';
import {
  checkCampaign,
  checkKey,
  checkListOptions,
  checkPrefix,
  checkRevision,
  checkTxn,
  checkValue,
  CoordinationError,
  type CampaignOptions,
  type CoordinationStore,
  type Entry,
  type LeaderInfo,
  type Leadership,
  type ListPage,
  type PutConflict,
  type TxnRequest,
  type TxnResult,
  type Watch,
  type WatchEvent,
  type WatchOptions,
} from './coordination.ts';
import { HeldLeadership } from './leadership.ts';
import { raceAbort, sleep } from './waits.ts';

export interface EmbeddedStoreOptions {
  /** The witness's database; the store runs its own migrations there and never closes it. */
  db: Db;
  log: Logger;
  /** Watches and waiting campaigners ask the database this often; NOTIFY wakes them sooner. Default 250 ms. */
  pollMs?: number;
  /** How long changes stay readable by a watch from a past revision. Default 1 hour. */
  historyMs?: number;
}

const CHANNEL = 'medmesh_coord';
const LEDGER = 'coordination_migrations';
const MAX_SEQ = 2 ** 31 - 1;
const WATCH_PAGE = 500;

interface KvRow {
  key: string;
  value: string;
  mod_revision: bigint;
  create_revision: bigint;
}

/** Runs the store's migrations on `db` and starts it. */
export async function openEmbeddedStore(o: EmbeddedStoreOptions): Promise<CoordinationStore> {
  const migrations = await loadMigrations(new URL('./migrations/', import.meta.url));
  const m = await migrate(o.db, { migrations, ledger: LEDGER });
  if (!m.ok) throw new Error(`coordination store: ${m.error.message}`);
  const store = new EmbeddedStore(o);
  await store.start();
  return store;
}

const toEntry = (r: KvRow): Entry => ({
  key: r.key,
  value: r.value,
  revision: r.mod_revision,
  createRevision: r.create_revision,
});

/** An upper bound for keys starting with `prefix` in code point order (collation "C"), if one is easy. */
function upperBound(prefix: string): string | undefined {
  const cps = [...prefix];
  const last = cps.pop()?.codePointAt(0);
  if (last === undefined || last >= 0x10ffff || last === 0xd7ff) return undefined;
  return cps.join('') + String.fromCodePoint(last + 1);
}

/** Takes the store's write lock and answers the revision. */
async function lockRevision(tx: Queryable): Promise<bigint> {
  const { rows } = await tx.query<{ revision: bigint }>('SELECT revision FROM coord_meta FOR UPDATE');
  return rows[0]!.revision;
}

/** Writes puts and the deletions of keys that existed at revision `rev` (under the write lock). */
async function writeChanges(tx: Queryable, rev: bigint, puts: Array<{ key: string; value: string }>, deleted: string[]) {
  await tx.query('UPDATE coord_meta SET revision = $1', [rev]);
  if (puts.length)
    await tx.query(
      `INSERT INTO coord_kv (key, value, create_revision, mod_revision)
       SELECT k, v, $1, $1 FROM unnest($2::text[], $3::text[]) AS t(k, v)
       ON CONFLICT (key) DO UPDATE SET value = excluded.value, mod_revision = excluded.mod_revision`,
      [rev, puts.map((p) => p.key), puts.map((p) => p.value)],
    );
  const events: Array<{ key: string; kind: 'put' | 'delete'; value?: string }> = [
    ...puts.map((p) => ({ key: p.key, kind: 'put' as const, value: p.value })),
    ...deleted.map((key) => ({ key, kind: 'delete' as const })),
  ];
  await tx.query(
    `INSERT INTO coord_event (revision, seq, key, kind, value)
     SELECT $1, (ord - 1)::int, k, kind, v FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS t(k, kind, v, ord)`,
    [rev, events.map((e) => e.key), events.map((e) => e.kind), events.map((e) => e.value ?? null)],
  );
}

class EmbeddedStore implements CoordinationStore {
  readonly kind = 'embedded' as const;
  readonly #db: Db;
  readonly #log: Logger;
  readonly #pollMs: number;
  readonly #historyMs: number;
  readonly #closing = new AbortController();
  readonly #wakers = new Set<() => void>();
  readonly #held = new Set<HeldLeadership>();
  /** Every leadership this store won, held or not (a fenced transaction takes only these). */
  readonly #won = new WeakSet<Leadership>();
  readonly #watches = new Set<Promise<void>>();
  #unlisten: (() => Promise<void>) | undefined;
  #maintenance: NodeJS.Timeout | undefined;

  constructor(o: EmbeddedStoreOptions) {
    this.#db = o.db;
    this.#log = o.log.child({ component: 'coordination' });
    this.#pollMs = o.pollMs ?? 250;
    this.#historyMs = o.historyMs ?? 3_600_000;
  }

  async start(): Promise<void> {
    this.#unlisten = await this.#db.listen(CHANNEL, () => this.#wake(), {
      onError: (e) => this.#log.warn({ err: reasonOf(e) }, 'coordination: LISTEN connection lost (polling meanwhile)'),
    });
    const every = Math.min(this.#historyMs / 4, 60_000);
    this.#maintenance = setInterval(() => void this.#db.background(() => this.#prune()), every);
    this.#maintenance.unref();
  }

  #wake(): void {
    for (const w of [...this.#wakers]) w();
  }

  #open(): void {
    if (this.#closing.signal.aborted) throw new CoordinationError('closed', 'the coordination store is closed');
  }

  /** Database failures as `unavailable`; the store's own errors as they are. */
  async #call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    this.#open();
    try {
      return await fn();
    } catch (e) {
      if (e instanceof CoordinationError) throw e;
      throw new CoordinationError('unavailable', `coordination store: ${what} failed: ${reasonOf(e)}`, { cause: e });
    }
  }

  get(key: string): Promise<Entry | undefined> {
    return this.#call('get', async () => {
      checkKey(key);
      const { rows } = await this.#db.query<KvRow>(
        'SELECT key, value, mod_revision, create_revision FROM coord_kv WHERE key = $1',
        [key],
        { name: 'coord_get' },
      );
      return rows[0] && toEntry(rows[0]);
    });
  }

  list(prefix: string, opts: { limit?: number; from?: string } = {}): Promise<ListPage> {
    return this.#call('list', async () => {
      checkPrefix(prefix);
      checkListOptions(opts);
      const limit = opts.limit ?? 1000;
      const end = upperBound(prefix);
      // One statement: the page and the revision it was read at come from one snapshot.
      const { rows } = await this.#db.query<{ store_revision: bigint } & Partial<KvRow>>(
        `SELECT m.revision AS store_revision, k.key, k.value, k.mod_revision, k.create_revision
         FROM coord_meta m LEFT JOIN LATERAL (
           SELECT * FROM coord_kv WHERE key >= $1 AND ($2::text IS NULL OR key < $2) AND starts_with(key, $1)
             AND ($3::text IS NULL OR key >= $3)
           ORDER BY key LIMIT $4) k ON true`,
        [prefix, end ?? null, opts.from ?? null, limit + 1],
      );
      const entries = rows.filter((r): r is typeof r & KvRow => r.key != null).map(toEntry);
      return { entries: entries.slice(0, limit), more: entries.length > limit, revision: rows[0]!.store_revision };
    });
  }

  put(key: string, value: string, opts: { expectRevision?: bigint } = {}): Promise<Result<{ revision: bigint }, PutConflict>> {
    return this.#call('put', async () => {
      checkKey(key);
      checkValue(key, value);
      if (opts.expectRevision !== undefined) checkRevision(opts.expectRevision, 'expectRevision');
      return this.#db.transaction(async (tx) => {
        const rev = await lockRevision(tx);
        const { rows } = await tx.query<{ mod_revision: bigint }>('SELECT mod_revision FROM coord_kv WHERE key = $1', [key]);
        const current = rows[0]?.mod_revision;
        if (opts.expectRevision !== undefined && (current ?? 0n) !== opts.expectRevision)
          return err<PutConflict>(current === undefined ? { code: 'conflict' } : { code: 'conflict', current });
        await writeChanges(tx, rev + 1n, [{ key, value }], []);
        return ok({ revision: rev + 1n });
      });
    });
  }

  txn(req: TxnRequest): Promise<TxnResult> {
    return this.#call('txn', async () => {
      checkTxn(req);
      const l = req.leadership;
      if (l && !this.#won.has(l))
        throw new CoordinationError('invalid', `leadership ${l.name} (fence ${l.fence}) was not won through this store`);
      if (l && l instanceof HeldLeadership && !l.held) {
        // Given up or possibly expired here: refused without asking the store.
        const { rows } = await this.#db.query<{ revision: bigint }>('SELECT revision FROM coord_meta');
        return { succeeded: false, revision: rows[0]!.revision };
      }
      return this.#db.transaction(async (tx) => {
        const rev = await lockRevision(tx);
        // Under the write lock no one can be elected meanwhile: the check holds until commit.
        if (l) {
          const { rows } = await tx.query(
            'SELECT 1 FROM coord_leader WHERE name = $1 AND fence = $2 AND expires_at > clock_timestamp()',
            [l.name, l.fence],
          );
          if (!rows.length) return { succeeded: false, revision: rev };
        }
        const compare = req.compare ?? [];
        if (compare.length) {
          const { rows } = await tx.query<{ key: string; mod_revision: bigint }>(
            'SELECT key, mod_revision FROM coord_kv WHERE key = ANY($1::text[])',
            [compare.map((c) => c.key)],
          );
          const now = new Map(rows.map((r) => [r.key, r.mod_revision]));
          if (!compare.every((c) => (now.get(c.key) ?? 0n) === c.revision)) return { succeeded: false, revision: rev };
        }
        const puts = req.put ?? [];
        let deleted: string[] = [];
        if (req.delete?.length) {
          const { rows } = await tx.query<{ key: string }>('DELETE FROM coord_kv WHERE key = ANY($1::text[]) RETURNING key', [
            req.delete,
          ]);
          const gone = new Set(rows.map((r) => r.key));
          deleted = req.delete.filter((k) => gone.has(k));
        }
        if (!puts.length && !deleted.length) return { succeeded: true, revision: rev };
        await writeChanges(tx, rev + 1n, puts, deleted);
        return { succeeded: true, revision: rev + 1n };
      });
    });
  }

  async campaign(name: string, opts: CampaignOptions): Promise<Leadership> {
    this.#open();
    checkCampaign(name, opts);
    const signal = opts.signal ? AbortSignal.any([this.#closing.signal, opts.signal]) : this.#closing.signal;
    const stopped = () =>
      this.#closing.signal.aborted
        ? new CoordinationError('closed', 'the coordination store is closed')
        : (opts.signal!.reason as Error);
    return this.#db.background(async () => {
      for (let failures = 0; ;) {
        if (signal.aborted) throw stopped();
        const sentAt = performance.now();
        let wait = this.#pollMs;
        try {
          const r = await this.#tryElect(name, opts);
          if ('fence' in r) {
            const held = this.#hold(name, opts, r.fence, sentAt);
            if (signal.aborted) {
              await held.resign();
              throw stopped();
            }
            return held;
          }
          failures = 0;
          wait = Math.min(this.#pollMs, r.remainingMs + 1);
        } catch (e) {
          if (signal.aborted) throw stopped();
          if (++failures === 1 || failures % 20 === 0)
            this.#log.warn({ election: name, err: reasonOf(e), failures }, 'campaign: the database did not answer');
        }
        await sleep(wait, signal, this.#wakers);
      }
    });
  }

  async #tryElect(name: string, opts: CampaignOptions): Promise<{ fence: bigint } | { remainingMs: number }> {
    return this.#db.transaction(async (tx) => {
      const rev = await lockRevision(tx);
      const { rows } = await tx.query<{ remaining_ms: number }>(
        `SELECT GREATEST(0, EXTRACT(EPOCH FROM expires_at - clock_timestamp()) * 1000)::float8 AS remaining_ms
         FROM coord_leader WHERE name = $1`,
        [name],
      );
      if (rows[0] && rows[0].remaining_ms > 0) return { remainingMs: rows[0].remaining_ms };
      const fence = rev + 1n;
      await tx.query('UPDATE coord_meta SET revision = $1', [fence]);
      await tx.query(
        `INSERT INTO coord_leader (name, candidate, fence, expires_at)
         VALUES ($1, $2, $3, clock_timestamp() + make_interval(secs => $4))
         ON CONFLICT (name) DO UPDATE
           SET candidate = excluded.candidate, fence = excluded.fence, expires_at = excluded.expires_at`,
        [name, opts.candidate, fence, opts.ttlMs / 1000],
      );
      return { fence };
    });
  }

  #hold(name: string, opts: CampaignOptions, fence: bigint, sentAt: number): HeldLeadership {
    const held = new HeldLeadership({
      name,
      candidate: opts.candidate,
      fence,
      ttlMs: opts.ttlMs,
      grantedSentAt: sentAt,
      log: this.#log,
      renew: (signal) =>
        raceAbort(
          this.#db.background(() =>
            this.#db.query(
              `UPDATE coord_leader SET expires_at = clock_timestamp() + make_interval(secs => $3)
               WHERE name = $1 AND fence = $2 AND expires_at > clock_timestamp() RETURNING 1`,
              [name, fence, opts.ttlMs / 1000],
              { name: 'coord_renew' },
            ),
          ),
          signal,
        ).then((r) => r.rows.length > 0),
      release: () =>
        this.#db.background(async () => {
          await this.#db.query('DELETE FROM coord_leader WHERE name = $1 AND fence = $2', [name, fence]);
        }),
      onEnd: (l) => this.#held.delete(l),
    });
    this.#held.add(held);
    this.#won.add(held);
    return held;
  }

  leader(name: string): Promise<LeaderInfo | undefined> {
    return this.#call('leader', async () => {
      checkKey(name, 'election name');
      const { rows } = await this.#db.query<LeaderInfo>(
        'SELECT candidate, fence FROM coord_leader WHERE name = $1 AND expires_at > clock_timestamp()',
        [name],
      );
      return rows[0] && { candidate: rows[0].candidate, fence: rows[0].fence };
    });
  }

  watch(prefix: string, onChange: (e: WatchEvent) => void, opts: WatchOptions = {}): Promise<Watch> {
    return this.#call('watch', async () => {
      checkPrefix(prefix);
      if (opts.fromRevision !== undefined) checkRevision(opts.fromRevision, 'fromRevision');
      const { rows: meta } = await this.#db.query<{ revision: bigint; compacted: bigint }>(
        'SELECT revision, compacted FROM coord_meta',
      );
      let at = { rev: meta[0]!.revision, seq: MAX_SEQ };
      if (opts.fromRevision !== undefined && opts.fromRevision > 0n) {
        at = { rev: opts.fromRevision - 1n, seq: MAX_SEQ };
        if (at.rev < meta[0]!.compacted)
          throw new CoordinationError(
            'compacted',
            `watch of ${JSON.stringify(prefix)}: revision ${opts.fromRevision} was compacted`,
          );
      }
      const stop = new AbortController();
      const stopped = AbortSignal.any([stop.signal, this.#closing.signal]);
      const deliver = (e: WatchEvent) => {
        try {
          const r: unknown = onChange(e);
          if (r instanceof Promise)
            r.catch((x: unknown) => this.#log.warn({ err: reasonOf(x) }, 'watch: the change handler failed'));
        } catch (x) {
          this.#log.warn({ err: reasonOf(x) }, 'watch: the change handler failed');
        }
      };
      const loop = this.#db.background(async () => {
        let failures = 0;
        while (!stopped.aborted) {
          let full = false;
          try {
            const { rows } = await this.#db.query<{
              compacted: bigint;
              revision: bigint | null;
              seq: number | null;
              key: string | null;
              kind: 'put' | 'delete' | null;
              value: string | null;
            }>(
              `SELECT m.compacted, e.revision, e.seq, e.key, e.kind, e.value
               FROM coord_meta m LEFT JOIN LATERAL (
                 SELECT revision, seq, key, kind, value FROM coord_event
                 WHERE (revision, seq) > ($1, $2) AND starts_with(key, $3) ORDER BY revision, seq LIMIT $4) e ON true`,
              [at.rev, at.seq, prefix, WATCH_PAGE],
            );
            failures = 0;
            const through = at.seq === MAX_SEQ ? at.rev : at.rev - 1n;
            if (through < rows[0]!.compacted) {
              const e = new CoordinationError(
                'compacted',
                `watch of ${JSON.stringify(prefix)}: changes after revision ${through} were compacted ` +
                  `(up to ${rows[0]!.compacted})`,
              );
              this.#log.warn({ err: e.message }, 'watch stopped');
              opts.onError?.(e);
              return;
            }
            for (const r of rows) {
              if (r.revision === null || stopped.aborted) continue;
              at = { rev: r.revision, seq: r.seq! };
              deliver({ type: r.kind!, key: r.key!, ...(r.kind === 'put' ? { value: r.value! } : {}), revision: r.revision });
            }
            full = rows.length === WATCH_PAGE;
            // A page that ended with a whole revision moves past it (the next may continue it otherwise).
          } catch (e) {
            if (++failures === 1 || failures % 20 === 0)
              this.#log.warn({ prefix, err: reasonOf(e), failures }, 'watch: the database did not answer');
          }
          if (!full) await sleep(this.#pollMs, stopped, this.#wakers);
        }
      });
      const done = loop.catch((e: unknown) => this.#log.error({ err: reasonOf(e) }, 'watch loop failed'));
      this.#watches.add(done);
      void done.finally(() => this.#watches.delete(done));
      return {
        close: async () => {
          stop.abort();
          await done;
        },
      };
    });
  }

  compact(revision: bigint): Promise<void> {
    return this.#call('compact', async () => {
      checkRevision(revision, 'revision');
      await this.#db.transaction(async (tx) => {
        const rev = await lockRevision(tx);
        if (revision > rev) throw new CoordinationError('invalid', `revision ${revision} is in the future (now ${rev})`);
        await tx.query('UPDATE coord_meta SET compacted = GREATEST(compacted, $1)', [revision - 1n]);
        await tx.query('DELETE FROM coord_event WHERE revision < $1', [revision]);
      });
    });
  }

  /** Drops changes older than the history time (watches from before them get `compacted`). */
  async #prune(): Promise<void> {
    try {
      await this.#db.transaction(async (tx) => {
        const { rows } = await tx.query<{ r: bigint | null }>(
          'SELECT max(revision) AS r FROM coord_event WHERE at < clock_timestamp() - make_interval(secs => $1)',
          [this.#historyMs / 1000],
        );
        const r = rows[0]?.r;
        if (r == null) return;
        await lockRevision(tx);
        await tx.query('UPDATE coord_meta SET compacted = GREATEST(compacted, $1)', [r]);
        await tx.query('DELETE FROM coord_event WHERE revision <= $1', [r]);
      });
    } catch (e) {
      this.#log.warn({ err: reasonOf(e) }, 'coordination: pruning the change history failed');
    }
  }

  async close(): Promise<void> {
    if (this.#closing.signal.aborted) return;
    this.#closing.abort();
    clearInterval(this.#maintenance);
    await Promise.all([...this.#held].map((l) => l.resign()));
    await Promise.all([...this.#watches]);
    await this.#unlisten?.().catch((e: unknown) => this.#log.warn({ err: reasonOf(e) }, 'coordination: UNLISTEN failed'));
  }
}
