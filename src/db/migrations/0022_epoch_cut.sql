-- The ends of write epochs (DESIGN.md §6), from the witness's vote chain: when a shard passed
-- from `holder`'s epoch to a higher one (a claim after expiry, a manual failover, a planned
-- switchover), the versions `holder` wrote for the shard at that epoch above `cut_hlc` (how far
-- the successor had applied `holder`'s changes when it took over) were never seen by the new
-- holder: they are the old holder's unreplicated tail. They stay in the version set (nothing is
-- lost) but are "fenced out": never current, outside conflict rules, listed for clinical review
-- until someone writes what they meant on top of the current version. A pure function of the
-- versions and the chain, so every site reaches the same state in any arrival order.
CREATE TABLE epoch_cut (
  shard text NOT NULL,
  epoch bigint NOT NULL,
  holder text NOT NULL,
  cut_hlc bigint NOT NULL,
  -- The vote that ended the epoch (its seq in the witness's chain).
  vote_seq bigint NOT NULL,
  recorded_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (shard, epoch)
);

ALTER TABLE resource_history ADD COLUMN fenced_out boolean NOT NULL DEFAULT false;
-- The review list: few rows, read by shard.
CREATE INDEX resource_history_fenced_out ON resource_history (shard, epoch) WHERE fenced_out;
-- Finding the tail of an epoch when its cut arrives after its versions.
CREATE INDEX resource_history_epoch ON resource_history (shard, epoch, origin_site, hlc) WHERE epoch > 0;
