// An attacker's try at undoing the clinical masks (issue 22, finding 5): for every role that
// sees resident IDs masked, everything it can read about a patient (read, vread, history,
// searches, Bundles, the patient's other records) is collected, and every candidate resident
// ID consistent with all of it (the visible characters of every masked identifier in a known
// card format, sex, birth date however precise, ages at encounters, the GB 11643 check
// character) is enumerated. The candidates must stay at least MIN_RESIDENT_ID_CANDIDATES and
// no more constrained than without the masks; no other masked value may show in clear.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Patient } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { seededRandom } from '../records/synthetic.ts';
import { encodeGeohash, GEOLOCATION_URL, makeResidentId, residentIdCheckChar } from '../region/index.ts';
import { MIN_RESIDENT_ID_CANDIDATES } from '../security/access/index.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
const CARD = 'urn:oid:2.16.156.10011.1.15';
const GD_CARD = 'urn:test:gd-card'; // "GD" + resident ID
const CARD17 = 'urn:test:card17'; // the resident ID's first 17 digits + "01"
const MRN = 'urn:test:mrn';
const AGE_AT_ENCOUNTER = 'https://medmesh.example/fhir/StructureDefinition/age-at-encounter';
const BIRTH_TIME = 'http://hl7.org/fhir/StructureDefinition/patient-birthTime';
/** Where each card format carries the resident ID (the attacker knows the formats). */
const EMBEDDING: Record<string, number> = { [RID]: 0, [CARD]: 0, [GD_CARD]: 2, [CARD17]: 0 };
const FHIR = { 'content-type': 'application/fhir+json' };

interface Truth {
  id: string;
  rid: string;
  phone: string;
  mrn: string;
  line: string;
  postalCode: string;
  birthDate: string;
}

describe(`masked identifiers cannot be restored from what a role sees (${testBackend()})`, () => {
  const seed = Number(process.env.MEDMESH_TEST_SEED ?? Date.now() % 1_000_000_000);
  const rnd = seededRandom(seed);
  const why = (m: string) => `${m} (seed ${seed}; rerun with MEDMESH_TEST_SEED=${seed})`;
  let s: TestServer;
  const patients: Truth[] = [];

  const call = async (method: string, path: string, headers: Record<string, string>, body?: unknown) => {
    const res = await fetch(`${s.base}${path}`, {
      method,
      headers: body === undefined ? headers : { ...FHIR, ...headers },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await res.text();
    return { status: res.status, headers: [...res.headers.values()], json: (text ? JSON.parse(text) : {}) as unknown };
  };
  const create = async (type: string, body: unknown): Promise<Record<string, unknown>> => {
    const r = await call('POST', `/fhir/R4/${type}`, s.auth, body);
    assert.equal(r.status, 201, JSON.stringify(r.json));
    return r.json as Record<string, unknown>;
  };

  before(async () => {
    s = await startTestServer();
    const thisYear = new Date().getUTCFullYear();
    for (let n = 0; n < 4; n++) {
      // One patient born this year (fewer possible birth days), the others long ago.
      const year = n === 3 ? thisYear : 1930 + Math.floor(rnd() * 80);
      const latest = n === 3 ? new Date() : new Date(Date.UTC(year, 11, 31));
      const born = new Date(Date.UTC(year, 0, 1) + Math.floor(rnd() * (latest.getTime() - Date.UTC(year, 0, 1))));
      const birthDate = born.toISOString().slice(0, 10);
      const male = rnd() < 0.5;
      const sequence = Math.floor(rnd() * 500) * 2 + (male ? 1 : 0);
      const rid = makeResidentId({ divisionCode: '440104', birthDate, sequence });
      const phone = `13${String(Math.floor(rnd() * 1e9)).padStart(9, '0')}`;
      const t: Truth = {
        id: '',
        rid,
        phone,
        mrn: `HZ${String(Math.floor(rnd() * 1e10)).padStart(10, '0')}`,
        line: `天河路 ${n + 1} 号`,
        postalCode: `5106${String(n).padStart(2, '0')}`,
        birthDate,
      };
      const p = await create('Patient', {
        resourceType: 'Patient',
        text: {
          status: 'generated',
          div: `<div xmlns="http://www.w3.org/1999/xhtml">张${n} ${rid} ${birthDate} ${phone} ${t.line} ${t.postalCode}</div>`,
        },
        identifier: [
          { system: RID, value: rid },
          { system: CARD, value: rid },
          { system: GD_CARD, value: `GD${rid}` },
          { system: CARD17, value: `${rid.slice(0, 17)}01` },
          { system: MRN, value: t.mrn },
        ],
        name: [{ family: '张', given: [`${n}号`] }],
        gender: male ? 'male' : 'female',
        birthDate,
        _birthDate: { extension: [{ url: BIRTH_TIME, valueDateTime: `${birthDate}T08:30:00+08:00` }] },
        telecom: [{ system: 'phone', value: phone }],
        address: [{ line: [t.line], district: '天河区', city: '广州市', postalCode: t.postalCode }],
        extension: [{ url: 'https://medmesh.example/fhir/StructureDefinition/note', valueString: `证件 ${rid} 电话 ${phone}` }],
      });
      t.id = String(p.id);
      // A new version, so vread and history have more than one to show.
      await call('PUT', `/fhir/R4/Patient/${t.id}`, s.auth, { ...p, active: true });
      const start = new Date(Date.UTC(Math.max(year + 1, thisYear - 1), Math.floor(rnd() * 12), 1 + Math.floor(rnd() * 28)));
      const age = ageAt(birthDate, start);
      await create('Encounter', {
        resourceType: 'Encounter',
        status: 'finished',
        class: { code: 'AMB' },
        subject: { reference: `Patient/${t.id}` },
        serviceProvider: { reference: 'Organization/cardiology' },
        period: { start: start.toISOString() },
        text: { status: 'generated', div: `<div xmlns="http://www.w3.org/1999/xhtml">${rid}</div>` },
        extension: [
          { url: AGE_AT_ENCOUNTER, valueAge: { value: age, unit: 'a', system: 'http://unitsofmeasure.org', code: 'a' } },
        ],
      });
      await create('Observation', {
        resourceType: 'Observation',
        status: 'final',
        code: { text: 'note' },
        subject: { reference: `Patient/${t.id}`, identifier: { system: RID, value: rid } },
        valueString: `ID ${rid}, call ${phone}`,
        note: [{ text: `family reached at ${phone}; ID card ${rid}` }],
        contained: [{ resourceType: 'Patient', id: 'p1', identifier: [{ system: RID, value: rid }], birthDate }],
        performer: [{ reference: '#p1' }],
      });
      patients.push(t);
    }
  });
  after(() => s?.close());

  /** Everything a role can read about one patient, by every route that serves it. */
  const viewsOf = async (t: Truth, headers: Record<string, string>) => {
    const vid = ((await call('GET', `/fhir/R4/Patient/${t.id}`, s.auth)).json as Patient).meta!.versionId!;
    const answers = [
      await call('GET', `/fhir/R4/Patient/${t.id}`, headers),
      await call('GET', `/fhir/R4/Patient/${t.id}/_history/${vid}`, headers),
      await call('GET', `/fhir/R4/Patient/${t.id}/_history`, headers),
      await call('GET', `/fhir/R4/Patient?_id=${t.id}`, headers),
      await call('GET', '/fhir/R4/Patient?name=张&_count=100', headers),
      await call('POST', '/fhir/R4', headers, {
        resourceType: 'Bundle',
        type: 'batch',
        entry: [
          { request: { method: 'GET', url: `Patient/${t.id}` } },
          // (A vread entry in a Bundle hangs a PGlite site: issue 22 finding 3, fixed elsewhere.)
          { request: { method: 'GET', url: `Observation?subject=Patient/${t.id}` } },
          { request: { method: 'GET', url: `Encounter?subject=Patient/${t.id}` } },
        ],
      }),
      await call('GET', `/fhir/R4/Encounter?subject=Patient/${t.id}`, headers),
      await call('GET', `/fhir/R4/Observation?subject=Patient/${t.id}`, headers),
      await call('GET', `/fhir/R4/Observation/_history?_count=1000`, headers),
    ];
    return answers;
  };

  for (const [role, attrs] of [
    ['nurse', { department: 'cardiology' }],
    ['pharmacist', {}],
    ['lab', {}],
  ] as const) {
    const title = `${role}: every masked resident ID keeps at least ${MIN_RESIDENT_ID_CANDIDATES} candidates`;
    it(`${title}, and nothing masked shows in clear`, async () => {
      const headers = s.as([role], attrs);
      for (const t of patients) {
        const answers = await viewsOf(t, headers);
        assert.ok(
          answers.some((a) => a.status === 200 && JSON.stringify(a.json).includes(t.id)),
          why(`${role} sees patient ${t.id}`),
        );
        const strings = answers.flatMap((a) => [...a.headers, ...stringsIn(a.json)]);
        for (const secret of [t.rid, t.rid.slice(0, 17), t.phone, t.mrn, t.line, t.postalCode, t.birthDate])
          assert.ok(!strings.some((x) => x.includes(secret)), why(`${role} never sees ${secret} of patient ${t.id} in clear`));
        const attack = restore(
          answers.map((a) => a.json),
          t.id,
        );
        assert.ok(attack.masks > 0, why(`${role} sees masked identifiers of ${t.id}`));
        assert.ok(
          attack.candidates.has(t.rid),
          why(`the attacker's routine keeps the true ID of ${t.id} (${t.rid}, born ${t.birthDate}; ${attack.debug})`),
        );
        assert.ok(
          attack.candidates.size >= MIN_RESIDENT_ID_CANDIDATES,
          why(`${role}: ${attack.candidates.size} candidates for the resident ID of ${t.id}`),
        );
        assert.equal(
          attack.candidates.size,
          attack.withoutMasks,
          why(`${role}: the masks of ${t.id} narrow nothing beyond sex and birth date`),
        );
      }
    });
  }

  it('does not give away a masked home address through the placement reason', async () => {
    const home = { lat: 23.1291234, lon: 113.2643456 };
    const p = await create('Patient', {
      resourceType: 'Patient',
      address: [
        {
          line: ['环市东路 9 号'],
          district: '越秀区',
          city: '广州市',
          extension: [
            {
              url: GEOLOCATION_URL,
              extension: [
                { url: 'latitude', valueDecimal: home.lat },
                { url: 'longitude', valueDecimal: home.lon },
              ],
            },
          ],
        },
      ],
    });
    const gh = encodeGeohash(home.lat, home.lon, 12);
    assert.match(JSON.stringify(p.meta), new RegExp(gh), 'the stored placement reason names the GeoHash');
    await create('Encounter', {
      resourceType: 'Encounter',
      status: 'finished',
      class: { code: 'AMB' },
      subject: { reference: `Patient/${String(p.id)}` },
      serviceProvider: { reference: 'Organization/cardiology' },
    });
    for (const [role, attrs] of [
      ['nurse', { department: 'cardiology' }],
      ['pharmacist', {}],
    ] as const) {
      const r = await call('GET', `/fhir/R4/Patient/${String(p.id)}`, s.as([role], attrs));
      assert.equal(r.status, 200);
      const text = JSON.stringify(r.json);
      for (const part of [gh.slice(0, 6), String(home.lat), String(home.lon), '环市东路'])
        assert.ok(!text.includes(part), `${role}: ${part}`);
    }
  });

  it('keeps the stored values when a masked view is written back', async () => {
    const nurse = s.as(['nurse'], { department: 'cardiology' });
    const t = patients[0]!;
    const seen = (await call('GET', `/fhir/R4/Observation?subject=Patient/${t.id}`, nurse)).json as {
      entry: Array<{ resource: Record<string, unknown> }>;
    };
    const obs = seen.entry[0]!.resource;
    assert.doesNotMatch(JSON.stringify(obs), new RegExp(t.rid));
    const put = await call('PUT', `/fhir/R4/Observation/${String(obs.id)}`, nurse, { ...obs, status: 'amended' });
    assert.equal(put.status, 200, JSON.stringify(put.json));
    const stored = (await call('GET', `/fhir/R4/Observation/${String(obs.id)}`, s.auth)).json as Record<string, unknown>;
    assert.equal(stored.status, 'amended', 'the change is written');
    assert.equal(stored.valueString, `ID ${t.rid}, call ${t.phone}`, 'what the nurse saw masked stays as stored');
    assert.match(JSON.stringify(stored.note), new RegExp(t.rid));
    assert.match(JSON.stringify(stored.subject), new RegExp(t.rid));
  });

  it('refuses the searches that would test a guess: birth date, identifier, a resident ID or phone in free text', async () => {
    const nurse = s.as(['nurse'], { department: 'cardiology' });
    const t = patients[0]!;
    for (const q of [
      `Patient?birthdate=${t.birthDate}`,
      'Patient?_sort=birthdate',
      `Patient?identifier=${t.rid}`,
      `Patient?name=${t.rid}`,
      `Patient?name:contains=${t.phone}`,
    ]) {
      const r = await call('GET', `/fhir/R4/${q}`, nurse);
      assert.equal(r.status, 403, q);
    }
    assert.equal((await call('GET', '/fhir/R4/Patient?gender=male', nurse)).status, 200);
  });
});

/** Every string in a JSON value (and its keys' values only). */
function stringsIn(v: unknown): string[] {
  if (typeof v === 'string') return [v];
  if (typeof v === 'number') return [String(v)];
  if (Array.isArray(v)) return v.flatMap(stringsIn);
  if (v && typeof v === 'object') return Object.values(v).flatMap(stringsIn);
  return [];
}

function objectsIn(v: unknown): Array<Record<string, unknown>> {
  if (Array.isArray(v)) return v.flatMap(objectsIn);
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return [o, ...Object.values(o).flatMap(objectsIn)];
  }
  return [];
}

function ageAt(birthDate: string, at: Date): number {
  const b = new Date(`${birthDate}T00:00:00Z`);
  let age = at.getUTCFullYear() - b.getUTCFullYear();
  if (at.getUTCMonth() < b.getUTCMonth() || (at.getUTCMonth() === b.getUTCMonth() && at.getUTCDate() < b.getUTCDate())) age--;
  return age;
}

/**
 * The attacker: every 18-character resident ID consistent with the answers about one patient.
 * Facts: sex (parity of the sequence number), the birth date at whatever precision any field
 * gives it (birthDate, birthTime, contained copies, ages at encounters), the division code, and
 * the visible characters of each masked identifier placed where its card format carries the ID.
 */
function restore(
  answers: unknown[],
  patientId: string,
): { candidates: Set<string>; withoutMasks: number; masks: number; debug: string } {
  const objects = answers.flatMap(objectsIn);
  const about = (o: Record<string, unknown>) => JSON.stringify(o.subject ?? '').includes(`Patient/${patientId}`);
  // The patient itself, and the copies contained in the records about them.
  const mine = [
    ...objects.filter((o) => o.resourceType === 'Patient' && o.id === patientId),
    ...objects.filter(about).flatMap((o) => (Array.isArray(o.contained) ? (o.contained as Array<Record<string, unknown>>) : [])),
  ].filter((o) => o.resourceType === 'Patient');
  const today = new Date();
  let lo = new Date(Date.UTC(1850, 0, 1));
  let hi = today;
  const narrow = (a: Date, b: Date) => {
    if (a > lo) lo = a;
    if (b < hi) hi = b;
  };
  let sex: string | undefined;
  const constraints: Array<{ pos: number; ch: string }> = [];
  let division: string | undefined;
  let masks = 0;
  for (const p of mine) {
    if (typeof p.gender === 'string') sex = p.gender;
    for (const d of [p.birthDate, ...stringsIn((p._birthDate as Record<string, unknown> | undefined)?.extension)]) {
      if (typeof d !== 'string') continue;
      const m = /^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?/.exec(d);
      if (!m) continue;
      const y = Number(m[1]);
      if (m[3]) {
        const day = new Date(Date.UTC(y, Number(m[2]) - 1, Number(m[3])));
        narrow(day, day);
      } else if (m[2]) narrow(new Date(Date.UTC(y, Number(m[2]) - 1, 1)), new Date(Date.UTC(y, Number(m[2]), 0)));
      else narrow(new Date(Date.UTC(y, 0, 1)), new Date(Date.UTC(y, 11, 31)));
    }
    for (const i of (p.identifier as Array<{ system?: string; value?: string }> | undefined) ?? []) {
      const offset = i.system !== undefined ? EMBEDDING[i.system] : undefined;
      if (offset === undefined || typeof i.value !== 'string' || !i.value.includes('*')) continue;
      masks++;
      [...i.value].forEach((ch, j) => {
        const pos = j - offset;
        if (ch !== '*' && pos >= 0 && pos < 18) {
          constraints.push({ pos, ch });
          if (pos < 6) division = (division ?? '      ').slice(0, pos) + ch + (division ?? '      ').slice(pos + 1);
        }
      });
    }
  }
  for (const e of objects.filter((o) => o.resourceType === 'Encounter' && about(o))) {
    const start = (e.period as { start?: string } | undefined)?.start;
    const age = (e.extension as Array<{ url: string; valueAge?: { value: number } }> | undefined)?.find(
      (x) => x.url === AGE_AT_ENCOUNTER,
    )?.valueAge?.value;
    if (!start || age === undefined) continue;
    const at = new Date(start);
    const latest = new Date(Date.UTC(at.getUTCFullYear() - age, at.getUTCMonth(), at.getUTCDate()));
    const earliest = new Date(Date.UTC(at.getUTCFullYear() - age - 1, at.getUTCMonth(), at.getUTCDate() + 1));
    narrow(earliest, latest);
  }
  const div = division && /^\d{6}$/.test(division) ? division : '440104'; // the district names it anyway
  const candidates = new Set<string>();
  let withoutMasks = 0;
  for (let t = lo.getTime(); t <= hi.getTime(); t += 86_400_000) {
    const ymd = new Date(t).toISOString().slice(0, 10).replaceAll('-', '');
    for (let seq = sex === 'male' ? 1 : 0; seq < 1000; seq += sex === undefined ? 1 : 2) {
      const first17 = `${div}${ymd}${String(seq).padStart(3, '0')}`;
      const id = first17 + residentIdCheckChar(first17);
      withoutMasks++;
      if (constraints.every((c) => id[c.pos] === c.ch)) candidates.add(id);
    }
  }
  return {
    candidates,
    withoutMasks,
    masks,
    debug: `${lo.toISOString()}..${hi.toISOString()} ${sex ?? ''} ${JSON.stringify(constraints)}`,
  };
}
