-- Write leases of shards (DESIGN.md §6): the epoch under which this site may write a shard's
-- home-authority (core) data, and until when. The site's lease keeper (src/failover) writes
-- these rows as the witness grants and renews leases; every fenced write reads its shard's
-- row inside its own statement (medmesh_fence below), so no write can commit for a shard
-- whose lease this site no longer holds. `valid_until` is on the database's clock and is a
-- second guard: the keeper also withdraws a lease on its own monotonic clock (a database
-- clock that jumps back must not stretch a lease).
CREATE TABLE shard_lease (
  shard text PRIMARY KEY,
  -- The site that holds the shard's lease, as this site last learned it (itself or another).
  holder text NOT NULL,
  epoch bigint NOT NULL CHECK (epoch >= 0),
  valid_until timestamptz NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- The epoch under which `p_site` may write `p_shard` now, or SQLSTATE MMF01 (fenced). The row
-- is locked FOR SHARE, so the keeper's withdrawal (an UPDATE) waits for writes already past
-- this check and every write after it is refused.
CREATE FUNCTION medmesh_fence(p_shard text, p_site text) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  l shard_lease%ROWTYPE;
BEGIN
  SELECT * INTO l FROM shard_lease WHERE shard = p_shard FOR SHARE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'MMF01', MESSAGE = 'fenced', DETAIL = json_build_object('shard', p_shard)::text;
  END IF;
  IF l.holder <> p_site OR l.valid_until <= clock_timestamp() THEN
    RAISE EXCEPTION USING ERRCODE = 'MMF01', MESSAGE = 'fenced',
      DETAIL = json_build_object('shard', p_shard, 'holder', l.holder, 'epoch', l.epoch,
                                 'expired', l.holder = p_site)::text;
  END IF;
  RETURN l.epoch;
END $$;
