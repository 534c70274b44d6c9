-- An EMPI directory entry is written once and never changes (first placement wins): its one
-- history row is its state, and `empi_patient` is where it is looked up. It keeps no current
-- row: one row and two index entries fewer per new patient, here and at every site it reaches.
DELETE FROM resource_current WHERE resource_type = 'EmpiEntry';
