-- The entity (`resource`) and agent (`actor.id`) an audit entry names, as plain columns the
-- appender writes beside the bytes. The expression indexes of 0014 parsed every entry's JSON
-- twice on append, which made the append statement about three times as costly in PostgreSQL
-- as the same insert with plain columns (measured: ~320 against ~110 us for three entries) —
-- paid once per audited read. Like recorded_at, the columns are not under the MAC: audit
-- verify checks them against the bytes (`columnMismatch`) and searches recheck the bytes.
ALTER TABLE audit_entry ADD COLUMN entity text, ADD COLUMN agent text;
-- Entries written before this migration get their columns from their own bytes, once. The
-- append-only trigger is off for this statement only, inside the migration's transaction.
ALTER TABLE audit_entry DISABLE TRIGGER audit_entry_append_only;
UPDATE audit_entry SET entity = audit_entry_json(entry) ->> 'resource', agent = audit_entry_json(entry) -> 'actor' ->> 'id';
ALTER TABLE audit_entry ENABLE TRIGGER audit_entry_append_only;
ALTER TABLE audit_entry ALTER COLUMN agent SET NOT NULL;
DROP INDEX audit_entry_by_entity;
DROP INDEX audit_entry_by_agent;
CREATE INDEX audit_entry_by_entity ON audit_entry (entity, seq);
CREATE INDEX audit_entry_by_agent ON audit_entry (agent, seq);
