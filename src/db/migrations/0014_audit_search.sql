-- Auditors search the log by patient (entity), by user (agent) and by time over months of
-- entries: indexes so a search reads the matching entries instead of decoding every one.
-- Entity and agent are read from the canonical bytes by a function declared IMMUTABLE for
-- the index (a row's bytes never change: append-only; the database encoding is fixed). Time
-- is the append time (recorded_at, within milliseconds of the entry's own): one JSON parse
-- less per append, and a plain column the planner has statistics for.
CREATE FUNCTION audit_entry_json(entry bytea) RETURNS jsonb LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  AS $$ SELECT convert_from(entry, 'UTF8')::jsonb $$;

CREATE INDEX audit_entry_by_entity ON audit_entry ((audit_entry_json(entry) ->> 'resource'), seq);
CREATE INDEX audit_entry_by_agent ON audit_entry ((audit_entry_json(entry) -> 'actor' ->> 'id'), seq);
CREATE INDEX audit_entry_by_time ON audit_entry (recorded_at);
