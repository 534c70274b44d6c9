// Test support: varied resources of every served type, every indexed element present or
// not at random, as a request body arrives (through JSON). Deterministic for a seeded rnd.
import type { Reference, Resource } from '@medplum/fhirtypes';

export type Rnd = () => number;
export const pick = <T>(rnd: Rnd, xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
const maybe = <T>(rnd: Rnd, v: () => T): T | undefined => (rnd() < 0.7 ? v() : undefined);
const some = <T>(rnd: Rnd, v: () => T): T[] | undefined =>
  rnd() < 0.8 ? Array.from({ length: Math.floor(rnd() * 3) }, v) : undefined;

function reference(rnd: Rnd): Reference {
  return pick<() => Reference>(rnd, [
    () => ({ reference: 'Patient/p1' }),
    () => ({ reference: 'Group/g1' }),
    () => ({ reference: 'https://fhir.example.org/R4/Patient/p2' }),
    () => ({ reference: 'Patient?identifier=urn:x|1' }),
    () => ({ reference: '#contained' }),
    () => ({ reference: '', type: 'Patient', identifier: { system: 'urn:x', value: '2' } }),
    () => ({ type: 'Device', identifier: { value: '3' } }),
    () => ({ display: 'no reference at all' }),
    () => ({ reference: 'Practitioner/d1', display: 'Dr Li' }),
  ])();
}

const concept = (rnd: Rnd) => ({
  coding: some(rnd, () => ({
    system: pick(rnd, ['http://loinc.org', 'urn:local', undefined]),
    code: pick(rnd, ['8867-4', 'x', '']),
  })),
  text: maybe(rnd, () => 'text'),
});
const identifier = (rnd: Rnd) => ({
  system: maybe(rnd, () => 'urn:oid:2.16.156.10011.1.3'),
  value: pick(rnd, ['440106198003040011', 'A-1', '']),
});
const dateTime = (rnd: Rnd) => pick(rnd, ['2024-03-04', '2024-03-04T10:00:00+08:00', '2024', '2024-05']);
const period = (rnd: Rnd) => ({ start: maybe(rnd, () => dateTime(rnd)), end: maybe(rnd, () => dateTime(rnd)) });
const name = (rnd: Rnd) => ({
  family: maybe(rnd, () => pick(rnd, ['王', 'Smith'])),
  given: some(rnd, () => pick(rnd, ['小明', 'John'])),
  text: maybe(rnd, () => '王小明'),
});
const telecom = (rnd: Rnd) => ({
  system: maybe(rnd, () => pick(rnd, ['phone', 'email', 'fax'] as const)),
  value: pick(rnd, ['13800001234', 'a@b.cn']),
});
const address = (rnd: Rnd) => ({
  city: maybe(rnd, () => pick(rnd, ['广州市', 'Shenzhen'])),
  line: some(rnd, () => '天河路 385 号'),
});

/** One resource of each served type, every indexed element present or not at random. */
export function randomResources(rnd: Rnd): Resource[] {
  const subject = () => maybe(rnd, () => reference(rnd));
  const effective = (prefix: string) =>
    pick(rnd, [
      {},
      { [`${prefix}DateTime`]: dateTime(rnd) },
      { [`${prefix}Period`]: period(rnd) },
      { [`${prefix}String`]: 'last spring' },
    ]);
  const common = () => ({
    identifier: some(rnd, () => identifier(rnd)),
    subject: subject(),
    encounter: maybe(rnd, () => reference(rnd)),
    status: 'final',
  });
  const list = [
    {
      resourceType: 'Patient',
      identifier: some(rnd, () => identifier(rnd)),
      name: some(rnd, () => name(rnd)),
      birthDate: maybe(rnd, () => '1980-03-04'),
      gender: maybe(rnd, () => 'female'),
      telecom: some(rnd, () => telecom(rnd)),
      address: some(rnd, () => address(rnd)),
      managingOrganization: maybe(rnd, () => reference(rnd)),
      generalPractitioner: some(rnd, () => reference(rnd)),
    },
    {
      resourceType: 'Practitioner',
      identifier: some(rnd, () => identifier(rnd)),
      name: some(rnd, () => name(rnd)),
      gender: maybe(rnd, () => 'male'),
      telecom: some(rnd, () => telecom(rnd)),
      address: some(rnd, () => address(rnd)),
    },
    {
      resourceType: 'Organization',
      identifier: some(rnd, () => identifier(rnd)),
      name: maybe(rnd, () => '心内科'),
      alias: some(rnd, () => 'Cardiology'),
      address: some(rnd, () => address(rnd)),
      type: some(rnd, () => concept(rnd)),
    },
    {
      resourceType: 'Encounter',
      ...common(),
      class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
      type: some(rnd, () => concept(rnd)),
      period: maybe(rnd, () => period(rnd)),
      participant: some(rnd, () => ({ individual: maybe(rnd, () => reference(rnd)) })),
      serviceProvider: maybe(rnd, () => reference(rnd)),
    },
    {
      resourceType: 'Observation',
      ...common(),
      code: concept(rnd),
      category: some(rnd, () => concept(rnd)),
      performer: some(rnd, () => reference(rnd)),
      ...effective('effective'),
    },
    {
      resourceType: 'Condition',
      ...common(),
      code: maybe(rnd, () => concept(rnd)),
      category: some(rnd, () => concept(rnd)),
      clinicalStatus: maybe(rnd, () => concept(rnd)),
      recordedDate: maybe(rnd, () => dateTime(rnd)),
      ...effective('onset'),
    },
    {
      resourceType: 'Procedure',
      ...common(),
      code: maybe(rnd, () => concept(rnd)),
      category: maybe(rnd, () => concept(rnd)),
      performer: some(rnd, () => ({ actor: reference(rnd) })),
      ...effective('performed'),
    },
    {
      resourceType: 'MedicationRequest',
      ...common(),
      intent: 'order',
      category: some(rnd, () => concept(rnd)),
      requester: maybe(rnd, () => reference(rnd)),
      ...pick(rnd, [{ medicationCodeableConcept: concept(rnd) }, { medicationReference: reference(rnd) }]),
      dosageInstruction: some(rnd, () => ({ timing: maybe(rnd, () => ({ event: some(rnd, () => dateTime(rnd)) })) })),
    },
    {
      resourceType: 'ServiceRequest',
      ...common(),
      intent: 'order',
      code: maybe(rnd, () => concept(rnd)),
      category: some(rnd, () => concept(rnd)),
      authoredOn: maybe(rnd, () => dateTime(rnd)),
      performer: some(rnd, () => reference(rnd)),
      requester: maybe(rnd, () => reference(rnd)),
    },
    {
      resourceType: 'DiagnosticReport',
      ...common(),
      code: concept(rnd),
      category: some(rnd, () => concept(rnd)),
      performer: some(rnd, () => reference(rnd)),
      ...effective('effective'),
    },
    {
      resourceType: 'DocumentReference',
      ...common(),
      masterIdentifier: maybe(rnd, () => identifier(rnd)),
      date: maybe(rnd, () => '2024-03-04T10:00:00Z'),
      category: some(rnd, () => concept(rnd)),
      type: maybe(rnd, () => concept(rnd)),
      context: maybe(rnd, () => ({ encounter: some(rnd, () => reference(rnd)) })),
    },
    {
      resourceType: 'AllergyIntolerance',
      identifier: some(rnd, () => identifier(rnd)),
      patient: reference(rnd),
      encounter: maybe(rnd, () => reference(rnd)),
      recordedDate: maybe(rnd, () => dateTime(rnd)),
      code: maybe(rnd, () => concept(rnd)),
      reaction: some(rnd, () => ({ substance: maybe(rnd, () => concept(rnd)) })),
      category: some(rnd, () => 'food'),
      type: maybe(rnd, () => 'allergy'),
      clinicalStatus: maybe(rnd, () => concept(rnd)),
    },
    {
      resourceType: 'ImagingStudy',
      ...common(),
      started: maybe(rnd, () => dateTime(rnd)),
      series: some(rnd, () => ({
        uid: '1.2.3',
        modality: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: pick(rnd, ['CT', 'MR']) },
        performer: some(rnd, () => ({ actor: reference(rnd) })),
      })),
    },
  ];
  // A contained target, so `resolve()` sees a resource and not a string.
  // As a request body arrives: through JSON (no undefined members).
  return JSON.parse(
    JSON.stringify(
      list.map((r) => (rnd() < 0.2 ? { ...r, subject: { reference: '#p', resource: { resourceType: 'Patient', id: 'p' } } } : r)),
    ),
  ) as Resource[];
}
