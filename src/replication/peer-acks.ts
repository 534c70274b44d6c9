// Synchronous classes (DESIGN.md §6): a write of a class the region file marks critical is
// answered only once the shard's DR twin has applied it, so the class loses nothing when the
// writing site dies (RPO 0). The twin's puller acknowledges: each pull names the cursor of the
// last page it applied and checkpointed (migration 0023 records it per peer and wakes waiters
// on every API node). The wait is bounded; what happens on timeout is the class's policy.
import { reasonOf, type Logger } from '../common/index.ts';
import type { Db, Queryable } from '../db/index.ts';
import type { Region, SynchronousClass } from '../region/index.ts';
import type { Cursor } from './changefeed.ts';

/** The notification channel of acknowledgements (the Db adds the schema). */
export const ACK_CHANNEL = 'medmesh_ack';
/** Waiters also look this often (a notification can be lost with its connection). */
const POLL_MS = 100;

/** Records that `peer` has applied this site's feed up to `cursor` (only ever forward). */
export async function recordPeerAck(q: Queryable, peer: string, cursor: Cursor): Promise<void> {
  if (cursor.txid === '0' && cursor.pos === '0') return;
  await q.query(
    `INSERT INTO replication_peer_ack (peer, txid, pos) VALUES ($1, $2::text::xid8, $3)
     ON CONFLICT (peer) DO UPDATE SET txid = excluded.txid, pos = excluded.pos, acked_at = now()
      WHERE (replication_peer_ack.txid, replication_peer_ack.pos) < (excluded.txid, excluded.pos)`,
    [peer, cursor.txid, cursor.pos],
    { name: 'medmesh_record_peer_ack' },
  );
}

export type SyncOutcome =
  | { status: 'not-synchronous' }
  | { status: 'confirmed'; className: string; twin: string; waitedMs: number }
  | { status: 'timeout'; className: string; twin: string; waitedMs: number; policy: SynchronousClass['onTimeout'] };

export interface SyncGateOptions {
  db: Db;
  region: Region;
  siteId: string;
  logger: Logger;
  /** Counts each timeout by class and policy (an alarm for operators). */
  onTimeout?: (className: string, policy: SynchronousClass['onTimeout']) => void;
}

/** Holds back the answer to a synchronous-class write until the twin applied it, or its class's timeout. */
export class SyncGate {
  readonly #o: SyncGateOptions;
  readonly #wakers = new Set<() => void>();
  #unlisten: (() => Promise<void>) | undefined;
  #listening: Promise<void> | undefined;

  constructor(o: SyncGateOptions) {
    this.#o = o;
  }

  /** Whether any class is configured (no class: nothing to wait for, no LISTEN connection). */
  get active(): boolean {
    return this.#o.region.config.policies.synchronous.length > 0;
  }

  /**
   * Taken before a write that may be of a synchronous class: every transaction that begins later
   * (the write's) has an id at or above it, so `confirm` finds the write's outbox row by key range.
   */
  async mark(): Promise<string> {
    const { rows } = await this.#o.db.query<{ xmax: string }>('SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS xmax');
    return rows[0]!.xmax;
  }

  async confirm(
    resource: {
      resourceType: string;
      id?: string;
      meta?: { versionId?: string; tag?: ReadonlyArray<{ system?: string; code?: string }> };
    },
    mark: string,
  ): Promise<SyncOutcome> {
    const cls = this.active ? this.#o.region.synchronousClassOf(resource) : undefined;
    if (!cls || !resource.id || !resource.meta?.versionId) return { status: 'not-synchronous' };
    const start = performance.now();
    // The outbox has no index by resource (every write would pay for one): the row is found by the
    // range of transactions that began after `mark` (the primary key's leading column).
    const { rows } = await this.#o.db.query<{ txid: string; pos: string; shard: string | null; data_class: string }>(
      `SELECT txid::text AS txid, pos::text AS pos, shard, data_class FROM outbox
        WHERE txid >= $4::text::xid8 AND resource_type = $1 AND resource_id = $2 AND version_id = $3 LIMIT 1`,
      [resource.resourceType, resource.id, resource.meta.versionId, mark],
    );
    const row = rows[0];
    // Only core data of a shard has a twin that must hold it; other data goes where policy allows.
    const twin = row?.shard && row.data_class === 'core' ? this.#o.region.twinOf(row.shard, this.#o.siteId) : undefined;
    if (!row || !twin) return { status: 'not-synchronous' };
    await this.#listen();
    const deadline = start + cls.timeoutMs;
    for (;;) {
      if (await this.#acked(twin, row))
        return { status: 'confirmed', className: cls.name, twin, waitedMs: performance.now() - start };
      const left = deadline - performance.now();
      if (left <= 0) break;
      await this.#wake(Math.min(left, POLL_MS));
    }
    this.#o.onTimeout?.(cls.name, cls.onTimeout);
    this.#o.logger.error(
      { class: cls.name, twin, resource: `${resource.resourceType}/${resource.id}`, version: resource.meta.versionId },
      `synchronous class ${cls.name}: site ${twin} did not confirm ${resource.resourceType}/${resource.id} ` +
        `within ${cls.timeoutMs} ms (${cls.onTimeout})`,
    );
    return { status: 'timeout', className: cls.name, twin, waitedMs: performance.now() - start, policy: cls.onTimeout };
  }

  async close(): Promise<void> {
    for (const w of this.#wakers) w();
    const off = this.#unlisten;
    this.#unlisten = undefined;
    await off?.().catch(() => undefined); // closing: the connection may already be gone
  }

  async #acked(twin: string, at: { txid: string; pos: string }): Promise<boolean> {
    const { rows } = await this.#o.db.query<{ ok: boolean }>(
      `SELECT (txid, pos) >= ($2::text::xid8, $3::bigint) AS ok FROM replication_peer_ack WHERE peer = $1`,
      [twin, at.txid, at.pos],
      { name: 'medmesh_peer_acked' },
    );
    return rows[0]?.ok === true;
  }

  #wake(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#wakers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#wakers.add(done);
    });
  }

  #listen(): Promise<void> {
    this.#listening ??= this.#o.db
      .listen(ACK_CHANNEL, () => [...this.#wakers].forEach((w) => w()), {
        onError: (e) => this.#o.logger.warn({ err: e }, `synchronous classes: LISTEN lost, reconnecting: ${reasonOf(e)}`),
      })
      .then(
        (off) => {
          this.#unlisten = off;
        },
        (e: unknown) => {
          // Waiters still look every POLL_MS.
          this.#o.logger.warn({ err: e }, `synchronous classes: cannot LISTEN (${reasonOf(e)}); polling instead`);
        },
      );
    return this.#listening;
  }
}
