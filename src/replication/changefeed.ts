// The changefeed a site serves to each peer: its own outbox changes after a cursor, in
// (txid, pos) order, only below pg_snapshot_xmin(pg_current_snapshot()). A transaction that
// took a lower position but commits later is therefore never skipped: nothing at or above
// the oldest transaction still running is handed out until it ends. The feed for a peer
// carries only what that peer may hold (residency filter at the sender).
import type { Resource } from '@medplum/fhirtypes';
import type { Queryable } from '../db/index.ts';
import type { DataClass, Region } from '../region/index.ts';

/** Position in a site's outbox: transaction id (xid8, as text) and position within it. */
export interface Cursor {
  txid: string;
  pos: string;
}

export const START: Cursor = { txid: '0', pos: '0' };

export interface Change {
  changeId: string;
  originSite: string;
  hlc: bigint;
  parentHlc: bigint | null;
  /** The parent version's origin site (null with no parent, or from a version written before it was kept). */
  parentOrigin: string | null;
  epoch: bigint;
  shard: string | null;
  dataClass: DataClass;
  resourceType: string;
  resourceId: string;
  versionId: string;
  deleted: boolean;
  payload: Resource | null;
}

export interface FeedPage {
  changes: Change[];
  /** Where the next page starts: past every row scanned, filtered or not. */
  next: Cursor;
  /** Rows scanned but withheld because the peer may not hold them. */
  withheld: number;
  /** Whether the scan stopped at the page size (more may be ready). */
  more: boolean;
}

export interface Row {
  txid: string;
  pos: string;
  change_id: string;
  origin_site: string;
  hlc: bigint;
  parent_hlc: bigint | null;
  parent_origin: string | null;
  epoch: bigint;
  shard: string | null;
  data_class: DataClass;
  resource_type: string;
  resource_id: string;
  version_id: string;
  deleted: boolean;
  payload: Resource | null;
}

const PAGE_SQL = `SELECT txid::text AS txid, pos::text AS pos, change_id::text AS change_id, origin_site, hlc, parent_hlc,
            parent_origin, epoch, shard, data_class, resource_type, resource_id, version_id, deleted, payload
       FROM outbox
      WHERE (txid, pos) > ($1::xid8, $2::bigint) AND txid < pg_snapshot_xmin(pg_current_snapshot())
      ORDER BY outbox.txid, outbox.pos LIMIT $3`; // the columns: the text aliases would sort '1000' before '999' and skip rows

/** Outbox rows after a cursor, below the oldest running transaction, in (txid, pos) order. */
export async function readRows(q: Queryable, after: Cursor, limit: number): Promise<Row[]> {
  const { rows } = await q.query<Row>(PAGE_SQL, [after.txid, after.pos, limit], { name: 'medmesh_changefeed_page' });
  return rows;
}

/** An outbox row as a change (throws on a row no write of this code makes). */
export function changeOf(r: Row): Change {
  return {
    changeId: r.change_id,
    originSite: r.origin_site,
    hlc: BigInt(r.hlc),
    parentHlc: r.parent_hlc === null ? null : BigInt(r.parent_hlc),
    parentOrigin: r.parent_origin,
    epoch: BigInt(r.epoch),
    shard: r.shard,
    dataClass: r.data_class,
    resourceType: r.resource_type,
    resourceId: r.resource_id,
    versionId: r.version_id,
    deleted: r.deleted,
    payload: r.payload,
  };
}

/** The changes after a cursor, unencoded (in-process tests and tools; peers get readFeed's pages). */
export async function readChanges(
  q: Queryable,
  opts: { region: Region; forSite: string; after: Cursor; limit: number },
): Promise<FeedPage> {
  const rows = await readRows(q, opts.after, opts.limit);
  const changes: Change[] = [];
  let withheld = 0;
  for (const r of rows) {
    if (!opts.region.mayHold(opts.forSite, r.data_class, r.shard)) withheld++;
    else changes.push(changeOf(r));
  }
  const last = rows.at(-1);
  return { changes, next: last ? { txid: last.txid, pos: last.pos } : opts.after, withheld, more: rows.length === opts.limit };
}

export const BACKLOG_CAP = 100_000;

/** How many changes are ready after `next` (counted up to BACKLOG_CAP, for the backlog metric). */
export async function backlogAfter(q: Queryable, next: Cursor): Promise<number> {
  const { rows } = await q.query<{ n: number }>(
    `SELECT count(*)::int AS n
       FROM (SELECT 1 FROM outbox WHERE (txid, pos) > ($1::xid8, $2::bigint) AND txid < pg_snapshot_xmin(pg_current_snapshot())
             LIMIT ${BACKLOG_CAP}) ready`,
    [next.txid, next.pos],
  );
  return rows[0]!.n;
}
