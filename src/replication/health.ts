// The replication part of a site's health: whether every link this node pulls works, and
// whether changes wait in dead letters (received changes that could not be applied, own
// changes that could not be sent). Either makes the site "degraded": it still serves local
// requests (readiness is not lost because a peer is down), but monitoring must alert.
import type { Queryable } from '../db/index.ts';
import type { LinkState, ReplicationMetrics } from './metrics.ts';

export type HealthProblem =
  | { kind: 'link-down'; peer: string; since: string | null; lastError: string | null; lagMs: number }
  | { kind: 'dead-letters'; direction: 'received' | 'sent'; count: number }
  | { kind: 'dead-letters-unknown'; error: string };

export interface ReplicationHealth {
  status: 'ok' | 'degraded';
  degraded: HealthProblem[];
  replication: Array<
    Pick<LinkState, 'peer' | 'state' | 'up' | 'lagMs'> & {
      lastPullAt: string | null;
      lastContactAt: string | null;
      downSince: string | null;
      lastError: string | null;
    }
  >;
  deadLetters: { received: number; sent: number } | null;
}

/** How long health waits for the dead-letter counts (a database that hangs must not hang health). */
const COUNT_TIMEOUT_MS = 2000;

export async function replicationHealth(o: {
  db: Queryable;
  metrics?: ReplicationMetrics;
  now?: number;
}): Promise<ReplicationHealth> {
  const now = o.now ?? Date.now();
  const links = o.metrics?.links(now) ?? [];
  const degraded: HealthProblem[] = links
    .filter((l) => l.state === 'down')
    .map((l) => ({
      kind: 'link-down',
      peer: l.peer,
      since: l.downSince ?? null,
      lastError: l.lastError ?? null,
      lagMs: l.lagMs,
    }));
  let deadLetters: ReplicationHealth['deadLetters'] = null;
  let timer: NodeJS.Timeout | undefined;
  try {
    const counted = o.db.query<{ received: number; sent: number }>(
      `SELECT (SELECT count(*)::int FROM replication_dead_letter WHERE status <> 'skipped') AS received,
              (SELECT count(*)::int FROM replication_feed_dead_letter WHERE status <> 'skipped') AS sent`,
    );
    const late = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${COUNT_TIMEOUT_MS} ms`)), COUNT_TIMEOUT_MS);
    });
    counted.catch(() => undefined); // lost the race: its outcome no longer matters
    const { rows } = await Promise.race([counted, late]);
    deadLetters = { received: rows[0]?.received ?? 0, sent: rows[0]?.sent ?? 0 };
    if (deadLetters.received) degraded.push({ kind: 'dead-letters', direction: 'received', count: deadLetters.received });
    if (deadLetters.sent) degraded.push({ kind: 'dead-letters', direction: 'sent', count: deadLetters.sent });
  } catch (e) {
    degraded.push({
      kind: 'dead-letters-unknown',
      error: `counting dead letters: ${e instanceof Error ? e.message : String(e)}`,
    });
  } finally {
    clearTimeout(timer);
  }
  return {
    status: degraded.length ? 'degraded' : 'ok',
    degraded,
    replication: links.map((l) => ({
      peer: l.peer,
      state: l.state,
      up: l.up,
      lagMs: l.lagMs,
      lastPullAt: l.lastPullAt ?? null,
      lastContactAt: l.lastContactAt ?? null,
      downSince: l.downSince ?? null,
      lastError: l.lastError ?? null,
    })),
    deadLetters,
  };
}
