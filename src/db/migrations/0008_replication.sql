-- Replication (src/replication) and the grow-only version set (src/records/apply-version.ts).
-- Concurrent versions of a resource (neither writer saw the other) are both kept; the pair is
-- recorded here for clinical review.
CREATE TABLE resource_conflict (
  resource_type text NOT NULL,
  id text NOT NULL,
  version_a text NOT NULL,           -- the smaller version id of the pair
  version_b text NOT NULL,
  detected_at timestamptz NOT NULL DEFAULT now(),
  resolved_at timestamptz,
  resolved_by text,
  resolution_version text,
  PRIMARY KEY (resource_type, id, version_a, version_b)
);
CREATE INDEX resource_conflict_open ON resource_conflict (detected_at) WHERE resolved_at IS NULL;

-- Per peer: how far its changefeed has been applied here (updated in the apply transaction).
CREATE TABLE replication_cursor (
  peer text PRIMARY KEY,
  txid xid8 NOT NULL,
  pos bigint NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
);

-- Change ids already applied: a change delivered twice is applied once.
CREATE TABLE replication_applied (
  change_id uuid PRIMARY KEY,
  peer text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
);

-- Changes a receiver refused (not allowed to hold them, clock too far ahead): kept and alarmed.
CREATE TABLE replication_rejected (
  change_id uuid PRIMARY KEY,
  peer text NOT NULL,
  reason text NOT NULL,
  resource text NOT NULL,
  rejected_at timestamptz NOT NULL DEFAULT now()
);

-- One puller per peer per site: API nodes take a short lease before pulling, so several
-- nodes of a site do not pull the same peer twice.
CREATE TABLE replication_lease (
  peer text PRIMARY KEY,
  holder text NOT NULL,
  expires_at timestamptz NOT NULL
);

-- Apply failures: attempts per change, then the dead-letter table. A parked change blocks
-- later changes of the same resource ('waiting' behind it) until an operator retries or
-- skips it; changes of other resources flow on.
CREATE TABLE replication_attempt (
  change_id uuid PRIMARY KEY,
  attempts integer NOT NULL,
  last_error text NOT NULL
);
CREATE TABLE replication_dead_letter (
  seq bigserial PRIMARY KEY,
  change_id uuid NOT NULL UNIQUE,
  peer text NOT NULL,
  resource text NOT NULL,
  change text NOT NULL,                  -- as received (text: a poison change may not even be valid jsonb)
  status text NOT NULL CHECK (status IN ('parked', 'waiting', 'skipped')),
  error text,
  attempts integer NOT NULL DEFAULT 0,
  parked_at timestamptz NOT NULL DEFAULT now(),
  skipped_reason text,
  skipped_by text
);
CREATE INDEX replication_dead_letter_resource ON replication_dead_letter (resource) WHERE status <> 'skipped';
