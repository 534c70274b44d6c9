-- Blind indexes (HMAC-SM3 under the region's EMPI key) of patients' regional identifiers:
-- any site can find a patient's home shard by identifier without holding the patient.
CREATE TABLE empi_identifier (
  blind text NOT NULL,
  patient_id text NOT NULL,
  PRIMARY KEY (blind, patient_id)
);
