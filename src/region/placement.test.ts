import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { describe, it } from 'node:test';
import type { Patient } from '@medplum/fhirtypes';
import { parseRegion } from './load-region.ts';
import { GEOLOCATION_URL, placePatient } from './placement.ts';
import { makeResidentId } from './resident-id.ts';

const parsed = parseRegion(await readFile(new URL('../../region.example.yaml', import.meta.url), 'utf8'));
assert.ok(parsed.ok);
const region = parsed.region;
const RID = region.config.identifierSystems.residentId;
const ctx = (receivingSite: string, orgShards: Record<string, string> = {}) => ({
  region,
  receivingSite,
  organizationShard: (id: string) => Promise.resolve(orgShards[id]),
});
const geo = (lat: number, lon: number) => ({
  url: GEOLOCATION_URL,
  extension: [
    { url: 'latitude', valueDecimal: lat },
    { url: 'longitude', valueDecimal: lon },
  ],
});

describe('home shard placement', () => {
  it('places by resident ID division, falling back county -> prefecture', async () => {
    const p: Patient = {
      resourceType: 'Patient',
      identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440305', birthDate: '1985-06-15', sequence: 42 }) }],
    };
    const r = await placePatient(p, ctx('B'));
    assert.ok(r.ok);
    assert.deepEqual(r.placement, {
      shard: 'shenzhen',
      method: 'resident-id',
      reason: 'resident ID division 440305 matched 440300',
    });
  });

  it('refuses an invalid resident ID instead of guessing, naming the element', async () => {
    const id = makeResidentId({ divisionCode: '440305', birthDate: '1985-06-15', sequence: 42 });
    const wrong = id.slice(0, 17) + (id[17] === '0' ? '1' : '0');
    const r = await placePatient(
      {
        resourceType: 'Patient',
        identifier: [
          { system: 'x', value: 'y' },
          { system: RID, value: wrong },
        ],
      },
      ctx('B'),
    );
    assert.ok(!r.ok);
    assert.equal(r.error.kind, 'invalid-identifier');
    assert.ok(r.error.kind === 'invalid-identifier' && r.error.expression === 'Patient.identifier[1].value');
  });

  it('uses the insurance card when there is no resident ID', async () => {
    const r = await placePatient(
      {
        resourceType: 'Patient',
        identifier: [{ system: region.config.identifierSystems.insuranceCard, value: '4406051234567' }],
      },
      ctx('C'),
    );
    assert.ok(r.ok);
    assert.equal(r.placement.shard, 'foshan');
    assert.equal(r.placement.method, 'insurance-card');
  });

  it('places by home address geolocation, preferring the home address', async () => {
    const p: Patient = {
      resourceType: 'Patient',
      address: [
        { use: 'work', extension: [geo(23.129, 113.264)] },
        { use: 'home', extension: [geo(22.543, 114.058)] },
      ],
    };
    const r = await placePatient(p, ctx('B'));
    assert.ok(r.ok);
    assert.equal(r.placement.shard, 'shenzhen');
    assert.equal(r.placement.method, 'geolocation');
  });

  it('places a patient from outside the region instead of rejecting them, and says why', async () => {
    const beijing = makeResidentId({ divisionCode: '110105', birthDate: '1970-01-01', sequence: 7 });
    const p: Patient = {
      resourceType: 'Patient',
      identifier: [{ system: RID, value: beijing }],
      address: [{ use: 'home', country: 'SG', extension: [geo(1.35, 103.82)] }],
    };
    const r = await placePatient(p, ctx('C'));
    assert.ok(r.ok);
    assert.equal(r.placement.shard, 'shenzhen');
    assert.equal(r.placement.method, 'site-default');
    assert.match(r.placement.reason, /default shard of receiving site C/);
    assert.match(r.placement.reason, /resident ID division 110105 is outside the region/);
    assert.match(r.placement.reason, /matches no shard/);
  });

  it('uses the managing organization before the site default', async () => {
    const p: Patient = { resourceType: 'Patient', managingOrganization: { reference: 'Organization/zq-hospital' } };
    const r = await placePatient(p, ctx('B', { 'zq-hospital': 'zhaoqing' }));
    assert.ok(r.ok);
    assert.deepEqual([r.placement.shard, r.placement.method], ['zhaoqing', 'managing-organization']);
  });

  it('refuses with a clear message at a site configured to refuse', async () => {
    const r = await placePatient({ resourceType: 'Patient', name: [{ family: 'Tan' }] }, ctx('A'));
    assert.ok(!r.ok);
    assert.equal(r.error.kind, 'refused');
    assert.match(r.error.message, /site A has no default shard/);
  });
});
