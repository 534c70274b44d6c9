-- Each API node keeps revoked access tokens in memory and reads only what was revoked since
-- its last look (every second), instead of one lookup per request.
ALTER TABLE iam_revoked_token ADD COLUMN revoked_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX iam_revoked_token_recent ON iam_revoked_token (revoked_at);
