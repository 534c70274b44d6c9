-- The witness's embedded coordination store (src/failover/embedded-store.ts): etcd's model on
-- PostgreSQL. Its own migration set (ledger coordination_migrations), so the tables can live in
-- the witness's own database or beside a site's.

-- One row: the store's global revision, bumped by every change under this row's lock, so
-- changes commit in revision order and a reader that sees revision N sees everything before it.
CREATE TABLE coord_meta (
  one boolean PRIMARY KEY DEFAULT true CHECK (one),
  revision bigint NOT NULL,
  -- Changes at or below this revision were dropped from coord_event (watches cannot start there).
  compacted bigint NOT NULL
);
INSERT INTO coord_meta (revision, compacted) VALUES (1, 0);

-- Keys order by their bytes (collation "C"), as in etcd.
CREATE TABLE coord_kv (
  key text COLLATE "C" PRIMARY KEY,
  value text NOT NULL,
  create_revision bigint NOT NULL,
  mod_revision bigint NOT NULL
);

-- The change history watches read; pruned after a retention time.
CREATE TABLE coord_event (
  revision bigint NOT NULL,
  seq integer NOT NULL,
  key text COLLATE "C" NOT NULL,
  kind text NOT NULL CHECK (kind IN ('put', 'delete')),
  value text,
  at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (revision, seq)
);

-- One row per election: the leader, its fence (the store revision it was elected at) and its
-- expiry on the database's clock.
CREATE TABLE coord_leader (
  name text PRIMARY KEY,
  candidate text NOT NULL,
  fence bigint NOT NULL,
  expires_at timestamptz NOT NULL
);

-- Wakes watches and waiting campaigners on every node when a change or a resignation commits.
CREATE FUNCTION coord_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('medmesh_coord_' || current_schema(), '');
  RETURN NULL;
END $$;
CREATE TRIGGER coord_event_notify AFTER INSERT ON coord_event FOR EACH STATEMENT EXECUTE FUNCTION coord_notify();
CREATE TRIGGER coord_leader_notify AFTER DELETE ON coord_leader FOR EACH STATEMENT EXECUTE FUNCTION coord_notify();
