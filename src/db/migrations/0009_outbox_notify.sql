-- Wakes the changefeed's long polls when a transaction that wrote changes commits, on every
-- API node of the site (LISTEN medmesh_outbox_<schema>), instead of each poll asking the
-- database every few milliseconds. One notification per statement, merged per transaction.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('medmesh_outbox_' || current_schema(), '');
  RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
