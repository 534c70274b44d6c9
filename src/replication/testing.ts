// Test helpers: move a site's feed to another site in-process, the way a puller would, and
// wait for it. The feed stops at the oldest running transaction of the whole database
// server (other test files share it), so an empty page before the end means "not yet".
import assert from 'node:assert/strict';
import type { Db, Queryable } from '../db/index.ts';
import type { TestStore } from '../records/testing.ts';
import { applyBatch, cursorFor, type ApplyReport } from './apply-batch.ts';
import { readChanges, START, type Cursor, type FeedPage } from './changefeed.ts';

/** Where a site's outbox ends now: every write that has returned is at or before it. */
export async function feedEnd(from: { db: Queryable }): Promise<Cursor> {
  const { rows } = await from.db.query<Cursor>(
    'SELECT txid::text AS txid, pos::text AS pos FROM outbox ORDER BY outbox.txid DESC, outbox.pos DESC LIMIT 1',
  );
  return rows[0] ?? START;
}

export function reached(at: Cursor, end: Cursor): boolean {
  return BigInt(at.txid) > BigInt(end.txid) || (at.txid === end.txid && BigInt(at.pos) >= BigInt(end.pos));
}

const BOUND_MS = 10_000;

/** Applies at `to` everything `from` had for it when called (within 10 s). */
export async function syncSites(from: TestStore, to: TestStore): Promise<ApplyReport> {
  const total: ApplyReport = { applied: 0, current: 0, duplicates: 0, conflicts: [], rejected: [], parked: [] };
  const end = await feedEnd(from);
  const until = Date.now() + BOUND_MS;
  for (;;) {
    const after = await cursorFor(to.db, from.ctx.siteId);
    if (reached(after, end)) return total;
    assert.ok(
      Date.now() < until,
      `the feed from ${from.ctx.siteId} did not reach ${end.txid}:${end.pos} within ${BOUND_MS / 1000} s`,
    );
    const page = await readChanges(from.db, { region: from.ctx.region, forSite: to.ctx.siteId, after, limit: 50 });
    if (page.next.txid === after.txid && page.next.pos === after.pos) {
      await new Promise((r) => setTimeout(r, 10));
      continue;
    }
    const r = await applyBatch(
      { db: to.db, siteId: to.ctx.siteId, region: to.ctx.region, clock: to.ctx.clock, records: to.ctx },
      { peer: from.ctx.siteId, changes: page.changes, next: page.next },
    );
    total.applied += r.applied;
    total.current += r.current;
    total.duplicates += r.duplicates;
    total.conflicts.push(...r.conflicts);
    total.rejected.push(...r.rejected);
  }
}

/** One page of `from`'s feed from `to`'s cursor, once it holds everything `from` had when called. */
export async function settledPage(from: TestStore, to: TestStore): Promise<FeedPage> {
  const end = await feedEnd(from);
  const after = await cursorFor(to.db, from.ctx.siteId);
  const until = Date.now() + BOUND_MS;
  for (;;) {
    const page = await readChanges(from.db, { region: from.ctx.region, forSite: to.ctx.siteId, after, limit: 500 });
    if (reached(page.next, end)) return page;
    assert.ok(
      Date.now() < until,
      `the feed from ${from.ctx.siteId} did not reach ${end.txid}:${end.pos} within ${BOUND_MS / 1000} s`,
    );
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Repeats `pull` until `to`'s cursor for `fromId` reaches where `from`'s outbox ended when called (within 10 s). */
export async function pullUntilCaughtUp(
  from: { db: Queryable },
  to: { db: Db },
  fromId: string,
  pull: () => Promise<unknown>,
): Promise<void> {
  const end = await feedEnd(from);
  const until = Date.now() + BOUND_MS;
  while (!reached(await cursorFor(to.db, fromId), end)) {
    assert.ok(Date.now() < until, `the feed from ${fromId} did not reach ${end.txid}:${end.pos} within ${BOUND_MS / 1000} s`);
    await pull();
  }
}
