import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Bundle, Observation, Patient } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { processBundle, rewriteReferences } from './bundle.ts';
import type { RecordError } from './errors.ts';
import { openTestStore, type TestStore } from './testing.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
const statusOf = (e: RecordError) =>
  ({
    'bad-request': 400,
    'not-found': 404,
    gone: 410,
    conflict: 409,
    'version-conflict': 412,
    'precondition-failed': 412,
    invalid: 422,
    'not-supported': 400,
    misdirected: 421,
    fenced: 503,
    forbidden: 403,
  })[e.kind];
const patient = (seq: number): Patient => ({
  resourceType: 'Patient',
  name: [{ family: '陈' }],
  identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440106', birthDate: '1970-01-01', sequence: seq }) }],
});

describe(`Bundles (${testBackend()})`, () => {
  let t: TestStore;
  before(async () => {
    t = await openTestStore();
  });
  after(() => t.close());
  const run = (b: unknown) => processBundle(t.store, b, { baseUrl: 'http://h/fhir/R4', statusOf });

  it('commits a transaction atomically, resolving urn:uuid references (patient after its records in the Bundle)', async () => {
    const bundle: Bundle = {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        {
          fullUrl: 'urn:uuid:11111111-1111-4111-8111-111111111111',
          resource: {
            resourceType: 'Observation',
            status: 'final',
            code: { text: 'HR' },
            subject: { reference: 'urn:uuid:22222222-2222-4222-8222-222222222222' },
          },
          request: { method: 'POST', url: 'Observation' },
        },
        {
          fullUrl: 'urn:uuid:22222222-2222-4222-8222-222222222222',
          resource: patient(1),
          request: { method: 'POST', url: 'Patient' },
        },
      ],
    };
    const r = await run(bundle);
    assert.ok(r.ok, r.ok ? '' : JSON.stringify(r.error));
    assert.equal(r.value.type, 'transaction-response');
    const [obsEntry, patEntry] = r.value.entry!;
    assert.equal(obsEntry!.response!.status, '201 Created');
    const obs = obsEntry!.resource as Observation;
    assert.equal(obs.subject!.reference, `Patient/${patEntry!.resource!.id}`);
    assert.match(patEntry!.response!.location!, /^Patient\/[^/]+\/_history\/[0-9a-f]{16}-B$/);
  });

  it('writes nothing when one entry of a transaction is bad, and names the entry', async () => {
    const before = await t.counts();
    const r = await run({
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        {
          fullUrl: 'urn:uuid:33333333-3333-4333-8333-333333333333',
          resource: patient(2),
          request: { method: 'POST', url: 'Patient' },
        },
        {
          resource: {
            resourceType: 'Observation',
            status: 'not-a-status',
            code: { text: 'x' },
            subject: { reference: 'urn:uuid:33333333-3333-4333-8333-333333333333' },
          },
          request: { method: 'POST', url: 'Observation' },
        },
      ],
    });
    assert.ok(!r.ok);
    assert.equal(r.error.kind, 'invalid');
    assert.match(r.error.issues[0]!.message, /^Bundle\.entry\[1\]: /);
    assert.deepEqual(await t.counts(), before);
  });

  it('runs batch entries independently and reports each outcome', async () => {
    const before = await t.counts();
    const r = await run({
      resourceType: 'Bundle',
      type: 'batch',
      entry: [
        { resource: patient(3), request: { method: 'POST', url: 'Patient' } },
        { resource: { resourceType: 'Patient', birthDate: 'not-a-date' }, request: { method: 'POST', url: 'Patient' } },
        { request: { method: 'GET', url: 'Patient/does-not-exist' } },
        { request: { method: 'PATCH', url: 'Patient/x' } },
        { request: { method: 'GET', url: 'Patient?family=陈' } },
      ],
    });
    assert.ok(r.ok);
    assert.deepEqual(
      r.value.entry!.map((e) => e.response!.status),
      ['201 Created', '422', '404', '400', '200'],
    );
    assert.equal(r.value.entry![1]!.response!.outcome!.resourceType, 'OperationOutcome');
    const after = await t.counts();
    assert.equal(
      after.resource_history! - before.resource_history!,
      2,
      'only the good entry was written (the patient and its directory entry)',
    );
    assert.equal(after.empi_patient! - before.empi_patient!, 1);
  });

  it("answers a vread entry in a batch and in a transaction (read through the entry's own transaction)", async () => {
    const created = await t.store.create('Patient', patient(40));
    assert.ok(created.ok);
    const { id, meta } = created.value.resource;
    for (const type of ['batch', 'transaction'] as const) {
      // Before the fix the vread ran outside the entry's transaction: on PGlite it waited forever
      // for it, and the guard now refuses it (TransactionMisuseError) on both engines.
      const r = await run({
        resourceType: 'Bundle',
        type,
        entry: [
          { request: { method: 'GET', url: `Patient/${id!}/_history/${meta!.versionId!}` } },
          { request: { method: 'GET', url: `Patient/${id!}/_history/0000000000000000-B` } },
        ],
      });
      if (type === 'transaction') {
        assert.ok(!r.ok, 'a transaction with a missing version fails as a whole');
        assert.equal(r.error.kind, 'not-found');
        const one = await run({
          resourceType: 'Bundle',
          type,
          entry: [{ request: { method: 'GET', url: `Patient/${id!}/_history/${meta!.versionId!}` } }],
        });
        assert.ok(one.ok, one.ok ? '' : JSON.stringify(one.error));
        assert.equal(one.value.entry![0]!.resource!.id, id);
        continue;
      }
      assert.ok(r.ok, r.ok ? '' : JSON.stringify(r.error));
      assert.deepEqual(
        r.value.entry!.map((e) => e.response!.status),
        ['200', '404'],
      );
      assert.equal(r.value.entry![0]!.response!.etag, `W/"${meta!.versionId!}"`);
    }
  });

  it('maps a conditional create inside a transaction to the existing resource', async () => {
    const value = patient(1).identifier![0]!.value!;
    const r = await run({
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        {
          fullUrl: 'urn:uuid:44444444-4444-4444-8444-444444444444',
          resource: patient(1),
          request: { method: 'POST', url: 'Patient', ifNoneExist: `identifier=${RID}|${value}` },
        },
        {
          resource: {
            resourceType: 'Observation',
            status: 'final',
            code: { text: 'T' },
            subject: { reference: 'urn:uuid:44444444-4444-4444-8444-444444444444' },
          },
          request: { method: 'POST', url: 'Observation' },
        },
      ],
    });
    assert.ok(r.ok);
    assert.equal(r.value.entry![0]!.response!.status, '200 OK');
    const existing = await t.store.search('Patient', [['identifier', value]], { baseUrl: '' });
    assert.ok(existing.ok);
    assert.equal(existing.value.entry!.length, 1);
    assert.equal(
      (r.value.entry![1]!.resource as Observation).subject!.reference,
      `Patient/${existing.value.entry![0]!.resource!.id}`,
    );
  });

  it('refuses malformed Bundles', async () => {
    for (const [b, re] of [
      [{ resourceType: 'Patient' }, /takes a Bundle/],
      [{ resourceType: 'Bundle', type: 'collection' }, /must be batch or transaction/],
      [{ resourceType: 'Bundle', type: 'transaction', entry: [{ resource: patient(9) }] }, /request needs method and url/],
      [
        {
          resourceType: 'Bundle',
          type: 'transaction',
          entry: [{ request: { method: 'PUT', url: 'Patient?name=x' }, resource: patient(9) }],
        },
        /conditional put is not supported/,
      ],
    ] as const) {
      const r = await run(b);
      assert.ok(!r.ok);
      assert.match(r.error.issues[0]!.message, re);
    }
  });

  it('rewrites only references that name Bundle-local entries', () => {
    const out = rewriteReferences(
      { a: { reference: 'urn:uuid:1' }, b: [{ reference: 'Patient/x' }], c: 'urn:uuid:1' },
      new Map([['urn:uuid:1', 'Patient/p1']]),
    );
    assert.deepEqual(out, { a: { reference: 'Patient/p1' }, b: [{ reference: 'Patient/x' }], c: 'urn:uuid:1' });
  });
});
