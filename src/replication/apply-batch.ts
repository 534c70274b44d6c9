// Applies one page of a peer's changefeed in one transaction, together with the cursor: a
// crash anywhere neither loses nor double-applies. Each change is applied once (by change
// id); a change this site may not hold, or one stamped by a clock too far ahead, is refused,
// recorded (without its content) and reported for alarms.
import type { HybridClock } from '../clock/index.ts';
import type { Db, Queryable } from '../db/index.ts';
import { unpackHlc } from '../clock/index.ts';
import {
  applyVersions,
  patientOf,
  repairVersions,
  type RemoteVersion,
  type ApplyResult,
  type RecordsContext,
} from '../records/index.ts';
import type { Region } from '../region/index.ts';
import type { Change, Cursor } from './changefeed.ts';
import { changeJson } from './wire.ts';

export interface ApplyContext {
  db: Db;
  siteId: string;
  region: Region;
  clock: HybridClock;
  records: RecordsContext;
  /** Attempts before a failing change is parked in the dead-letter table (default 5). */
  maxAttempts?: number;
}

/** The batch was rolled back to be tried again later (a change failed, attempts remain). */
export class RetryLater extends Error {
  /** The failed change's attempt, counted outside the rolled-back transaction. */
  readonly attempt: { changeId: string; attempts: number; error: string } | undefined;

  constructor(message: string, attempt?: { changeId: string; attempts: number; error: string }) {
    super(message);
    this.attempt = attempt;
  }
}

export interface ApplyReport {
  applied: number;
  current: number;
  duplicates: number;
  conflicts: Array<{ resource: string; versions: [string, string] }>;
  rejected: Array<{ changeId: string; resource: string; reason: string }>;
  /** Repairs only: local copies overwritten by the authoritative one. */
  replaced?: number;
  /** The cursor had moved (another node applied this page first): nothing was applied. */
  stale?: boolean;
  /** Parked in the dead-letter table (attempts exhausted) or waiting behind a parked change. */
  parked: Array<{ changeId: string; resource: string; status: 'parked' | 'waiting'; error?: string }>;
}

export interface Batch {
  peer: string;
  changes: readonly Change[];
  /** The peer's cursor after this batch, stored with it (absent for repairs, which are not feed pages). */
  next?: Cursor;
  /** Apply only if the cursor is still where the page was read from (compare and set). */
  expect?: Cursor;
  /** Consistency repair: the peer's copy is authoritative, a different local copy is overwritten. */
  repair?: boolean;
}

export async function applyBatch(ctx: ApplyContext, batch: Batch): Promise<ApplyReport> {
  const report: ApplyReport = { applied: 0, current: 0, duplicates: 0, conflicts: [], rejected: [], parked: [] };
  // Remote clocks first, outside the transaction (the clock persists its bound on its own).
  const skewed = new Map<string, string>();
  for (const c of batch.changes) {
    const seen = await ctx.clock.receive(c.hlc);
    if (!seen.ok) skewed.set(c.changeId, seen.error.message);
  }
  try {
    await ctx.db.transaction((tx) => applyPage(ctx, tx, batch, skewed, report));
  } catch (e) {
    // Count the attempt outside the rolled-back transaction, then let the puller back off.
    if (e instanceof RetryLater && e.attempt) {
      const a = e.attempt;
      await ctx.db.query(
        `INSERT INTO replication_attempt (change_id, attempts, last_error) VALUES ($1, $2, $3)
         ON CONFLICT (change_id) DO UPDATE SET attempts = excluded.attempts, last_error = excluded.last_error`,
        [a.changeId, a.attempts, a.error],
      );
    }
    throw e;
  }
  return report;
}

/** The page inside its transaction: cursor check, refusals, waits, the changes, the cursor. */
async function applyPage(
  ctx: ApplyContext,
  tx: Queryable,
  batch: Batch,
  skewed: ReadonlyMap<string, string>,
  report: ApplyReport,
): Promise<void> {
  if (batch.expect) {
    const { rows } = await tx.query<{ txid: string; pos: string }>(
      'SELECT txid::text AS txid, pos::text AS pos FROM replication_cursor WHERE peer = $1 FOR UPDATE',
      [batch.peer],
    );
    const at = rows[0] ?? { txid: '0', pos: '0' };
    if (at.txid !== batch.expect.txid || at.pos !== batch.expect.pos) {
      report.stale = true;
      return;
    }
  }
  const resourceOf = (c: Change) => `${c.resourceType}/${c.resourceId}`;
  // Refusals and waits first, for the whole page; what is left is applied together.
  const waiting = await blockedResources(tx, batch.changes);
  const refusals: Array<{ c: Change; reason: string }> = [];
  const plan: Change[] = [];
  for (const c of batch.changes) {
    const reason = refusal(ctx, c, skewed.get(c.changeId));
    if (reason) refusals.push({ c, reason });
    else if (waiting.has(resourceOf(c)))
      await wait(tx, batch.peer, c, report); // behind a parked change of its resource
    else plan.push(c);
  }
  if (refusals.length) {
    await tx.query(
      `INSERT INTO replication_rejected (change_id, peer, reason, resource)
       SELECT c, $1, r, x FROM unnest($2::uuid[], $3::text[], $4::text[]) AS t(c, r, x) ON CONFLICT DO NOTHING`,
      [batch.peer, refusals.map((x) => x.c.changeId), refusals.map((x) => x.reason), refusals.map((x) => resourceOf(x.c))],
    );
    for (const x of refusals) report.rejected.push({ changeId: x.c.changeId, resource: resourceOf(x.c), reason: x.reason });
  }
  // The page in a few statements; should any change fail, one at a time to find and park it.
  const together = !batch.repair && plan.length > 1 && (await applyTogether(ctx, tx, batch.peer, plan, report));
  if (!together) for (const c of plan) await applyAlone(ctx, tx, batch, c, report);
  if (batch.next) {
    // The newest change the cursor passed (applied, refused or parked: the feed moves on past it) as
    // the applied position a standby reports to the witness (appliedPositionOf, positions.ts).
    const newest = batch.changes.reduce((m, c) => (c.hlc > m ? c.hlc : m), 0n);
    await tx.query(
      `INSERT INTO replication_cursor (peer, txid, pos, hlc) VALUES ($1, $2::xid8, $3::bigint, $4::bigint)
       ON CONFLICT (peer) DO UPDATE SET txid = excluded.txid, pos = excluded.pos, applied_at = now(),
         hlc = GREATEST(replication_cursor.hlc, excluded.hlc)`,
      [batch.peer, batch.next.txid, batch.next.pos, newest.toString()],
    );
  }
}

/** One change under its own savepoint: applied, or retried with the page later, or parked. */
async function applyAlone(ctx: ApplyContext, tx: Queryable, batch: Batch, c: Change, report: ApplyReport): Promise<void> {
  const resource = `${c.resourceType}/${c.resourceId}`;
  // A change parked earlier in this page blocks the later changes of its resource too.
  const blocked = await tx.query("SELECT 1 FROM replication_dead_letter WHERE resource = $1 AND status <> 'skipped' LIMIT 1", [
    resource,
  ]);
  if (blocked.rows.length) return wait(tx, batch.peer, c, report);
  await tx.query('SAVEPOINT change');
  try {
    const r = await applyOne(ctx, tx, batch.peer, c, batch.repair);
    await tx.query('RELEASE SAVEPOINT change');
    if (r === 'duplicate' || r.outcome === 'duplicate') report.duplicates++;
    else if (r.outcome === 'replaced') report.replaced = (report.replaced ?? 0) + 1;
    else {
      report.applied++;
      if (r.outcome === 'current') report.current++;
      if (r.conflictWith) report.conflicts.push({ resource, versions: [c.versionId, r.conflictWith] });
    }
  } catch (e) {
    await tx.query('ROLLBACK TO SAVEPOINT change');
    const error = e instanceof Error ? e.message : String(e);
    const before = await tx.query<{ attempts: number }>('SELECT attempts FROM replication_attempt WHERE change_id = $1', [
      c.changeId,
    ]);
    const attempts = (before.rows[0]?.attempts ?? 0) + 1;
    if (attempts < (ctx.maxAttempts ?? 5))
      throw new RetryLater(`${resource} (change ${c.changeId}) failed, attempt ${attempts}: ${error}`, {
        changeId: c.changeId,
        attempts,
        error,
      });
    await park(tx, batch.peer, c, 'parked', error, attempts);
    report.parked.push({ changeId: c.changeId, resource, status: 'parked', error });
  }
}

async function wait(tx: Queryable, peer: string, c: Change, report: ApplyReport): Promise<void> {
  await park(tx, peer, c, 'waiting', undefined, 0);
  report.parked.push({ changeId: c.changeId, resource: `${c.resourceType}/${c.resourceId}`, status: 'waiting' });
}

/** Why this site refuses a change (residency, origin, clock), or undefined. */
function refusal(ctx: ApplyContext, c: Change, skew: string | undefined): string | undefined {
  // Residency at the receiver: whatever the sender did, this site keeps only what it may hold.
  if (c.originSite === ctx.siteId) return `change claims this site (${ctx.siteId}) as its origin`;
  // The class comes from this site's region file, not from the sender's word for it.
  const cls = ctx.region.classOf(c.resourceType);
  if (cls !== c.dataClass) return `data class: ${c.resourceType} is ${cls} data here, the change says ${c.dataClass}`;
  if (!ctx.region.mayHold(ctx.siteId, c.dataClass, c.shard))
    return `site ${ctx.siteId} may not hold ${c.dataClass} data of shard ${c.shard ?? '(none)'}`;
  return skew ? `clock skew: ${skew}` : undefined;
}

/** Resources of the page that have a parked (or waiting) change. */
async function blockedResources(tx: Queryable, changes: readonly Change[]): Promise<Set<string>> {
  const { rows } = await tx.query<{ resource: string }>(
    "SELECT DISTINCT resource FROM replication_dead_letter WHERE resource = ANY($1::text[]) AND status <> 'skipped'",
    [[...new Set(changes.map((c) => `${c.resourceType}/${c.resourceId}`))]],
  );
  return new Set(rows.map((r) => r.resource));
}

/** Applies the changes in a few statements; false (and nothing applied) if any of them fails. */
async function applyTogether(
  ctx: ApplyContext,
  tx: Queryable,
  peer: string,
  changes: readonly Change[],
  report: ApplyReport,
): Promise<boolean> {
  await tx.query('SAVEPOINT page');
  try {
    const fresh = await tx.query<{ change_id: string }>(
      `INSERT INTO replication_applied (change_id, peer) SELECT c, $1 FROM unnest($2::uuid[]) AS t(c)
       ON CONFLICT DO NOTHING RETURNING change_id::text`,
      [peer, changes.map((c) => c.changeId)],
    );
    const seen = new Set(fresh.rows.map((r) => r.change_id));
    const todo = changes.filter((c) => seen.delete(c.changeId));
    const results = await applyVersions(ctx.records, tx, todo.map(versionOf));
    await tx.query('RELEASE SAVEPOINT page');
    report.duplicates += changes.length - todo.length;
    todo.forEach((c, i) => {
      const r = results[i]!;
      if (r.outcome === 'duplicate') return void report.duplicates++;
      report.applied++;
      if (r.outcome === 'current') report.current++;
      if (r.conflictWith)
        report.conflicts.push({ resource: `${c.resourceType}/${c.resourceId}`, versions: [c.versionId, r.conflictWith] });
    });
    return true;
  } catch {
    await tx.query('ROLLBACK TO SAVEPOINT page');
    return false;
  }
}

function versionOf(c: Change): RemoteVersion {
  return {
    resourceType: c.resourceType,
    id: c.resourceId,
    versionId: c.versionId,
    hlc: c.hlc,
    parentHlc: c.parentHlc,
    parentOrigin: c.parentOrigin,
    originSite: c.originSite,
    epoch: c.epoch,
    shard: c.shard,
    dataClass: c.dataClass,
    patientId: c.payload ? (patientOf(c.payload).patientId ?? null) : null,
    deleted: c.deleted,
    lastUpdated: new Date(unpackHlc(c.hlc).physicalMs).toISOString(),
    content: c.payload,
  };
}

/**
 * Applies one change that passed the residency and clock checks; 'duplicate' when its id was
 * seen. A repair is never skipped as seen: the version itself decides (repairVersion).
 */
export async function applyOne(
  ctx: ApplyContext,
  tx: Queryable,
  peer: string,
  c: Change,
  repair = false,
): Promise<'duplicate' | ApplyResult | { outcome: 'replaced' }> {
  const fresh = await tx.query(
    'INSERT INTO replication_applied (change_id, peer) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1',
    [c.changeId, peer],
  );
  if (fresh.rows.length === 0 && !repair) return 'duplicate';
  const v = versionOf(c);
  // A batch of one: the same path as a page.
  return (repair ? await repairVersions(ctx.records, tx, [v]) : await applyVersions(ctx.records, tx, [v]))[0]!;
}

async function park(
  tx: Queryable,
  peer: string,
  c: Change,
  status: 'parked' | 'waiting',
  error: string | undefined,
  attempts: number,
): Promise<void> {
  await tx.query(
    `INSERT INTO replication_dead_letter (change_id, peer, resource, change, status, error, attempts)
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (change_id) DO NOTHING`,
    [c.changeId, peer, `${c.resourceType}/${c.resourceId}`, changeJson(c), status, error ?? null, attempts],
  );
}

/** Where this site is in a peer's feed (the start when it never pulled). */
export async function cursorFor(db: Db, peer: string): Promise<Cursor> {
  const { rows } = await db.query<{ txid: string; pos: string }>(
    'SELECT txid::text AS txid, pos::text AS pos FROM replication_cursor WHERE peer = $1',
    [peer],
  );
  return rows[0] ?? { txid: '0', pos: '0' };
}
