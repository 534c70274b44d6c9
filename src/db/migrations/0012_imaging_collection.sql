-- Active collection from source PACS (DESIGN.md §9): what each source said it holds per
-- study and how far medmesh got in fetching it. A restart reads this and goes on.
CREATE TABLE imaging_collection_study (
  source text NOT NULL,
  study_uid text NOT NULL,
  study_date text NOT NULL,
  source_instances integer,
  state text NOT NULL CHECK (state IN ('pending', 'retrieved', 'failed')),
  attempts integer NOT NULL DEFAULT 0,
  last_error text,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (source, study_uid)
);
CREATE INDEX imaging_collection_study_day ON imaging_collection_study (source, study_date);

CREATE TABLE imaging_collection_day (
  source text NOT NULL,
  study_date text NOT NULL,
  queried_at timestamptz NOT NULL,
  studies integer NOT NULL,
  PRIMARY KEY (source, study_date)
);
