-- Imaging index (DESIGN.md §9): patient/study/series/instance attributes that C-FIND and
-- QIDO-RS match on. Files live in the blob store, SM4-CBC encrypted per file; a row holds its
-- blob key, its wrapped data key and the SHA-256 of the file as received.
CREATE TABLE imaging_study (
  study_uid text PRIMARY KEY,
  patient_id text,
  patient_name text,
  patient_birth_date text,
  patient_sex text,
  study_date text,
  study_time text,
  accession_number text,
  study_description text,
  study_id text,
  referring_physician text,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX imaging_study_patient ON imaging_study (patient_id);
CREATE INDEX imaging_study_date ON imaging_study (study_date);
CREATE INDEX imaging_study_accession ON imaging_study (accession_number);

CREATE TABLE imaging_series (
  series_uid text PRIMARY KEY,
  study_uid text NOT NULL REFERENCES imaging_study (study_uid),
  modality text,
  series_number integer,
  series_description text
);
CREATE INDEX imaging_series_study ON imaging_series (study_uid);

-- Every copy ever received of an instance: re-sending the same bytes is a no-op; different
-- bytes under the same SOP Instance UID become a new version (flagged), the old one kept.
CREATE TABLE imaging_instance (
  sop_instance_uid text NOT NULL,
  version integer NOT NULL CHECK (version > 0),
  current boolean NOT NULL,
  series_uid text NOT NULL REFERENCES imaging_series (series_uid),
  study_uid text NOT NULL REFERENCES imaging_study (study_uid),
  sop_class_uid text NOT NULL,
  instance_number integer,
  transfer_syntax_uid text NOT NULL,
  number_of_frames integer,
  rows integer,
  columns integer,
  charset text,
  size_bytes bigint NOT NULL,
  sha256 text NOT NULL,
  blob_key text NOT NULL UNIQUE,
  data_key bytea NOT NULL,
  attributes jsonb NOT NULL,
  flag text,
  source text NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (sop_instance_uid, version)
);
CREATE UNIQUE INDEX imaging_instance_current ON imaging_instance (sop_instance_uid) WHERE current;
CREATE INDEX imaging_instance_series ON imaging_instance (series_uid) WHERE current;
CREATE INDEX imaging_instance_study ON imaging_instance (study_uid) WHERE current;
