// Synthetic patients for the demo and benchmarks: valid resident IDs across the region's
// shards, a few by home-address geolocation only, some visitors from outside the region,
// each with encounters and vital-sign observations. Deterministic for a given seed.
import type { Bundle, BundleEntry, Patient } from '@medplum/fhirtypes';
import { encodeGeohash, GEOLOCATION_URL, makeResidentId, type Region } from '../region/index.ts';
import { seededRandom } from '../common/index.ts';

const FAMILY = [
  '王',
  '李',
  '张',
  '刘',
  '陈',
  '杨',
  '黄',
  '赵',
  '吴',
  '周',
  '徐',
  '孙',
  '马',
  '朱',
  '胡',
  '郭',
  '何',
  '林',
  '罗',
  '梁',
];
const GIVEN = [
  '伟',
  '芳',
  '娜',
  '敏',
  '静',
  '丽',
  '强',
  '磊',
  '军',
  '洋',
  '勇',
  '艳',
  '杰',
  '娟',
  '涛',
  '明',
  '超',
  '秀英',
  '建华',
  '志强',
];
const VITALS = [
  { code: '8867-4', display: 'Heart rate', unit: '/min', lo: 55, hi: 110 },
  { code: '8480-6', display: 'Systolic blood pressure', unit: 'mm[Hg]', lo: 95, hi: 165 },
  { code: '8310-5', display: 'Body temperature', unit: 'Cel', lo: 36, hi: 39.5 },
] as const;

export { seededRandom };

export interface SyntheticPatient {
  /** Shard the resolver should place this patient in (undefined: the receiving site decides). */
  expectedShard: string | undefined;
  bundle: Bundle;
}

/** Departments (Organization ids) of the synthetic encounters; the demo's clinicians work in cardiology. */
export const DEPARTMENTS = ['cardiology', 'endocrinology', 'respiratory'] as const;

export function syntheticPatient(region: Region, rnd: () => number, n: number): SyntheticPatient {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const family = pick(FAMILY);
  const given = pick(GIVEN);
  const year = 1940 + Math.floor(rnd() * 80);
  const month = String(1 + Math.floor(rnd() * 12)).padStart(2, '0');
  const day = String(1 + Math.floor(rnd() * 28)).padStart(2, '0');
  const birthDate = `${year}-${month}-${day}`;
  const gender = rnd() < 0.5 ? 'male' : 'female';
  const mobile = `1${pick(['38', '39', '50', '86'])}${String(Math.floor(rnd() * 1e8)).padStart(8, '0')}`;
  const patient: Patient = {
    resourceType: 'Patient',
    name: [{ use: 'official', family, given: [given], text: `${family}${given}` }],
    gender,
    birthDate,
    telecom: [{ system: 'phone', value: mobile, use: 'mobile' }],
  };
  const mode = n % 10;
  let expectedShard: string | undefined;
  const withDivisions = region.shards.filter((s) => s.divisions.length > 0);
  const withGeo = region.shards.filter((s) => s.geohashes.length > 0);
  if (mode === 9) {
    // A visitor from outside the region: no resident ID, an address abroad.
    patient.address = [{ use: 'home', city: 'Singapore', country: 'SG', extension: [geo(1.3521, 103.8198)] }];
  } else if (mode === 8 && withGeo.length) {
    // No identity document: placed by the geolocation of the home address.
    const shard = pick(withGeo);
    const site = region.site(shard.residency[0]!)!;
    patient.address = [
      { use: 'home', text: `${shard.name ?? shard.id}`, extension: [geo(site.location.lat, site.location.lon)] },
    ];
    expectedShard = region.shardForGeohash(encodeGeohash(site.location.lat, site.location.lon))?.shard;
  } else if (withDivisions.length) {
    const shard = pick(withDivisions);
    const prefecture = pick(shard.divisions);
    // A county within the prefecture (or another prefecture for a province-level entry).
    const division = prefecture.endsWith('0000')
      ? `${prefecture.slice(0, 2)}${String(2 + Math.floor(rnd() * 7)).padStart(2, '0')}00`
      : `${prefecture.slice(0, 4)}${String(1 + Math.floor(rnd() * 15)).padStart(2, '0')}`;
    const seq = Math.floor(rnd() * 499) * 2 + (gender === 'male' ? 1 : 0);
    patient.identifier = [
      {
        use: 'official',
        system: region.config.identifierSystems.residentId,
        value: makeResidentId({ divisionCode: division, birthDate, sequence: seq }),
      },
    ];
    expectedShard = region.shardForDivision(division)?.shard;
  }
  const pid = `urn:uuid:${uuidFrom(rnd)}`;
  const entries: BundleEntry[] = [{ fullUrl: pid, resource: patient, request: { method: 'POST', url: 'Patient' } }];
  for (let e = 0; e < 2; e++) {
    const encId = `urn:uuid:${uuidFrom(rnd)}`;
    const start = new Date(Date.UTC(2024, Math.floor(rnd() * 12), 1 + Math.floor(rnd() * 28), 8 + Math.floor(rnd() * 9)));
    entries.push({
      fullUrl: encId,
      resource: {
        resourceType: 'Encounter',
        status: 'finished',
        class: {
          system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode',
          code: e === 0 ? 'AMB' : 'IMP',
          display: e === 0 ? 'ambulatory' : 'inpatient encounter',
        },
        subject: { reference: pid },
        // The department that treated the patient: its staff have a care relationship with them.
        serviceProvider: { reference: `Organization/${pick(DEPARTMENTS)}` },
        period: { start: start.toISOString(), end: new Date(start.getTime() + 3_600_000 * (e === 0 ? 1 : 72)).toISOString() },
      },
      request: { method: 'POST', url: 'Encounter' },
    });
    for (const v of VITALS) {
      const value = Math.round((v.lo + rnd() * (v.hi - v.lo)) * 10) / 10;
      entries.push({
        resource: {
          resourceType: 'Observation',
          status: 'final',
          category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'vital-signs' }] }],
          code: { coding: [{ system: 'http://loinc.org', code: v.code, display: v.display }] },
          subject: { reference: pid },
          encounter: { reference: encId },
          effectiveDateTime: new Date(start.getTime() + 600_000).toISOString(),
          valueQuantity: { value, unit: v.unit, system: 'http://unitsofmeasure.org', code: v.unit },
        },
        request: { method: 'POST', url: 'Observation' },
      });
    }
  }
  return { expectedShard, bundle: { resourceType: 'Bundle', type: 'transaction', entry: entries } };
}

function geo(lat: number, lon: number) {
  return {
    url: GEOLOCATION_URL,
    extension: [
      { url: 'latitude', valueDecimal: lat },
      { url: 'longitude', valueDecimal: lon },
    ],
  };
}

function uuidFrom(rnd: () => number): string {
  const h = Array.from({ length: 32 }, () => Math.floor(rnd() * 16).toString(16));
  h[12] = '4';
  h[16] = ((parseInt(h[16]!, 16) & 3) | 8).toString(16);
  const s = h.join('');
  return `${s.slice(0, 8)}-${s.slice(8, 12)}-${s.slice(12, 16)}-${s.slice(16, 20)}-${s.slice(20)}`;
}
