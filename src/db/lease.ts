// Site-wide leases (table replication_lease, named for its first users): background work that
// one API node of a site must do at a time (pulling a peer, checking it, collecting from a
// PACS) is done by whichever node holds the lease, whatever the number of nodes.
import type { Queryable } from './db.ts';

/**
 * Takes the lease `name` for `seconds` if it is free or lapsed; with `renew`, also when this
 * holder has it already (a puller keeps its link; a periodic check must wait for the lapse).
 */
export async function claimLease(
  q: Queryable,
  o: { name: string; holder: string; seconds: number; renew: boolean },
): Promise<boolean> {
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
