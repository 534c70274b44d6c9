-- Key management (src/security/kms). Key material is only ever stored wrapped under the
-- site's customer master key (CMK); the CMK itself is never stored, only its check value.

CREATE TABLE kms_root (
  site_id text PRIMARY KEY,
  cmk_id uuid NOT NULL UNIQUE,
  kcv text NOT NULL,                     -- key check value: HMAC-SM3(CMK, "kcv"), first 8 bytes hex
  threshold integer NOT NULL CHECK (threshold >= 2),
  share_count integer NOT NULL CHECK (share_count >= threshold),
  signing_public_key text NOT NULL,      -- SM2, signs destruction certificates
  signing_private_wrapped bytea NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- The wrapped custodian shares made at init (unreadable without custodians' private keys).
CREATE TABLE kms_share (
  cmk_id uuid NOT NULL,
  share_index integer NOT NULL,
  custodian text NOT NULL,
  wrapped jsonb NOT NULL,
  PRIMARY KEY (cmk_id, share_index)
);

-- Wrapped shares other sites deposited here for safekeeping (regional standard §7.3.2).
CREATE TABLE kms_deposited_share (
  owner_site text NOT NULL,
  cmk_id uuid NOT NULL,
  share_index integer NOT NULL,
  wrapped jsonb NOT NULL,
  deposited_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (owner_site, cmk_id, share_index)
);

CREATE TABLE kms_key (
  name text PRIMARY KEY,
  algorithm text NOT NULL,
  exportable boolean NOT NULL DEFAULT false,
  latest_version integer NOT NULL,
  min_decryption_version integer NOT NULL DEFAULT 1,
  min_encryption_version integer NOT NULL DEFAULT 0, -- 0: always the latest
  rotation_period_seconds integer,
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE kms_key_version (
  name text NOT NULL REFERENCES kms_key (name),
  version integer NOT NULL,
  material_wrapped bytea,                -- NULL once destroyed
  created_at timestamptz NOT NULL DEFAULT now(),
  destroyed_at timestamptz,
  PRIMARY KEY (name, version),
  CHECK ((material_wrapped IS NULL) = (destroyed_at IS NOT NULL))
);

-- Permanent record: destruction certificates are never updated or deleted.
CREATE TABLE kms_destruction_certificate (
  id uuid PRIMARY KEY,
  key_name text NOT NULL,
  versions integer[] NOT NULL,
  issued_at timestamptz NOT NULL,
  document text NOT NULL,                -- the canonical bytes that were signed
  signature bytea NOT NULL               -- SM2 over document, by the site's signing key
);
CREATE FUNCTION kms_certificate_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'destruction certificates are permanent records';
END $$;
CREATE TRIGGER kms_certificate_no_change BEFORE UPDATE OR DELETE ON kms_destruction_certificate
  FOR EACH ROW EXECUTE FUNCTION kms_certificate_immutable();
