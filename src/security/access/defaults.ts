// The policies and masking rules a new site starts with (version 1 of each document).
// Operators change them through the admin API; these stay as the documented baseline.
import type { AccessPolicy, AccessRule, MaskingRules } from './policy.ts';

const CLINICAL = [
  'Patient',
  'Encounter',
  'Observation',
  'Condition',
  'Procedure',
  'MedicationRequest',
  'ServiceRequest',
  'DiagnosticReport',
  'DocumentReference',
  'AllergyIntolerance',
  'ImagingStudy',
  'Binary',
];
const DIRECTORY = ['Practitioner', 'Organization'];
const READ = ['read', 'vread', 'search', 'history'] as const;
const WRITE = ['create', 'update'] as const;

const directoryRead: AccessRule = { resourceTypes: DIRECTORY, actions: [...READ], scope: 'all' };

function policy(
  role: string,
  p: Omit<AccessPolicy, 'resourceType' | 'name' | 'role' | 'breakGlass'> & { breakGlass?: boolean },
): AccessPolicy {
  return { resourceType: 'AccessPolicy', name: role, role, breakGlass: false, ...p };
}

export const DEFAULT_POLICIES: readonly AccessPolicy[] = [
  policy('doctor', {
    description:
      'Physicians: read and write the records of patients in their care; the resident ID is read-only (registration owns it).',
    purposes: ['treatment', 'emergency'],
    breakGlass: true,
    rules: [
      { resourceTypes: CLINICAL, actions: [...READ, ...WRITE], scope: 'care', fields: { identifier: 'read-only' } },
      directoryRead,
    ],
  }),
  policy('nurse', {
    description:
      'Nurses: read the records of patients in their care, record observations; identifiers and contact data are masked.',
    purposes: ['treatment', 'emergency'],
    breakGlass: true,
    rules: [
      {
        resourceTypes: ['Patient'],
        actions: [...READ],
        scope: 'care',
        fields: { identifier: 'mask', telecom: 'mask', address: 'mask', contact: 'hidden', photo: 'hidden' },
      },
      { resourceTypes: ['Observation'], actions: [...READ, ...WRITE], scope: 'care' },
      {
        resourceTypes: [
          'Encounter',
          'Condition',
          'Procedure',
          'MedicationRequest',
          'ServiceRequest',
          'AllergyIntolerance',
          'DiagnosticReport',
        ],
        actions: [...READ],
        scope: 'care',
      },
      directoryRead,
    ],
  }),
  policy('pharmacist', {
    description: 'Pharmacists: prescriptions and allergies of patients at the site; demographics masked.',
    purposes: ['treatment'],
    rules: [
      {
        resourceTypes: ['Patient'],
        actions: [...READ],
        scope: 'all',
        fields: { identifier: 'mask', telecom: 'mask', address: 'hidden', contact: 'hidden', photo: 'hidden' },
      },
      { resourceTypes: ['MedicationRequest'], actions: [...READ, 'update'], scope: 'all' },
      { resourceTypes: ['AllergyIntolerance', 'Condition'], actions: [...READ], scope: 'all' },
      directoryRead,
    ],
  }),
  policy('lab', {
    description: 'Laboratory: orders in, results out; demographics reduced to what labelling needs.',
    purposes: ['treatment'],
    rules: [
      {
        resourceTypes: ['Patient'],
        actions: [...READ],
        scope: 'all',
        fields: { identifier: 'mask', telecom: 'hidden', address: 'hidden', contact: 'hidden', photo: 'hidden' },
      },
      { resourceTypes: ['ServiceRequest'], actions: [...READ], scope: 'all' },
      { resourceTypes: ['Observation', 'DiagnosticReport'], actions: [...READ, ...WRITE], scope: 'all' },
      directoryRead,
    ],
  }),
  policy('registrar', {
    description: 'Registration: patients and encounters, no clinical content.',
    purposes: ['treatment'],
    rules: [{ resourceTypes: ['Patient', 'Encounter'], actions: [...READ, ...WRITE], scope: 'all' }, directoryRead],
  }),
  policy('administrator', {
    description: 'Administrators keep the directory (practitioners, organizations) and the policies; no clinical data.',
    purposes: ['treatment', 'audit'],
    rules: [{ resourceTypes: DIRECTORY, actions: [...READ, ...WRITE, 'delete'], scope: 'all' }],
  }),
  policy('auditor', {
    description: 'Auditors read the audit log (AuditEvent view, compliance reports); no clinical data.',
    purposes: ['audit'],
    rules: [directoryRead],
  }),
  policy('researcher', {
    description: 'Researchers search de-identified data with per-project keyed pseudonyms; never an individual record.',
    purposes: ['research'],
    requiredAttributes: ['project'],
    rules: [
      {
        resourceTypes: [
          'Patient',
          'Encounter',
          'Observation',
          'Condition',
          'Procedure',
          'MedicationRequest',
          'DiagnosticReport',
          'AllergyIntolerance',
        ],
        actions: ['search'],
        scope: 'aggregate',
      },
    ],
  }),
  policy('regulator', {
    description: 'Regulators search generalized data for statistics (age bands, 4-digit division codes).',
    purposes: ['statistics'],
    rules: [{ resourceTypes: ['Patient', 'Encounter', 'Condition', 'Observation'], actions: ['search'], scope: 'aggregate' }],
  }),
  policy('patient', {
    description: 'A patient reads their own record.',
    purposes: ['treatment'],
    requiredAttributes: ['patient'],
    rules: [{ resourceTypes: CLINICAL, actions: [...READ], scope: 'own' }, directoryRead],
  }),
  policy('integration', {
    description: 'The hospital information system interface account: reads and writes every record at its site.',
    purposes: ['treatment'],
    rules: [{ resourceTypes: ['*'], actions: [...READ, ...WRITE, 'delete'], scope: 'all' }],
  }),
];

export const DEFAULT_MASKING_RULES: MaskingRules = {
  resourceType: 'MaskingRules',
  description:
    'Clinical: partial masking of marked fields. Research: HMAC-SM3 pseudonyms per project key. Statistics: generalization.',
  clinical: {
    '*': { name: 'partial-name', identifier: 'partial-id', telecom: 'partial-phone', address: 'partial-address' },
  },
  research: {
    '*': { id: 'pseudonym', references: 'pseudonym', identifier: 'pseudonym', text: 'remove', note: 'remove' },
    Patient: {
      name: 'remove',
      telecom: 'remove',
      address: 'city-only',
      birthDate: 'birth-year',
      contact: 'remove',
      photo: 'remove',
    },
  },
  statistics: {
    '*': { id: 'pseudonym', references: 'pseudonym', identifier: 'remove', text: 'remove', note: 'remove' },
    Patient: {
      name: 'remove',
      identifier: 'division-4',
      telecom: 'remove',
      address: 'city-only',
      birthDate: 'age-band',
      contact: 'remove',
      photo: 'remove',
    },
  },
};
