-- Identity (src/security/identity): users with roles and attributes, service accounts,
-- refresh tokens, revoked access tokens and used one-time passwords.
CREATE TABLE iam_user (
  id text PRIMARY KEY,
  username text NOT NULL UNIQUE,
  display_name text,
  roles text[] NOT NULL,
  attributes jsonb NOT NULL DEFAULT '{}',
  password_hash text NOT NULL,           -- scrypt$N$r$p$salt$hash (memory-hard)
  totp_secret bytea,                     -- sealed under the site's secrets key; NULL: no second factor
  disabled boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- Sites, routers and edges authenticate with their own SM2 key, never with user tokens.
CREATE TABLE iam_service (
  id text PRIMARY KEY,
  kind text NOT NULL CHECK (kind IN ('site', 'router', 'edge')),
  public_key text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE iam_refresh_token (
  id uuid PRIMARY KEY,
  user_id text NOT NULL REFERENCES iam_user (id),
  token_hash bytea NOT NULL,
  expires_at timestamptz NOT NULL,
  revoked_at timestamptz
);

CREATE TABLE iam_revoked_token (
  jti uuid PRIMARY KEY,
  expires_at timestamptz NOT NULL
);

-- A TOTP code is good once: the step it was used for is remembered.
CREATE TABLE iam_totp_used (
  user_id text NOT NULL,
  step bigint NOT NULL,
  PRIMARY KEY (user_id, step)
);
