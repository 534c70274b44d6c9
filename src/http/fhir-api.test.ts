import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { MedplumClient } from '@medplum/core';
import type { Bundle, CapabilityStatement, OperationOutcome, Patient } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
const FHIR = { 'content-type': 'application/fhir+json' };
const gz = (seq: number): Patient => ({
  resourceType: 'Patient',
  name: [{ family: '黄', given: ['飞鸿'] }],
  gender: 'male',
  birthDate: '1960-05-05',
  identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440104', birthDate: '1960-05-05', sequence: seq }) }],
});

describe(`FHIR REST API (${testBackend()})`, () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({ bodyLimit: 64 * 1024 });
  });
  after(() => s.close());

  const req = async (method: string, path: string, body?: unknown, headers: Record<string, string> = {}) => {
    const res = await fetch(`${s.fhir}${path}`, {
      method,
      headers: body === undefined ? { ...s.auth, ...headers } : { ...FHIR, ...s.auth, ...headers },
      ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
    });
    const text = await res.text();
    return { status: res.status, headers: res.headers, json: text ? (JSON.parse(text) as Record<string, unknown>) : undefined };
  };

  it('serves a CapabilityStatement that states what is indexed and nothing more', async () => {
    const r = await req('GET', '/metadata');
    assert.equal(r.status, 200);
    const cs = r.json as unknown as CapabilityStatement;
    assert.equal(cs.fhirVersion, '4.0.1');
    const types: string[] = cs.rest![0]!.resource!.map((x) => x.type);
    for (const t of [
      'Patient',
      'Practitioner',
      'Organization',
      'Encounter',
      'Observation',
      'Condition',
      'Procedure',
      'MedicationRequest',
      'ServiceRequest',
      'DiagnosticReport',
      'DocumentReference',
      'AllergyIntolerance',
      'ImagingStudy',
      'Binary',
    ])
      assert.ok(types.includes(t), t);
    const params = (t: string) => cs.rest![0]!.resource!.find((x) => x.type === t)!.searchParam!.map((p) => p.name);
    for (const p of ['_id', '_lastUpdated', 'identifier', 'name', 'family', 'given', 'birthdate', 'gender'])
      assert.ok(params('Patient').includes(p), p);
    for (const p of ['patient', 'subject', 'encounter', 'date', 'code', 'status'])
      assert.ok(params('Observation').includes(p), p);
    // Every advertised parameter is accepted by search.
    for (const p of params('Observation').filter((x) => !x.startsWith('_'))) {
      const v = ['date'].includes(p) ? '2024' : 'x';
      const s2 = await req('GET', `/Observation?${p}=${v}`);
      assert.equal(s2.status, 200, `advertised ${p} must work`);
    }
  });

  it('runs the create / read / update / delete / history cycle with the right headers', async () => {
    const c = await req('POST', '/Patient', gz(1));
    assert.equal(c.status, 201);
    const p = c.json as unknown as Patient;
    assert.equal(c.headers.get('etag'), `W/"${p.meta!.versionId}"`);
    assert.equal(c.headers.get('location'), `${s.fhir}/Patient/${p.id}/_history/${p.meta!.versionId}`);
    assert.equal(c.headers.get('content-type'), 'application/fhir+json; charset=utf-8');
    const u = await req('PUT', `/Patient/${p.id}`, { ...p, gender: 'female' }, { 'if-match': `W/"${p.meta!.versionId}"` });
    assert.equal(u.status, 200);
    const stale = await req('PUT', `/Patient/${p.id}`, { ...p, gender: 'other' }, { 'if-match': `W/"${p.meta!.versionId}"` });
    assert.equal(stale.status, 412);
    const v1 = await req('GET', `/Patient/${p.id}/_history/${p.meta!.versionId}`);
    assert.equal((v1.json as unknown as Patient).gender, 'male');
    const h = await req('GET', `/Patient/${p.id}/_history`);
    assert.equal((h.json as unknown as Bundle).entry!.length, 2);
    const typeHistory = await req('GET', '/Patient/_history?_count=1');
    assert.equal((typeHistory.json as unknown as Bundle).type, 'history');
    assert.ok((typeHistory.json as unknown as Bundle).link!.some((l) => l.relation === 'next'));
    assert.equal((await req('DELETE', `/Patient/${p.id}`)).status, 204);
    assert.equal((await req('GET', `/Patient/${p.id}`)).status, 410);
    assert.equal((await req('GET', '/Patient/nope')).status, 404);
    const minimal = await req('POST', '/Patient', gz(2), { prefer: 'return=minimal' });
    assert.equal(minimal.status, 201);
    assert.equal(minimal.json, undefined);
    assert.ok(minimal.headers.get('location'));
  });

  it('answers If-None-Exist and POST _search', async () => {
    const value = gz(3).identifier![0]!.value!;
    const first = await req('POST', '/Patient', gz(3), { 'if-none-exist': `identifier=${RID}|${value}` });
    const second = await req('POST', '/Patient', gz(3), { 'if-none-exist': `identifier=${RID}|${value}` });
    assert.deepEqual([first.status, second.status], [201, 200]);
    const res = await fetch(`${s.fhir}/Patient/_search`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...s.auth },
      body: `identifier=${encodeURIComponent(value)}`,
    });
    assert.equal(((await res.json()) as Bundle).total, 1);
  });

  it('refuses each kind of bad input with an OperationOutcome and changes nothing', async () => {
    const valid = gz(10);
    const wrongCheck = {
      ...valid,
      identifier: [
        {
          system: RID,
          value: valid.identifier![0]!.value!.slice(0, 17) + (valid.identifier![0]!.value!.endsWith('0') ? '1' : '0'),
        },
      ],
    };
    const sz = {
      ...valid,
      identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440305', birthDate: '1960-05-05', sequence: 1 }) }],
    };
    const existing = (await req('POST', '/Patient', gz(11))).json as unknown as Patient;
    const before = await s.counts();
    const cases: Array<[string, string, unknown, Record<string, string>, number, RegExp]> = [
      ['malformed JSON', '/Patient', '{"resourceType": "Patient",', {}, 400, /malformed JSON/],
      [
        'wrong content type',
        '/Patient',
        'resourceType=Patient',
        { 'content-type': 'text/plain' },
        415,
        /content type text\/plain is not supported/,
      ],
      ['XML', '/Patient', '<Patient/>', { 'content-type': 'application/fhir+xml' }, 415, /not supported/],
      [
        'resourceType not matching the URL',
        '/Patient',
        { resourceType: 'Observation' },
        {},
        400,
        /resourceType Observation does not match the URL's Patient/,
      ],
      ['unknown type', '/Medication', { resourceType: 'Medication' }, {}, 404, /Medication is not served here/],
      ['invalid resident ID check digit', '/Patient', wrongCheck, {}, 422, /check digit/],
      ['invalid date', '/Patient', { ...valid, birthDate: '1960-02-30' }, {}, 422, /birthDate|date/i],
      [
        'code outside its required value set',
        '/Patient',
        { ...valid, gender: 'm' },
        {},
        422,
        /'m' is not a code of the required value set/,
      ],
      [
        'oversize body',
        '/Patient',
        { ...valid, text: { status: 'generated', div: `<div xmlns="http://www.w3.org/1999/xhtml">${'x'.repeat(70_000)}</div>` } },
        {},
        413,
        /exceeds the limit of 65536 bytes/,
      ],
      ['empty body', '/Patient', '', {}, 400, /body must be a JSON object/],
      ['core data for a shard active elsewhere', '/Patient', sz, {}, 421, /shard shenzhen is written at site C/],
      [
        'transaction with one bad entry',
        '',
        {
          resourceType: 'Bundle',
          type: 'transaction',
          entry: [
            { resource: gz(12), request: { method: 'POST', url: 'Patient' } },
            { resource: { resourceType: 'Patient', gender: 'x' }, request: { method: 'POST', url: 'Patient' } },
          ],
        },
        {},
        422,
        /Bundle\.entry\[1\]/,
      ],
    ];
    for (const [name, path, body, headers, status, re] of cases) {
      const r = await req('POST', path, body, headers);
      assert.equal(r.status, status, name);
      assert.equal(r.json?.resourceType, 'OperationOutcome', name);
      assert.match(JSON.stringify((r.json as unknown as OperationOutcome).issue), re, name);
    }
    const putCases: Array<[string, string, unknown, Record<string, string>, number]> = [
      ['id in URL and body differ', `/Patient/${existing.id}`, { ...existing, id: 'other' }, {}, 400],
      ['stale If-Match', `/Patient/${existing.id}`, existing, { 'if-match': 'W/"0000000000000000-B"' }, 412],
    ];
    for (const [name, path, body, headers, status] of putCases)
      assert.equal((await req('PUT', path, body, headers)).status, status, name);
    for (const [q, status] of [
      ['foo=bar', 400],
      ['birthdate=19x0', 400],
      ['_count=-1', 400],
      ['_sort=nothing', 400],
    ] as const) {
      const r = await req('GET', `/Patient?${q}`);
      assert.equal(r.status, status, q);
      assert.equal(r.json?.resourceType, 'OperationOutcome');
    }
    const mis = await req('POST', '/Patient', sz);
    assert.equal(mis.headers.get('x-medmesh-active-site'), 'C');
    assert.deepEqual(await s.counts(), before, 'no bad request wrote anything');
  });

  it('refuses a request part beyond its schema with an OperationOutcome naming the part (400), after access', async () => {
    const repeated = Array.from({ length: 101 }, (_, i) => `_id=p${i}`).join('&');
    const many = await req('GET', `/Patient?${repeated}`);
    assert.equal(many.status, 400);
    assert.deepEqual((many.json as unknown as OperationOutcome).issue, [
      {
        severity: 'error',
        code: 'invalid',
        diagnostics: 'querystring._id: at most 100 values of one parameter, each at most 8192 characters',
      },
    ]);
    const longMatch = await req('PUT', '/Patient/p1', gz(13), { 'if-match': `W/"${'1'.repeat(300)}"` });
    assert.equal(longMatch.status, 400);
    assert.match(
      (longMatch.json as unknown as OperationOutcome).issue[0]!.diagnostics!,
      /^headers\.if-match: Too big: expected string to have <=200 characters$/,
    );
    // A caller the access layer refuses learns that, not the request's shape.
    const refused = await fetch(`${s.fhir}/Patient?${repeated}`, { headers: s.as(['janitor']) });
    assert.equal(refused.status, 403);
    assert.equal(((await refused.json()) as OperationOutcome).issue[0]!.code, 'forbidden');
  });

  it('survives garbage without a 5xx', async () => {
    const bodies = [
      'null',
      '[]',
      '42',
      '"x"',
      '{"resourceType":null}',
      '{"resourceType":"Patient","name":"notanarray"}',
      '{"resourceType":"Patient","__proto__":{"x":1}}',
      '{"resourceType":"Bundle","type":"transaction","entry":"x"}',
      '\u0000\u0001',
    ];
    const paths = [
      '/Patient',
      '/',
      '/Patient/x',
      '/Patient/_history',
      '/%E0%A4%A',
      '/Patient/x/_history/y',
      '/Observation/_search',
    ];
    for (const path of paths) {
      for (const body of bodies) {
        for (const method of ['POST', 'PUT']) {
          const r = await fetch(`${s.fhir}${path}`, { method, headers: { ...FHIR, ...s.auth }, body });
          assert.ok(r.status < 500, `${method} ${path} ${body} -> ${r.status}`);
          await r.arrayBuffer();
        }
      }
      const g = await fetch(`${s.fhir}${path}?_count=1&_sort=-_lastUpdated&name:exact=%00&birthdate=ge`, { headers: s.auth });
      assert.ok(g.status < 500, `GET ${path}`);
      await g.arrayBuffer();
    }
    assert.equal((await fetch(`${s.base}/healthz`)).status, 200);
  });

  it('works with a real FHIR client (MedplumClient)', async () => {
    const client = new MedplumClient({
      baseUrl: `${s.base}/`,
      fhirUrlPath: 'fhir/R4',
      fetch: (url: string | URL | Request, init?: RequestInit) => fetch(url, init),
    });
    client.setAccessToken(s.auth.authorization!.slice('Bearer '.length));
    const created = await client.createResource<Patient>(gz(20));
    const read = await client.readResource('Patient', created.id);
    assert.equal(read.meta!.versionId, created.meta!.versionId);
    const updated = await client.updateResource<Patient>({ ...read, birthDate: '1960-05-06' });
    assert.notEqual(updated.meta!.versionId, read.meta!.versionId);
    const found = await client.searchResources('Patient', { identifier: gz(20).identifier![0]!.value! });
    assert.deepEqual(
      found.map((p) => p.id),
      [created.id],
    );
    const tx = await client.executeBatch({
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        {
          fullUrl: 'urn:uuid:55555555-5555-4555-8555-555555555555',
          resource: gz(21),
          request: { method: 'POST', url: 'Patient' },
        },
        {
          resource: {
            resourceType: 'Encounter',
            status: 'in-progress',
            class: { code: 'EMER' },
            subject: { reference: 'urn:uuid:55555555-5555-4555-8555-555555555555' },
          },
          request: { method: 'POST', url: 'Encounter' },
        },
      ],
    });
    assert.equal(tx.type, 'transaction-response');
    await assert.rejects(client.readResource('Patient', 'missing-id'), /not found|Not found/i);
  });
});
