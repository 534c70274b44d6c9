-- This site's verified copy of the witness's vote chain (DESIGN.md §6, docs/failover.md). The
-- lease keeper (src/failover/lease-keeper.ts) fetches votes after its head, verifies each
-- (signature, sequence, predecessor, epochs) and stores only what verified, in order: a
-- forged, forked or out-of-order vote is never written here (it is alarmed instead).
CREATE TABLE witness_vote (
  seq bigint PRIMARY KEY CHECK (seq >= 1),
  -- SM3 of the vote's canonical bytes: the next vote's `prev`.
  hash text NOT NULL,
  body jsonb NOT NULL,
  stored_at timestamptz NOT NULL DEFAULT now()
);

-- How far this site has applied each peer's feed as an HLC (the newest change applied from
-- it), next to the cursor and updated in the same transaction: what a standby reports to the
-- witness as its applied position of the holder's writes.
ALTER TABLE replication_cursor ADD COLUMN hlc bigint NOT NULL DEFAULT 0;
