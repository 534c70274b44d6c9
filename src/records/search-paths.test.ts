// The compiled accessors against FHIRPath itself: for every indexed parameter of every
// served type, over randomly varied resources (reference forms, choice types, arrays,
// missing fields, filters that match and do not), both give the same typed values.
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { evalFhirPathTyped, toTypedValue } from '@medplum/core';
import { loadFhirDefinitions } from './fhir-definitions.ts';
import { compileSearchPath } from './search-paths.ts';
import { buildSearchParamTable, type SearchParamTable } from './search-params.ts';
import { randomResources } from './random-resources.ts';
import { seededRandom, syntheticPatient } from './synthetic.ts';
import { exampleRegion } from '../region/testing.ts';

describe('compiled search paths', () => {
  let table: SearchParamTable;
  before(() => {
    loadFhirDefinitions();
    table = buildSearchParamTable();
  });

  it('covers the indexed parameters, and leaves what is not a simple path to FHIRPath', () => {
    const compiled = [...table.values()].flatMap((ps) => [...ps.values()]).filter((p) => p.extract).length;
    assert.ok(compiled >= 100, `only ${compiled} parameters compiled`);
    for (const expr of [
      'Patient.name.first()',
      "Patient.telecom.where(system='phone' or use='home')",
      'Patient.unknownElement',
      'Observation.effective.start',
      'Bundle.entry[0].resource',
      "Patient.extension('x')",
    ]) {
      assert.equal(compileSearchPath(expr), undefined, expr);
    }
  });

  it('gives what FHIRPath gives for every parameter over varied resources', async () => {
    const rnd = seededRandom(20261123);
    const region = await exampleRegion();
    const resources = Array.from({ length: 150 }, () => randomResources(rnd)).flat();
    for (let n = 0; n < 40; n++) {
      for (const e of syntheticPatient(region, rnd, n).bundle.entry ?? []) if (e.resource) resources.push(e.resource);
    }
    let compared = 0;
    let nonEmpty = 0;
    for (const resource of resources) {
      for (const p of table.get(resource.resourceType)?.values() ?? []) {
        if (!p.extract) continue;
        const want = evalFhirPathTyped(p.atom, [toTypedValue(resource)]).map(
          ({ type, value }): { type: string; value: unknown } => ({ type, value }),
        );
        assert.deepEqual(
          p.extract(resource),
          want,
          `${resource.resourceType}.${p.code} (${p.expression}) on ${JSON.stringify(resource)}`,
        );
        compared++;
        if (want.length) nonEmpty++;
      }
    }
    assert.ok(compared > 10_000 && nonEmpty > compared / 3, `${compared} comparisons, ${nonEmpty} with values`);
  });
});
