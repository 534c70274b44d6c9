import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Bundle, Observation, Patient } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { extractIndex } from './search-index.ts';
import { buildSearchParamTable } from './search-params.ts';
import { openTestStore, type TestStore } from './testing.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';

describe(`search (${testBackend()})`, () => {
  let t: TestStore;
  const ids: Record<string, string> = {};
  const search = async (type: string, q: string): Promise<Bundle> => {
    const r = await t.store.search(type, [...new URLSearchParams(q)], { baseUrl: 'http://h/fhir/R4' });
    assert.ok(r.ok, r.ok ? '' : JSON.stringify(r.error));
    return r.value;
  };
  const idsOf = (b: Bundle) => (b.entry ?? []).map((e) => e.resource!.id).sort();

  before(async () => {
    t = await openTestStore();
    const people: Array<[string, string, string, 'male' | 'female', string]> = [
      ['zhang', '张', '三', 'male', '1980-03-04'],
      ['zhangwei', '张', '伟', 'female', '1992-07-15'],
      ['li', '李', '四', 'male', '2001-12-31'],
      ['muller', 'Müller', 'Jürgen', 'male', '1975'],
    ];
    for (const [key, family, given, gender, birthDate] of people) {
      const p: Patient = {
        resourceType: 'Patient',
        name: [{ family, given: [given] }],
        gender,
        birthDate,
        identifier: [
          {
            system: RID,
            value: makeResidentId({
              divisionCode: '440106',
              birthDate: birthDate.length === 4 ? `${birthDate}-01-01` : birthDate,
              sequence: Object.keys(ids).length,
            }),
          },
        ],
      };
      const r = await t.store.create('Patient', p);
      assert.ok(r.ok);
      ids[key] = r.value.resource.id!;
    }
    const obs = (patient: string, code: string, when: string, status: Observation['status'] = 'final'): Observation => ({
      resourceType: 'Observation',
      status,
      code: { coding: [{ system: 'http://loinc.org', code }] },
      subject: { reference: `Patient/${patient}` },
      effectiveDateTime: when,
    });
    for (const [key, o] of [
      ['hr1', obs(ids.zhang!, '8867-4', '2024-05-06T10:00:00+08:00')],
      ['hr2', obs(ids.zhang!, '8867-4', '2024-06-01T09:30:00Z')],
      ['bp', obs(ids.zhang!, '8480-6', '2024-05-06T10:05:00+08:00', 'amended')],
      ['li-hr', obs(ids.li!, '8867-4', '2023-01-01T00:00:00Z')],
    ] as const) {
      const r = await t.store.create('Observation', o);
      assert.ok(r.ok);
      ids[key] = r.value.resource.id!;
    }
  });
  after(() => t.close());

  it('finds patients by name prefix, family, given, accent-insensitive, and Chinese full name', async () => {
    assert.deepEqual(idsOf(await search('Patient', 'family=张')), [ids.zhang, ids.zhangwei].sort());
    assert.deepEqual(idsOf(await search('Patient', 'name=张三')), [ids.zhang]);
    assert.deepEqual(idsOf(await search('Patient', 'given=伟')), [ids.zhangwei]);
    assert.deepEqual(idsOf(await search('Patient', 'name=muller')), [ids.muller], 'accent-insensitive');
    assert.deepEqual(idsOf(await search('Patient', 'name:exact=jurgen müller')), [ids.muller]);
    assert.deepEqual(idsOf(await search('Patient', 'name:contains=ürg')), [ids.muller]);
    assert.deepEqual(idsOf(await search('Patient', 'family=张,李')), [ids.zhang, ids.zhangwei, ids.li].sort(), 'comma is OR');
  });

  it('answers name from family, given, prefix, suffix, text and whole-name rows, each part indexed once', async () => {
    const table = buildSearchParamTable();
    for (const type of ['Patient', 'Practitioner'])
      assert.deepEqual(table.get(type)!.get('name')!.nameParts, { family: 'family', given: 'given' }, type);
    assert.equal(table.get('Organization')!.get('name')!.nameParts, undefined, 'an Organization name is a plain string');
    const rows = extractIndex(
      {
        resourceType: 'Patient',
        name: [{ family: 'Smith', given: ['John', 'Q'], prefix: ['Dr'], suffix: ['Jr'], text: 'Dr John Q Smith Jr' }],
      },
      table.get('Patient')!,
    );
    const valuesOf = (code: string) =>
      rows.strings
        .filter((s) => s.code === code)
        .map((s) => s.value)
        .sort();
    assert.deepEqual(valuesOf('family'), ['smith']);
    assert.deepEqual(valuesOf('given'), ['john', 'q']);
    assert.deepEqual(
      valuesOf('name'),
      ['dr', 'dr john q smith jr', 'john q smith', 'jr', 'smithjohnq'],
      'no family or given row twice',
    );
    const chinese = extractIndex({ resourceType: 'Patient', name: [{ family: '欧阳', given: ['小明'] }] }, table.get('Patient')!);
    assert.deepEqual(
      chinese.strings.filter((s) => s.code === 'name').map((s) => s.value),
      ['欧阳小明'],
      'a Chinese name is written family first only',
    );

    const r = await t.store.create('Practitioner', {
      resourceType: 'Practitioner',
      name: [{ family: 'Smith', given: ['John'], prefix: ['Dr'], suffix: ['Jr'], text: 'Doctor Smith' }],
    });
    assert.ok(r.ok);
    const id = r.value.resource.id!;
    for (const q of [
      'name=smith',
      'name=joh',
      'name=dr',
      'name=jr',
      'name=doctor',
      'name=john smith',
      'name=smithjohn',
      'name:exact=smith',
      'name:exact=john',
      'name:contains=mit',
      'name=zzz,joh',
    ]) {
      assert.deepEqual(idsOf(await search('Practitioner', q)), [id], q);
    }
    assert.deepEqual(idsOf(await search('Practitioner', 'family=john')), [], 'family does not answer from given');
    assert.deepEqual(idsOf(await search('Practitioner', 'given=doctor')), [], 'given does not answer from text');
    // A sort by name reads the same rows: the smallest (or largest) of a patient's name values.
    // A family name alone has no row under `name` itself, and still sorts by it.
    const aaron = await t.store.create('Patient', { resourceType: 'Patient', name: [{ family: 'Aaron' }] });
    assert.ok(aaron.ok);
    const order = async (q: string) => (await search('Patient', q)).entry!.map((e) => e.resource!.id);
    assert.deepEqual(await order('_sort=name'), [aaron.value.resource.id, ids.muller, ids.zhang, ids.zhangwei, ids.li]);
    assert.deepEqual(await order('_sort=-name'), [ids.li, ids.zhangwei, ids.zhang, ids.muller, aaron.value.resource.id]);
    assert.ok((await t.store.delete('Patient', aaron.value.resource.id!)).ok);
  });

  it('matches tokens with and without system, :not, and identifiers', async () => {
    assert.deepEqual(idsOf(await search('Patient', 'gender=female')), [ids.zhangwei]);
    assert.equal((await search('Patient', 'gender:not=male')).entry?.length, 1);
    const li = await t.store.read('Patient', ids.li!);
    assert.ok(li.ok);
    const value = (li.value as Patient).identifier![0]!.value!;
    assert.deepEqual(idsOf(await search('Patient', `identifier=${RID}|${value}`)), [ids.li]);
    assert.deepEqual(idsOf(await search('Patient', `identifier=${value}`)), [ids.li]);
    assert.deepEqual(idsOf(await search('Patient', `identifier=urn:other|${value}`)), []);
    assert.deepEqual(idsOf(await search('Observation', 'code=http://loinc.org|8867-4')), [ids.hr1, ids.hr2, ids['li-hr']].sort());
    assert.deepEqual(
      idsOf(await search('Observation', 'code=|8867-4')),
      [],
      'explicit no-system matches only codes without a system',
    );
    assert.deepEqual(idsOf(await search('Observation', 'status=amended')), [ids.bp]);
  });

  it('compares dates with prefixes at their precision', async () => {
    assert.deepEqual(idsOf(await search('Patient', 'birthdate=1980')), [ids.zhang]);
    assert.deepEqual(idsOf(await search('Patient', 'birthdate=ge1990-01-01')), [ids.zhangwei, ids.li].sort());
    assert.deepEqual(idsOf(await search('Patient', 'birthdate=lt1980-03-04')), [ids.muller], '1975 (a year) lies before');
    assert.deepEqual(idsOf(await search('Patient', 'birthdate=eq1975-06-01')), [], 'a year is not contained in a day');
    assert.deepEqual(
      idsOf(await search('Observation', 'date=2024-05-06')),
      [ids.hr1, ids.bp].sort(),
      'local +08:00 times fall on that UTC day',
    );
    assert.deepEqual(idsOf(await search('Observation', 'date=gt2024-05-31&date=le2024-06-30')), [ids.hr2]);
    assert.deepEqual(idsOf(await search('Observation', 'date=sa2024-01-01')), [ids.hr1, ids.hr2, ids.bp].sort());
    assert.deepEqual(idsOf(await search('Observation', 'date=eb2024-01-01')), [ids['li-hr']]);
    assert.deepEqual(idsOf(await search('Observation', 'date=ne2024-05-06')), [ids.hr2, ids['li-hr']].sort());
  });

  it('filters compartment resources by patient and subject references', async () => {
    assert.deepEqual(idsOf(await search('Observation', `patient=${ids.zhang}`)), [ids.hr1, ids.hr2, ids.bp].sort());
    assert.deepEqual(idsOf(await search('Observation', `subject=Patient/${ids.li}`)), [ids['li-hr']]);
    assert.deepEqual(idsOf(await search('Observation', `subject:Patient=${ids.li}`)), [ids['li-hr']]);
    assert.deepEqual(idsOf(await search('Observation', `subject=${ids.li}`)), [ids['li-hr']]);
    assert.deepEqual(idsOf(await search('Observation', `patient=${ids.zhang}&code=8480-6`)), [ids.bp]);
  });

  it('pages with _count and next links, sorts, counts and filters by _id and _lastUpdated', async () => {
    const page1 = await search('Patient', '_count=2&_sort=birthdate');
    assert.equal(page1.entry!.length, 2);
    assert.deepEqual(
      page1.entry!.map((e) => e.resource!.id),
      [ids.muller, ids.zhang],
    );
    const next = page1.link!.find((l) => l.relation === 'next')!.url;
    assert.match(next, /_count=2&_offset=2/);
    const page2 = await search('Patient', new URL(next).search.slice(1));
    assert.deepEqual(
      page2.entry!.map((e) => e.resource!.id),
      [ids.zhangwei, ids.li],
    );
    assert.equal(
      page2.link!.find((l) => l.relation === 'next'),
      undefined,
    );
    const desc = await search('Patient', '_sort=-birthdate&_count=1');
    assert.equal(desc.entry![0]!.resource!.id, ids.li);
    const count = await search('Observation', '_summary=count');
    assert.equal(count.total, 4);
    assert.equal(count.entry, undefined);
    const total = await search('Observation', '_count=1&_total=accurate');
    assert.equal(total.total, 4);
    assert.deepEqual(idsOf(await search('Patient', `_id=${ids.li},${ids.zhang}`)), [ids.li, ids.zhang].sort());
    assert.equal((await search('Patient', '_lastUpdated=gt2000-01-01')).entry!.length, 4);
    assert.equal((await search('Patient', '_lastUpdated=lt2000-01-01')).entry?.length ?? 0, 0);
    assert.deepEqual(
      (await search('Patient', '_sort=_id')).entry!.map((e) => e.resource!.id),
      Object.values(ids).slice(0, 4).sort(),
    );
  });

  it('rejects unknown, malformed and unsupported parameters with a message naming them', async () => {
    const cases: Array<[string, string, RegExp]> = [
      ['Patient', 'foo=1', /unknown search parameter foo for Patient/],
      ['Patient', 'birthdate=1980-13-01', /birthdate: 1980-13-01 is not a valid date/],
      ['Patient', 'birthdate=xx1980', /not a valid date/],
      ['Patient', '_count=abc', /_count must be an integer/],
      ['Patient', '_count=5000', /_count must be an integer from 0 to 1000/],
      ['Patient', 'name:fuzzy=x', /modifier :fuzzy is not supported for string parameter name/],
      ['Patient', '_include=Patient:organization', /_include is not supported/],
      ['Patient', '_sort=gender', /cannot sort by gender/],
      ['Patient', 'name=', /has an empty value/],
      ['Observation', 'patient.name=x', /unknown search parameter patient.name/],
    ];
    for (const [type, q, re] of cases) {
      const r = await t.store.search(type, [...new URLSearchParams(q)], { baseUrl: '' });
      assert.ok(!r.ok, q);
      assert.match(r.error.issues[0]!.message, re, q);
    }
  });

  it('keeps the search index in step with updates and deletes', async () => {
    const r = await t.store.read('Patient', ids.li!);
    assert.ok(r.ok);
    const u = await t.store.update('Patient', ids.li!, { ...(r.value as Patient), name: [{ family: '赵', given: ['六'] }] });
    assert.ok(u.ok);
    assert.deepEqual(idsOf(await search('Patient', 'family=李')), []);
    assert.deepEqual(idsOf(await search('Patient', 'family=赵')), [ids.li]);
    const d = await t.store.delete('Observation', ids['li-hr']!);
    assert.ok(d.ok);
    assert.deepEqual(idsOf(await search('Observation', `patient=${ids.li}`)), []);
  });
});
