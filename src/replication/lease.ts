// Site-wide leases in replication_lease: background work for a peer (pulling it, checking
// it) runs on one API node of the site at a time, whatever the number of nodes.
import type { Queryable } from '../db/index.ts';

/**
 * Takes the lease `name` for `seconds` if it is free or lapsed; with `renew`, also when this
 * holder has it already (a puller keeps its link; a periodic check must wait for the lapse).
 */
export async function claimLease(q: Queryable, o: { name: string; holder: string; seconds: number; renew: boolean }): Promise<boolean> {
  const { rows } = await q.query(
    `INSERT INTO replication_lease (peer, holder, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))
     ON CONFLICT (peer) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
      WHERE replication_lease.expires_at < now() OR ($4 AND replication_lease.holder = excluded.holder)
     RETURNING holder`,
    [o.name, o.holder, o.seconds, o.renew],
  );
  return rows.length > 0;
}

/** Gives the lease back at once (a stopped node), if this holder has it. */
export async function releaseLease(q: Queryable, o: { name: string; holder: string }): Promise<void> {
  await q.query('DELETE FROM replication_lease WHERE peer = $1 AND holder = $2', [o.name, o.holder]);
}
