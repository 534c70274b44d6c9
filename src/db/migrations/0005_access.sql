-- Access control (src/security/access): policies and masking rules as versioned documents,
-- and grants (care-relationship grants and break-glass) with a validity window.
CREATE TABLE access_document (
  kind text NOT NULL CHECK (kind IN ('policy', 'masking')),
  name text NOT NULL,
  version integer NOT NULL CHECK (version > 0),
  body jsonb NOT NULL,
  author text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (kind, name, version)
);

CREATE TABLE access_grant (
  id uuid PRIMARY KEY,
  kind text NOT NULL CHECK (kind IN ('grant', 'break-glass')),
  user_id text NOT NULL,
  patient_id text NOT NULL,
  reason text NOT NULL CHECK (length(reason) >= 10),
  valid_from timestamptz NOT NULL,
  valid_until timestamptz NOT NULL CHECK (valid_until > valid_from),
  granted_by text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  revoked_at timestamptz,
  revoked_by text
);
CREATE INDEX access_grant_user ON access_grant (user_id, patient_id);
