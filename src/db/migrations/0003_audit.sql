-- Tamper-evident audit log (src/security/audit). Entries are canonical bytes as written,
-- numbered without gaps, each with an HMAC-SM3 under a KMS-held key; signed checkpoints
-- commit to the RFC 9162 Merkle root (SM3) of the first tree_size entries.
CREATE TABLE audit_entry (
  seq bigint PRIMARY KEY CHECK (seq >= 0),
  recorded_at timestamptz NOT NULL DEFAULT now(),
  entry bytea NOT NULL,
  mac bytea NOT NULL
);

CREATE TABLE audit_checkpoint (
  tree_size bigint PRIMARY KEY CHECK (tree_size > 0),
  root bytea NOT NULL,
  frontier bytea NOT NULL,             -- roots of the perfect subtrees (32 bytes each): the next checkpoint starts here
  issued_at timestamptz NOT NULL,
  statement text NOT NULL,             -- the canonical signed statement
  signature bytea NOT NULL,
  signer_site text NOT NULL,
  signer_public_key text NOT NULL
);

CREATE TABLE audit_cosignature (
  tree_size bigint NOT NULL REFERENCES audit_checkpoint (tree_size),
  site text NOT NULL,
  signature bytea NOT NULL,
  public_key text NOT NULL,
  PRIMARY KEY (tree_size, site)
);

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'the audit log is append-only (% on %)', TG_OP, TG_TABLE_NAME;
END $$;
CREATE TRIGGER audit_entry_append_only BEFORE UPDATE OR DELETE ON audit_entry FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoint_append_only BEFORE UPDATE OR DELETE ON audit_checkpoint FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_cosignature_append_only BEFORE UPDATE OR DELETE ON audit_cosignature FOR EACH ROW EXECUTE FUNCTION audit_append_only();
-- Roles other than the owner get no way to change history either.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_entry, audit_checkpoint, audit_cosignature FROM PUBLIC;
