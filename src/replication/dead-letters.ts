// The operator's side of parked changes: list them, retry one (and release the changes of
// its resource that wait behind it, in order), or skip one with a reason (it is then never
// applied, and the ones behind it are released).
import type { Queryable } from '../db/index.ts';
import { applyOne, type ApplyContext } from './apply-batch.ts';
import { parseChange } from './wire.ts';

export interface DeadLetter {
  changeId: string;
  peer: string;
  resource: string;
  status: 'parked' | 'waiting' | 'skipped';
  error?: string;
  attempts: number;
  parkedAt: string;
  skippedReason?: string;
}

interface Row {
  change_id: string;
  peer: string;
  resource: string;
  status: DeadLetter['status'];
  error: string | null;
  attempts: number;
  parked_at: Date;
  skipped_reason: string | null;
  change: string;
}

export async function listDeadLetters(q: Queryable, opts: { includeSkipped?: boolean } = {}): Promise<DeadLetter[]> {
  const { rows } = await q.query<Row>(
    `SELECT change_id::text AS change_id, peer, resource, status, error, attempts, parked_at, skipped_reason, change
       FROM replication_dead_letter ${opts.includeSkipped ? '' : "WHERE status <> 'skipped'"} ORDER BY seq LIMIT 1000`,
  );
  return rows.map((r) => ({
    changeId: r.change_id,
    peer: r.peer,
    resource: r.resource,
    status: r.status,
    attempts: r.attempts,
    parkedAt: new Date(r.parked_at).toISOString(),
    ...(r.error ? { error: r.error } : {}),
    ...(r.skipped_reason ? { skippedReason: r.skipped_reason } : {}),
  }));
}

export type DeadLetterResult = { ok: true; released: number; stillWaiting: number } | { ok: false; error: string };

/** Applies a parked change now; on success the changes waiting behind it follow, in order. */
export function retryDeadLetter(ctx: ApplyContext, changeId: string): Promise<DeadLetterResult> {
  return settle(ctx, changeId, async (tx, row) => {
    const change = parseStored(row.change);
    if (!change) return { ok: false, error: 'the stored change does not parse' };
    const failed = await tryApply(ctx, tx, row.peer, change);
    if (failed) {
      await tx.query('UPDATE replication_dead_letter SET error = $2, attempts = attempts + 1 WHERE change_id = $1', [
        changeId,
        failed,
      ]);
      return { ok: false, error: failed };
    }
    await tx.query('DELETE FROM replication_dead_letter WHERE change_id = $1', [changeId]);
    return release(ctx, tx, row.resource);
  });
}

/** Gives up on a parked change, with the reason; the changes waiting behind it are applied. */
export function skipDeadLetter(
  ctx: ApplyContext,
  changeId: string,
  opts: { reason: string; by: string },
): Promise<DeadLetterResult> {
  return settle(ctx, changeId, async (tx, row) => {
    await tx.query(
      "UPDATE replication_dead_letter SET status = 'skipped', skipped_reason = $2, skipped_by = $3 WHERE change_id = $1",
      [changeId, opts.reason, opts.by],
    );
    await tx.query('INSERT INTO replication_applied (change_id, peer) VALUES ($1, $2) ON CONFLICT DO NOTHING', [
      changeId,
      row.peer,
    ]);
    return release(ctx, tx, row.resource);
  });
}

async function settle(
  ctx: ApplyContext,
  changeId: string,
  fn: (tx: Queryable, row: Row) => Promise<DeadLetterResult>,
): Promise<DeadLetterResult> {
  if (!/^[0-9a-f-]{36}$/.test(changeId)) return { ok: false, error: 'not a change id' };
  return ctx.db.transaction(async (tx) => {
    const { rows } = await tx.query<Row>(
      `SELECT change_id::text AS change_id, peer, resource, status, error, attempts, parked_at, skipped_reason, change
         FROM replication_dead_letter WHERE change_id = $1 AND status = 'parked' FOR UPDATE`,
      [changeId],
    );
    if (!rows[0]) return { ok: false, error: `no parked change ${changeId}` };
    return fn(tx, rows[0]);
  });
}

/** The error message, or undefined when applied. */
async function tryApply(
  ctx: ApplyContext,
  tx: Queryable,
  peer: string,
  change: NonNullable<ReturnType<typeof parseStored>>,
): Promise<string | undefined> {
  await tx.query('SAVEPOINT dead_letter');
  try {
    await applyOne(ctx, tx, peer, change);
    await tx.query('RELEASE SAVEPOINT dead_letter');
    return undefined;
  } catch (e) {
    await tx.query('ROLLBACK TO SAVEPOINT dead_letter');
    return e instanceof Error ? e.message : String(e);
  }
}

async function release(ctx: ApplyContext, tx: Queryable, resource: string): Promise<DeadLetterResult> {
  const { rows } = await tx.query<Row>(
    `SELECT change_id::text AS change_id, peer, resource, status, error, attempts, parked_at, skipped_reason, change
       FROM replication_dead_letter WHERE resource = $1 AND status = 'waiting' ORDER BY seq`,
    [resource],
  );
  let released = 0;
  for (const [i, w] of rows.entries()) {
    const change = parseStored(w.change);
    const failed = change ? await tryApply(ctx, tx, w.peer, change) : 'the stored change does not parse';
    if (failed) {
      // This one now blocks the rest, in its turn.
      await tx.query("UPDATE replication_dead_letter SET status = 'parked', error = $2, attempts = 1 WHERE change_id = $1", [
        w.change_id,
        failed,
      ]);
      return { ok: true, released, stillWaiting: rows.length - i - 1 };
    }
    await tx.query('DELETE FROM replication_dead_letter WHERE change_id = $1', [w.change_id]);
    released++;
  }
  return { ok: true, released, stillWaiting: 0 };
}

function parseStored(text: string): ReturnType<typeof parseChange> {
  try {
    return parseChange(JSON.parse(text));
  } catch {
    return undefined;
  }
}
