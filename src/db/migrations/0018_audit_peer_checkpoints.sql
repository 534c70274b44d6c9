-- Checkpoints of the other sites' audit logs that this site has checked and cosigned
-- (src/security/audit/witness.ts). A peer whose log later shrinks, or grows in a way its
-- consistency proof cannot connect to the checkpoint held here, is caught by this site; and
-- the peer's own `audit verify` asks for these to find its truncation. Kept append-only:
-- the latest row per peer is what the next check starts from.
CREATE TABLE audit_peer_checkpoint (
  peer_site text NOT NULL,
  tree_size bigint NOT NULL CHECK (tree_size > 0),
  root bytea NOT NULL,
  issued_at timestamptz NOT NULL,
  statement text NOT NULL,             -- the peer's canonical signed statement
  signature bytea NOT NULL,            -- the peer's SM2 signature over it (checked with its registered key)
  cosignature bytea NOT NULL,          -- this site's SM2 signature over the same statement
  received_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (peer_site, tree_size)
);
CREATE TRIGGER audit_peer_checkpoint_append_only BEFORE UPDATE OR DELETE ON audit_peer_checkpoint
  FOR EACH ROW EXECUTE FUNCTION audit_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_peer_checkpoint FROM PUBLIC;
