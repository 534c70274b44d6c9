-- Audit retention: older segments of the log are exported to signed archive files (for the
-- WORM archive) before they may leave the database. A deletion is refused unless the session
-- says it is pruning and the entry lies in an exported segment: nothing goes without export.
CREATE TABLE audit_export (
  from_seq bigint NOT NULL,
  to_seq bigint NOT NULL CHECK (to_seq >= from_seq),
  file_name text NOT NULL,
  file_sm3 bytea NOT NULL,                -- SM3 of the whole file as written and read back
  checkpoint_tree_size bigint NOT NULL,   -- the signed checkpoint the segment ends at (= to_seq + 1)
  exported_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (from_seq)
);
CREATE TRIGGER audit_export_append_only BEFORE UPDATE OR DELETE ON audit_export FOR EACH ROW EXECUTE FUNCTION audit_append_only();

CREATE FUNCTION audit_entry_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' AND current_setting('medmesh.audit_prune', true) = 'on'
     AND EXISTS (SELECT 1 FROM audit_export x WHERE OLD.seq BETWEEN x.from_seq AND x.to_seq) THEN
    RETURN OLD;
  END IF;
  RAISE EXCEPTION 'the audit log is append-only (% on %); only exported segments may be pruned', TG_OP, TG_TABLE_NAME;
END $$;
DROP TRIGGER audit_entry_append_only ON audit_entry;
CREATE TRIGGER audit_entry_append_only BEFORE UPDATE OR DELETE ON audit_entry FOR EACH ROW EXECUTE FUNCTION audit_entry_guard();
