-- Each study's link to the FHIR record: the Patient it belongs to and its ImagingStudy,
-- brought in step a moment after the study last changed (not once per instance), or the
-- reason it could not be (for example: the patient's home shard is active elsewhere).
ALTER TABLE imaging_study ADD COLUMN patient_ref text;
ALTER TABLE imaging_study ADD COLUMN fhir_synced_at timestamptz;
ALTER TABLE imaging_study ADD COLUMN link_note text;
ALTER TABLE imaging_study ADD COLUMN source text;
CREATE INDEX imaging_study_unsynced ON imaging_study (updated_at) WHERE fhir_synced_at IS NULL;
