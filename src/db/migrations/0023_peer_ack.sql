-- How far each peer has applied this site's changefeed (DESIGN.md §6, synchronous classes): a
-- peer's puller asks for the page after the last one it applied and checkpointed, so the cursor
-- of each pull acknowledges every change up to it. A write of a synchronous class is answered
-- once its twin's acknowledgement passes the write's outbox row. Updates wake waiters on every
-- API node (NOTIFY medmesh_ack_<schema>).
CREATE TABLE replication_peer_ack (
  peer text PRIMARY KEY,
  txid xid8 NOT NULL,
  pos bigint NOT NULL,
  acked_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION peer_ack_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('medmesh_ack_' || current_schema(), '');
  RETURN NULL;
END $$;
CREATE TRIGGER peer_ack_notify AFTER INSERT OR UPDATE ON replication_peer_ack
  FOR EACH STATEMENT EXECUTE FUNCTION peer_ack_notify();
