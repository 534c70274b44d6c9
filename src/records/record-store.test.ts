// Repository contract suite: the same tests run on PGlite and on PostgreSQL (scripts/test.ts
// runs the whole suite once per backend).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Observation, Patient } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { openTestStore, type TestStore } from './testing.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
const gzPatient = (seq = 1): Patient => ({
  resourceType: 'Patient',
  name: [{ family: '李', given: ['雷'] }],
  gender: 'male',
  birthDate: '1980-03-04',
  identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440106', birthDate: '1980-03-04', sequence: seq }) }],
});

describe(`record store contract (${testBackend()})`, () => {
  let t: TestStore;
  before(async () => {
    t = await openTestStore();
  });
  after(() => t.close());

  it('creates a patient with server id, version, home shard tag, EMPI row and outbox row in one transaction', async () => {
    const before = await t.counts();
    const r = await t.store.create('Patient', { ...gzPatient(), id: 'client-chosen' });
    assert.ok(r.ok);
    const p = r.value.resource as Patient;
    assert.equal(r.value.status, 'created');
    assert.notEqual(p.id, 'client-chosen', 'create assigns the id');
    assert.match(p.meta!.versionId!, /^[0-9a-f]{16}-B$/);
    assert.deepEqual(p.meta!.tag!.find((x) => x.system === 'urn:medmesh:home-shard')?.code, 'guangzhou');
    const after = await t.counts();
    // The patient and its EMPI directory entry (records/empi.ts), which is written once and
    // keeps no current row.
    assert.equal(after.resource_current! - before.resource_current!, 1);
    assert.equal(after.resource_history! - before.resource_history!, 2);
    assert.equal(after.empi_patient! - before.empi_patient!, 1);
    assert.equal(after.outbox! - before.outbox!, 2);
    const { rows } = await t.db.query<{
      resource_type: string;
      origin_site: string;
      shard: string | null;
      data_class: string;
      resource_id: string;
      version_id: string;
      hlc: bigint;
      parent_hlc: bigint | null;
      epoch: bigint;
      payload: unknown;
    }>(
      `SELECT resource_type, origin_site, shard, data_class, resource_id, version_id, hlc, parent_hlc, epoch, payload
         FROM outbox WHERE resource_id = $1 ORDER BY resource_type`,
      [p.id],
    );
    assert.deepEqual(
      rows.map((r) => [r.resource_type, r.origin_site, r.shard, r.data_class, r.version_id, r.parent_hlc, r.epoch]),
      [
        ['EmpiEntry', 'B', null, 'public', p.meta!.versionId, null, 0n],
        ['Patient', 'B', 'guangzhou', 'core', p.meta!.versionId, null, 0n],
      ],
    );
    assert.deepEqual(
      rows[0]!.payload,
      { resourceType: 'EmpiEntry', id: p.id, homeShard: 'guangzhou', method: 'resident-id', identifiers: [] },
      'no name or identifier in the directory entry (no blind index without the region key)',
    );
    const empi = await t.db.query<{ method: string; reason: string }>(
      'SELECT method, reason FROM empi_patient WHERE patient_id = $1',
      [p.id],
    );
    assert.deepEqual(empi.rows[0], { method: 'resident-id', reason: 'resident ID division 440106 matched 440100' });
  });

  it('reads, versions by HLC, vreads every version and refuses a stale If-Match', async () => {
    const c = await t.store.create('Patient', gzPatient(2));
    assert.ok(c.ok);
    const v1 = c.value.resource as Patient;
    const u = await t.store.update('Patient', v1.id!, { ...v1, gender: 'female' }, { ifMatch: v1.meta!.versionId! });
    assert.ok(u.ok);
    const v2 = u.value.resource as Patient;
    assert.equal(u.value.status, 'updated');
    assert.ok(v2.meta!.versionId! > v1.meta!.versionId!, 'version ids order by HLC');
    const stale = await t.store.update('Patient', v1.id!, { ...v1, gender: 'other' }, { ifMatch: v1.meta!.versionId! });
    assert.ok(!stale.ok);
    assert.equal(stale.error.kind, 'version-conflict');
    const read = await t.store.read('Patient', v1.id!);
    assert.ok(read.ok);
    assert.equal((read.value as Patient).gender, 'female');
    const old = await t.store.vread('Patient', v1.id!, v1.meta!.versionId!);
    assert.ok(old.ok);
    assert.equal((old.value as Patient).gender, 'male');
    const { rows } = await t.db.query<{ parent_hlc: bigint; hlc: bigint }>(
      "SELECT parent_hlc, hlc FROM outbox WHERE resource_type = 'Patient' AND resource_id = $1 ORDER BY hlc",
      [v1.id],
    );
    assert.equal(rows.length, 2);
    assert.equal(rows[1]!.parent_hlc, rows[0]!.hlc, 'the outbox carries the parent HLC');
  });

  it('deletes with a tombstone version: read answers gone, history keeps every version', async () => {
    const c = await t.store.create('Patient', gzPatient(3));
    assert.ok(c.ok);
    const id = c.value.resource.id!;
    const d = await t.store.delete('Patient', id);
    assert.ok(d.ok && d.value.deleted);
    const again = await t.store.delete('Patient', id);
    assert.ok(again.ok && !again.value.deleted, 'deleting twice writes no second tombstone');
    const r = await t.store.read('Patient', id);
    assert.ok(!r.ok);
    assert.equal(r.error.kind, 'gone');
    const h = await t.store.history('Patient', id, { baseUrl: 'http://x/fhir/R4' });
    assert.ok(h.ok);
    assert.deepEqual(
      h.value.entry!.map((e) => e.request!.method),
      ['DELETE', 'POST'],
    );
    const s = await t.store.search('Patient', [['_id', id]], { baseUrl: '' });
    assert.ok(s.ok);
    assert.equal(s.value.total, 0, 'a deleted resource is not found by search');
    const missing = await t.store.delete('Patient', 'never-existed');
    assert.ok(!missing.ok);
    assert.equal(missing.error.kind, 'not-found');
  });

  it('conditional create returns the existing match, and refuses when several match', async () => {
    const ident = makeResidentId({ divisionCode: '440106', birthDate: '1980-03-04', sequence: 4 });
    const body = { ...gzPatient(4) };
    const first = await t.store.create('Patient', body, { ifNoneExist: `identifier=${RID}|${ident}` });
    assert.ok(first.ok && first.value.status === 'created');
    const second = await t.store.create('Patient', body, { ifNoneExist: `Patient?identifier=${RID}|${ident}` });
    assert.ok(second.ok);
    assert.equal(second.value.status, 'existing');
    assert.equal(second.value.resource.id, first.value.resource.id);
    const several = await t.store.create('Patient', body, { ifNoneExist: 'family=李' });
    assert.ok(!several.ok);
    assert.equal(several.error.kind, 'precondition-failed');
  });

  it('update of a missing id creates it (client-assigned id) and validates the id', async () => {
    const r = await t.store.update('Patient', 'pat-client-1', { ...gzPatient(5), id: 'pat-client-1' });
    assert.ok(r.ok);
    assert.equal(r.value.status, 'created');
    const bad = await t.store.update('Patient', 'bad id!', { ...gzPatient(5), id: 'bad id!' });
    assert.ok(!bad.ok);
    assert.equal(bad.error.kind, 'bad-request');
  });

  it("puts a record in its patient's home shard and refuses writes for shards active elsewhere", async () => {
    const p = await t.store.create('Patient', gzPatient(6));
    assert.ok(p.ok);
    const obs: Observation = {
      resourceType: 'Observation',
      status: 'final',
      code: { text: 'HR' },
      subject: { reference: `Patient/${p.value.resource.id}` },
    };
    const o = await t.store.create('Observation', obs);
    assert.ok(o.ok);
    const { rows } = await t.db.query<{ shard: string; patient_id: string }>(
      "SELECT shard, patient_id FROM resource_current WHERE resource_type = 'Observation' AND id = $1",
      [o.value.resource.id],
    );
    assert.deepEqual(rows[0], { shard: 'guangzhou', patient_id: p.value.resource.id });

    const before = await t.counts();
    const sz: Patient = {
      resourceType: 'Patient',
      identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440305', birthDate: '1990-01-01', sequence: 8 }) }],
    };
    const mis = await t.store.create('Patient', sz);
    assert.ok(!mis.ok);
    assert.equal(mis.error.kind, 'misdirected');
    assert.deepEqual(mis.error.activeSite, { id: 'C', url: 'http://127.0.0.1:7102' });
    assert.match(mis.error.issues[0]!.message, /shard shenzhen is written at site C/);
    const orphan = await t.store.create('Observation', { ...obs, subject: { reference: 'Patient/nobody' } });
    assert.ok(!orphan.ok);
    assert.equal(orphan.error.kind, 'invalid');
    assert.equal(orphan.error.issues[0]!.expression, 'Observation.subject');
    assert.deepEqual(await t.counts(), before, 'refused writes leave nothing behind');
  });

  it('refuses invalid resources with the element named, and writes nothing', async () => {
    const before = await t.counts();
    const cases: Array<[unknown, string]> = [
      [{ resourceType: 'Patient', birthDate: '1980-02-30x' }, 'invalid'],
      [{ resourceType: 'Patient', unknownField: 1 }, 'invalid'],
      [{ resourceType: 'Observation', code: { text: 'x' } }, 'bad-request'], // type differs from the URL's
      [{ resourceType: 'Encounter', status: 'finished' }, 'bad-request'],
      [[1, 2], 'bad-request'],
      [{ name: 'x' }, 'bad-request'],
    ];
    for (const [body, kind] of cases) {
      const r = await t.store.create('Patient', body);
      assert.ok(!r.ok, JSON.stringify(body));
      assert.equal(r.error.kind, kind, JSON.stringify(body));
    }
    const status = await t.store.create('Observation', { resourceType: 'Observation', code: { text: 'x' } });
    assert.ok(!status.ok);
    assert.equal(status.error.kind, 'invalid');
    assert.ok(status.error.issues.some((i) => i.expression?.includes('status')));
    const unknownType = await t.store.create('Medication', { resourceType: 'Medication' });
    assert.ok(!unknownType.ok);
    assert.equal(unknownType.error.kind, 'not-found');
    assert.deepEqual(await t.counts(), before);
  });

  it('stores noncore and public resources without a shard at any site', async () => {
    const org = await t.store.create('Organization', { resourceType: 'Organization', name: '广州市第一人民医院' });
    assert.ok(org.ok);
    const pr = await t.store.create('Practitioner', { resourceType: 'Practitioner', name: [{ family: '王', given: ['医生'] }] });
    assert.ok(pr.ok);
    const { rows } = await t.db.query<{ shard: string | null; data_class: string }>(
      `SELECT shard, data_class FROM resource_current
        WHERE resource_type IN ('Organization','Practitioner') ORDER BY resource_type`,
    );
    assert.deepEqual(rows, [
      { shard: null, data_class: 'public' },
      { shard: null, data_class: 'noncore' },
    ]);
  });
});

describe(`record store at the public site (${testBackend()})`, () => {
  let t: TestStore;
  before(async () => {
    t = await openTestStore({ siteId: 'A' });
  });
  after(() => t.close());

  it('never takes core data, but takes public data', async () => {
    const p = await t.store.create('Patient', { resourceType: 'Patient', name: [{ family: 'Tan' }] });
    assert.ok(!p.ok);
    assert.match(p.error.issues[0]!.message, /site A has no default shard/);
    const b = await t.store.create('Binary', { resourceType: 'Binary', contentType: 'text/plain', data: 'aGk=' });
    assert.ok(!b.ok);
    assert.match(b.error.issues[0]!.message, /site A may not hold core data/);
    const o = await t.store.create('Organization', { resourceType: 'Organization', name: 'Public clinic directory' });
    assert.ok(o.ok);
  });
});
