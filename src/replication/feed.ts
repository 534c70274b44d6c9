// The changefeed as peers get it: a page of this site's own changes, each one checked and
// encoded on its own, so that one change that cannot be sent (receivers would refuse it, it
// does not serialize, it is too large) never stops the feed (DESIGN.md §5). Such a change is
// parked at the sender (replication_feed_dead_letter, with the reason); later changes of its
// resource are withheld behind it ('waiting'), so per-resource order is kept; the cursor
// passes both and the rest flows. Operators list, retry or skip parked changes: a retried
// change and those waiting behind it are sent again, in order, as new outbox rows (receivers
// apply a change once by its id); a skipped one is never sent and releases the others.
import type { Db, Queryable } from '../db/index.ts';
import type { Region } from '../region/index.ts';
import { changeOf, readRows, type Cursor, type Row } from './changefeed.ts';
import { encodeChange, PAGE_BUDGET_BYTES, type EncodedChange, type EncodedPage } from './wire.ts';

/** Serializes parking decisions (shared) with releases (exclusive): no change is left waiting behind nothing. */
const LOCK = 0x6d6d6664;

export interface FeedParked {
  changeId: string;
  resource: string;
  status: 'parked' | 'waiting';
  error?: string;
}

export interface FeedAnswer extends EncodedPage {
  /** Changes this read parked, or withheld behind a parked change of their resource. */
  parked: FeedParked[];
}

export interface FeedOptions {
  region: Region;
  forSite: string;
  after: Cursor;
  limit: number;
  /** A page closes once its changes reach this many bytes (default PAGE_BUDGET_BYTES). */
  budgetBytes?: number;
  /** Larger changes are parked (default MAX_CHANGE_BYTES). */
  maxChangeBytes?: number;
}

interface Position {
  txid: bigint;
  pos: bigint;
}
interface Entry extends Position {
  resource: string;
  status: 'parked' | 'waiting' | 'skipped';
}

const positionOf = (r: { txid: string; pos: string }): Position => ({ txid: BigInt(r.txid), pos: BigInt(r.pos) });
const before = (a: Position, b: Position) => a.txid < b.txid || (a.txid === b.txid && a.pos < b.pos);
const keyOf = (p: Position) => `${p.txid}:${p.pos}`;
const resourceOf = (r: Row) => `${r.resource_type}/${r.resource_id}`;

/** Encodes one outbox row, or says why it cannot be sent. */
function encodeRow(r: Row, maxBytes: number | undefined): EncodedChange {
  let change;
  try {
    change = changeOf(r);
  } catch (e) {
    return { ok: false, error: `unreadable outbox row: ${e instanceof Error ? e.message : String(e)}` };
  }
  return encodeChange(change, maxBytes === undefined ? {} : { maxBytes });
}

async function entriesFor(q: Queryable, resources: readonly string[]): Promise<Entry[]> {
  const { rows } = await q.query<{ txid: string; pos: string; resource: string; status: Entry['status'] }>(
    `SELECT txid::text AS txid, pos::text AS pos, resource, status FROM replication_feed_dead_letter
      WHERE resource = ANY($1::text[])`,
    [resources],
  );
  return rows.map((r) => ({ ...positionOf(r), resource: r.resource, status: r.status }));
}

interface Plan {
  page: EncodedPage;
  park: Array<{ row: Row; status: 'parked' | 'waiting'; error?: string }>;
}

/** The page for these rows, given the dead letters of their resources. */
function plan(rows: readonly Row[], entries: readonly Entry[], opts: FeedOptions, encode: (r: Row) => EncodedChange): Plan {
  const held = new Set(entries.map(keyOf));
  // The earliest parked or waiting change per resource: its later changes wait behind it.
  const blockedFrom = new Map<string, Position>();
  const block = (resource: string, p: Position) => {
    const cur = blockedFrom.get(resource);
    if (!cur || before(p, cur)) blockedFrom.set(resource, p);
  };
  for (const e of entries) if (e.status !== 'skipped') block(e.resource, e);
  const budget = opts.budgetBytes ?? PAGE_BUDGET_BYTES;
  const changes: string[] = [];
  const park: Plan['park'] = [];
  let bytes = 0;
  let withheld = 0;
  let next: Cursor = opts.after;
  let more = rows.length === opts.limit;
  for (const r of rows) {
    const at = positionOf(r);
    const resource = resourceOf(r);
    const from = blockedFrom.get(resource);
    if (!opts.region.mayHold(opts.forSite, r.data_class, r.shard) || held.has(keyOf(at))) withheld++;
    else if (from && before(from, at)) {
      park.push({ row: r, status: 'waiting' });
      withheld++;
    } else {
      const e = encode(r);
      if (!e.ok) {
        park.push({ row: r, status: 'parked', error: e.error });
        block(resource, at);
        withheld++;
      } else {
        const size = Buffer.byteLength(e.json);
        // The first change always goes (MAX_CHANGE_BYTES bounds it); the rest up to the budget.
        if (changes.length > 0 && bytes + size > budget) {
          more = true;
          break;
        }
        changes.push(e.json);
        bytes += size;
      }
    }
    next = { txid: r.txid, pos: r.pos };
  }
  return { page: { changes, next, withheld, more }, park };
}

/** One page of this site's feed for `forSite`, parking what cannot be sent. */
export async function readFeed(db: Db, opts: FeedOptions): Promise<FeedAnswer> {
  const rows = await readRows(db, opts.after, opts.limit);
  if (!rows.length) return { changes: [], next: opts.after, withheld: 0, more: false, parked: [] };
  const encoded = new Map<Row, EncodedChange>();
  const encode = (r: Row) => {
    let e = encoded.get(r);
    if (!e) encoded.set(r, (e = encodeRow(r, opts.maxChangeBytes)));
    return e;
  };
  const resources = [...new Set(rows.map(resourceOf))];
  const first = plan(rows, await entriesFor(db, resources), opts, encode);
  if (!first.park.length) return { ...first.page, parked: [] };
  // Something to park: decide again under the lock, against dead letters no release is changing.
  return db.transaction(async (tx) => {
    await tx.query('SELECT pg_advisory_xact_lock_shared($1)', [LOCK]);
    const { page, park } = plan(rows, await entriesFor(tx, resources), opts, encode);
    if (park.length)
      await tx.query(
        `INSERT INTO replication_feed_dead_letter (txid, pos, change_id, resource, status, error)
         SELECT t.txid::xid8, t.pos, t.change_id, t.resource, t.status, t.error
           FROM unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::text[])
                AS t(txid, pos, change_id, resource, status, error)
         ON CONFLICT DO NOTHING`,
        [
          park.map((p) => p.row.txid),
          park.map((p) => p.row.pos),
          park.map((p) => p.row.change_id),
          park.map((p) => resourceOf(p.row)),
          park.map((p) => p.status),
          park.map((p) => p.error ?? null),
        ],
      );
    return {
      ...page,
      parked: park.map((p) => ({
        changeId: p.row.change_id,
        resource: resourceOf(p.row),
        status: p.status,
        ...(p.error ? { error: p.error } : {}),
      })),
    };
  });
}

export interface FeedDeadLetter {
  changeId: string;
  /** Its outbox position, `txid:pos`. */
  at: string;
  resource: string;
  status: 'parked' | 'waiting' | 'skipped';
  error?: string;
  attempts: number;
  parkedAt: string;
  skippedReason?: string;
}

interface EntryRow {
  txid: string;
  pos: string;
  change_id: string;
  resource: string;
  status: FeedDeadLetter['status'];
  error: string | null;
  attempts: number;
  parked_at: Date;
  skipped_reason: string | null;
}

const ENTRY_COLUMNS =
  'txid::text AS txid, pos::text AS pos, change_id::text AS change_id, ' +
  'resource, status, error, attempts, parked_at, skipped_reason';

export async function listFeedDeadLetters(q: Queryable, opts: { includeSkipped?: boolean } = {}): Promise<FeedDeadLetter[]> {
  const { rows } = await q.query<EntryRow>(
    `SELECT ${ENTRY_COLUMNS} FROM replication_feed_dead_letter ${opts.includeSkipped ? '' : "WHERE status <> 'skipped'"}
      ORDER BY txid, pos LIMIT 1000`,
  );
  return rows.map((r) => ({
    changeId: r.change_id,
    at: `${r.txid}:${r.pos}`,
    resource: r.resource,
    status: r.status,
    attempts: r.attempts,
    parkedAt: new Date(r.parked_at).toISOString(),
    ...(r.error ? { error: r.error } : {}),
    ...(r.skipped_reason ? { skippedReason: r.skipped_reason } : {}),
  }));
}

/** Parked and waiting changes (the alarm gauge). */
export async function countFeedDeadLetters(q: Queryable): Promise<number> {
  const { rows } = await q.query<{ n: number }>(
    "SELECT count(*)::int AS n FROM replication_feed_dead_letter WHERE status <> 'skipped'",
  );
  return rows[0]?.n ?? 0;
}

export type FeedDeadLetterResult = { ok: true; released: number; stillWaiting: number } | { ok: false; error: string };

/** Sends a parked change again if it can now be sent; the changes waiting behind it follow, in order. */
export function retryFeedDeadLetter(db: Db, changeId: string): Promise<FeedDeadLetterResult> {
  return settle(db, changeId, async (tx, entry) => {
    const failed = await resend(tx, entry);
    if (failed) {
      await tx.query(
        'UPDATE replication_feed_dead_letter SET error = $3, attempts = attempts + 1 WHERE txid = $1::xid8 AND pos = $2::bigint',
        [entry.txid, entry.pos, failed],
      );
      return { ok: false, error: failed };
    }
    return release(tx, entry.resource);
  });
}

/** Gives up on a parked change, with the reason: it is never sent; the changes waiting behind it are. */
export function skipFeedDeadLetter(
  db: Db,
  changeId: string,
  opts: { reason: string; by: string },
): Promise<FeedDeadLetterResult> {
  return settle(db, changeId, async (tx, entry) => {
    await tx.query(
      `UPDATE replication_feed_dead_letter SET status = 'skipped', skipped_reason = $3, skipped_by = $4
        WHERE txid = $1::xid8 AND pos = $2::bigint`,
      [entry.txid, entry.pos, opts.reason, opts.by],
    );
    return release(tx, entry.resource);
  });
}

async function settle(
  db: Db,
  changeId: string,
  fn: (tx: Queryable, entry: EntryRow) => Promise<FeedDeadLetterResult>,
): Promise<FeedDeadLetterResult> {
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(changeId))
    return { ok: false, error: 'not a change id' };
  return db.transaction(async (tx) => {
    await tx.query('SELECT pg_advisory_xact_lock($1)', [LOCK]);
    const { rows } = await tx.query<EntryRow>(
      `SELECT ${ENTRY_COLUMNS} FROM replication_feed_dead_letter
        WHERE change_id = $1 AND status = 'parked' ORDER BY txid, pos LIMIT 1 FOR UPDATE`,
      [changeId],
    );
    if (!rows[0]) return { ok: false, error: `no parked change ${changeId} in this site's feed` };
    return fn(tx, rows[0]);
  });
}

/** Puts the change back on the feed as a new outbox row and drops its dead letter; or says why it still cannot go. */
async function resend(tx: Queryable, entry: EntryRow): Promise<string | undefined> {
  const { rows } = await tx.query<Row>(
    `SELECT txid::text AS txid, pos::text AS pos, change_id::text AS change_id, origin_site, hlc, parent_hlc, parent_origin,
            epoch, shard, data_class, resource_type, resource_id, version_id, deleted, payload
       FROM outbox WHERE txid = $1::xid8 AND pos = $2::bigint`,
    [entry.txid, entry.pos],
  );
  if (!rows[0]) return `the outbox row ${entry.txid}:${entry.pos} is gone`;
  const e = encodeRow(rows[0], undefined);
  if (!e.ok) return e.error;
  await tx.query(
    `INSERT INTO outbox (change_id, origin_site, hlc, parent_hlc, parent_origin, epoch, shard, data_class, resource_type,
                         resource_id, version_id, deleted, payload)
     SELECT change_id, origin_site, hlc, parent_hlc, parent_origin, epoch, shard, data_class, resource_type,
            resource_id, version_id, deleted, payload
       FROM outbox WHERE txid = $1::xid8 AND pos = $2::bigint`,
    [entry.txid, entry.pos],
  );
  await tx.query('DELETE FROM replication_feed_dead_letter WHERE txid = $1::xid8 AND pos = $2::bigint', [entry.txid, entry.pos]);
  return undefined;
}

/** Sends the changes waiting on a resource, in order, until one cannot go (it is then parked in its turn). */
async function release(tx: Queryable, resource: string): Promise<FeedDeadLetterResult> {
  const { rows } = await tx.query<EntryRow>(
    `SELECT ${ENTRY_COLUMNS} FROM replication_feed_dead_letter WHERE resource = $1 AND status = 'waiting' ORDER BY txid, pos`,
    [resource],
  );
  let released = 0;
  for (const [i, w] of rows.entries()) {
    const failed = await resend(tx, w);
    if (failed) {
      await tx.query(
        "UPDATE replication_feed_dead_letter SET status = 'parked', error = $3 WHERE txid = $1::xid8 AND pos = $2::bigint",
        [w.txid, w.pos, failed],
      );
      return { ok: true, released, stillWaiting: rows.length - i - 1 };
    }
    released++;
  }
  return { ok: true, released, stillWaiting: 0 };
}
