-- Sender-side dead letters (DESIGN.md §5: a record that cannot be sent is parked and alarmed
-- at the sender; it never stops the feed). A change of this site's outbox that cannot be sent
-- (receivers would refuse it, it does not serialize, it is too large) is parked here when a
-- feed page reaches it; later changes of the same resource wait behind it ('waiting'); the
-- feed passes both and flows on. An operator retries (the change and those waiting are sent
-- again, in order, as new outbox rows) or skips it (never sent; the waiting ones are sent).
-- The change itself stays in the outbox row (txid, pos) this names.
CREATE TABLE replication_feed_dead_letter (
  txid xid8 NOT NULL,
  pos bigint NOT NULL,
  change_id uuid NOT NULL,
  resource text NOT NULL,
  status text NOT NULL CHECK (status IN ('parked', 'waiting', 'skipped')),
  error text,
  attempts integer NOT NULL DEFAULT 1,
  parked_at timestamptz NOT NULL DEFAULT now(),
  skipped_reason text,
  skipped_by text,
  PRIMARY KEY (txid, pos)
);
CREATE INDEX replication_feed_dead_letter_resource ON replication_feed_dead_letter (resource, txid, pos);
CREATE INDEX replication_feed_dead_letter_change ON replication_feed_dead_letter (change_id);
