-- Which site and region this database belongs to: a site refuses to start on another's database.
CREATE TABLE site_identity (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  region_id text NOT NULL,
  site_id text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- Persisted HLC upper bound per site (clock never goes backwards across restarts).
CREATE TABLE hlc_bound (
  site_id text PRIMARY KEY,
  upper_ms bigint NOT NULL
);

-- Current version of every resource (tombstones included: deleted = true, content null).
CREATE TABLE resource_current (
  resource_type text NOT NULL,
  id text NOT NULL,
  version_id text NOT NULL,
  hlc bigint NOT NULL,
  origin_site text NOT NULL,
  shard text,
  data_class text NOT NULL,
  patient_id text,
  deleted boolean NOT NULL DEFAULT false,
  last_updated timestamptz NOT NULL,
  content jsonb,
  PRIMARY KEY (resource_type, id)
);
CREATE INDEX resource_current_updated ON resource_current (resource_type, last_updated, id);

-- Every version ever written: a grow-only set (DESIGN.md §4).
CREATE TABLE resource_history (
  resource_type text NOT NULL,
  id text NOT NULL,
  version_id text NOT NULL,
  hlc bigint NOT NULL,
  parent_hlc bigint,
  origin_site text NOT NULL,
  epoch bigint NOT NULL DEFAULT 0,
  shard text,
  data_class text NOT NULL,
  deleted boolean NOT NULL DEFAULT false,
  last_updated timestamptz NOT NULL,
  content jsonb,
  PRIMARY KEY (resource_type, id, version_id)
);
CREATE INDEX resource_history_type_hlc ON resource_history (resource_type, hlc);

-- Search index, rewritten with the current version in the same statement.
CREATE TABLE search_token (
  resource_type text NOT NULL,
  resource_id text NOT NULL,
  code text NOT NULL,
  system text,
  value text COLLATE "C"
);
CREATE INDEX search_token_lookup ON search_token (resource_type, code, value);
CREATE INDEX search_token_owner ON search_token (resource_type, resource_id);

CREATE TABLE search_string (
  resource_type text NOT NULL,
  resource_id text NOT NULL,
  code text NOT NULL,
  value text COLLATE "C" NOT NULL
);
CREATE INDEX search_string_lookup ON search_string (resource_type, code, value);
CREATE INDEX search_string_owner ON search_string (resource_type, resource_id);

CREATE TABLE search_date (
  resource_type text NOT NULL,
  resource_id text NOT NULL,
  code text NOT NULL,
  lo timestamptz NOT NULL,
  hi timestamptz NOT NULL
);
CREATE INDEX search_date_lookup ON search_date (resource_type, code, lo);
CREATE INDEX search_date_owner ON search_date (resource_type, resource_id);

CREATE TABLE search_reference (
  resource_type text NOT NULL,
  resource_id text NOT NULL,
  code text NOT NULL,
  target text COLLATE "C" NOT NULL
);
CREATE INDEX search_reference_lookup ON search_reference (resource_type, code, target);
CREATE INDEX search_reference_owner ON search_reference (resource_type, resource_id);

-- EMPI directory: patient -> home shard, with the reason it was placed there.
CREATE TABLE empi_patient (
  patient_id text PRIMARY KEY,
  home_shard text NOT NULL,
  method text NOT NULL,
  reason text NOT NULL,
  placed_by_site text NOT NULL,
  placed_at timestamptz NOT NULL DEFAULT now()
);

-- Replication outbox (DESIGN.md §5), written in the same transaction as every change.
-- Readers page by (txid, pos) only below pg_snapshot_xmin(pg_current_snapshot()).
CREATE TABLE outbox (
  txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
  pos bigint GENERATED ALWAYS AS IDENTITY,
  change_id uuid NOT NULL, -- random per change; receivers dedupe on it
  origin_site text NOT NULL,
  hlc bigint NOT NULL,
  parent_hlc bigint,
  epoch bigint NOT NULL DEFAULT 0,
  shard text,
  data_class text NOT NULL,
  resource_type text NOT NULL,
  resource_id text NOT NULL,
  version_id text NOT NULL,
  deleted boolean NOT NULL,
  payload jsonb,
  PRIMARY KEY (txid, pos)
);
