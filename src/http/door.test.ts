// The door: input a route cannot process is refused with a 4xx in the route's own shape
// (OperationOutcome under /fhir, {code, message} elsewhere), never a 5xx or a database
// message; and what generic clients send on every request (a content type, bodiless) works.
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { Bundle, Patient } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { jsonRefusal, MAX_JSON_DEPTH } from './door.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';
import { assertRouteError, DATABASE_TEXT, nested, rawRequest } from './testing-raw.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
const patient = (seq: number): Patient => ({
  resourceType: 'Patient',
  name: [{ family: '周' }],
  identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440104', birthDate: '1980-02-02', sequence: seq }) }],
});
describe('JSON limits checked on the raw text', () => {
  it('finds nesting beyond the limit, NUL and unpaired surrogates, and passes what is fine', () => {
    assert.equal(jsonRefusal(nested(MAX_JSON_DEPTH / 2 - 1), MAX_JSON_DEPTH), undefined, 'exactly at the limit');
    assert.deepEqual(jsonRefusal(nested(MAX_JSON_DEPTH / 2), MAX_JSON_DEPTH)?.tooDeep, true);
    assert.deepEqual(jsonRefusal('['.repeat(MAX_JSON_DEPTH + 1), MAX_JSON_DEPTH)?.tooDeep, true);
    assert.equal(jsonRefusal('['.repeat(MAX_JSON_DEPTH) + ']'.repeat(MAX_JSON_DEPTH), MAX_JSON_DEPTH), undefined);
    assert.deepEqual(jsonRefusal(nested(20_000), MAX_JSON_DEPTH)?.tooDeep, true);
    // Brackets inside strings are text, not nesting; escaped quotes do not end a string.
    assert.equal(jsonRefusal(`{"a":"${'['.repeat(500)}\\"${'{'.repeat(500)}"}`, MAX_JSON_DEPTH), undefined);
    assert.match(jsonRefusal('{"a":"x\\u0000y"}', 10)?.message ?? '', /U\+0000/);
    assert.match(jsonRefusal('{"a":"\\ud800"}', 10)?.message ?? '', /unpaired surrogate/);
    assert.match(jsonRefusal('{"a":"\\udc00\\ud800"}', 10)?.message ?? '', /unpaired surrogate/);
    assert.match(jsonRefusal('{"a":"\\ud800\\u0041"}', 10)?.message ?? '', /unpaired surrogate/);
    assert.equal(jsonRefusal('{"a":"\\ud83d\\ude00 \\\\u0000 \\u00e9"}', 10), undefined, 'a pair, an escaped backslash');
  });

  it('scans a large body quickly', () => {
    const big = JSON.stringify({
      resourceType: 'Bundle',
      entry: Array.from({ length: 20_000 }, (_, i) => ({ resource: patient(i % 900) })),
    });
    const t0 = performance.now();
    assert.equal(jsonRefusal(big, MAX_JSON_DEPTH), undefined);
    const ms = performance.now() - t0;
    assert.ok(ms < 1000, `${(big.length / 2 ** 20).toFixed(1)} MiB scanned in ${ms.toFixed(0)} ms`);
  });
});

describe(`the door (${testBackend()})`, () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({ bodyLimit: 2 * 2 ** 20 });
  });
  after(() => s.close());
  const head = (method: string, path: string | Buffer, headers: Record<string, string> = {}) =>
    Buffer.concat([
      Buffer.from(`${method} `),
      Buffer.from(path),
      Buffer.from(
        ` HTTP/1.1\r\nHost: test\r\nConnection: close\r\n${Object.entries({ ...s.auth, ...headers })
          .map(([k, v]) => `${k}: ${v}\r\n`)
          .join('')}\r\n`,
      ),
    ]);
  const post = (path: string, body: Buffer | string, contentType = 'application/fhir+json') => {
    const b = Buffer.from(body);
    return rawRequest(s.base, head('POST', path, { 'content-type': contentType, 'content-length': String(b.length) }), b);
  };

  it('refuses NUL in ids and searches, broken percent-encoding, raw UTF-8 in the URL (400, not a database error)', async () => {
    const cases: Array<[string, Buffer | string, RegExp]> = [
      ['id with NUL', '/fhir/R4/Patient/a%00b', /U\+0000/],
      ['vread with NUL', '/fhir/R4/Patient/a/_history/%00', /U\+0000/],
      ['search value with NUL', '/fhir/R4/Patient?name=%00', /U\+0000/],
      ['search name with NUL', '/fhir/R4/Patient?na%00me=x', /U\+0000/],
      ['broken percent-encoding', '/fhir/R4/Patient/%E0%A4%A', /percent-encoded/],
      ['encoded lone surrogate', '/fhir/R4/Patient?name=%ED%A0%80', /percent-encoded UTF-8/],
      ['raw UTF-8 in the query', Buffer.concat([Buffer.from('/fhir/R4/Patient?name='), Buffer.from('张三')]), /percent-encoded/],
      ['raw UTF-8 in the path', Buffer.concat([Buffer.from('/fhir/R4/Patient/'), Buffer.from('张')]), /percent-encoded/],
      ['id that no resource can have', '/fhir/R4/Patient/a%20b', /not a valid FHIR id/],
      ['not a route, NUL', '/healthz%00', /U\+0000/],
      ['admin route with NUL', '/access/grants?user=%00', /U\+0000/],
    ];
    for (const [name, path, re] of cases) {
      const r = await rawRequest(s.base, head('GET', path));
      assertRouteError(Buffer.from(path).toString('latin1'), r, name);
      assert.equal(r.status, 400, name);
      assert.match(r.body, re, name);
    }
  });

  it('answers over-long URLs and headers with 414 and 431 in the route shape', async () => {
    const cases: Array<[string, Buffer, number]> = [
      ['long id', head('GET', `/fhir/R4/Patient/${'a'.repeat(300)}`), 414],
      ['long request line', head('GET', `/fhir/R4/Patient?name=${'a'.repeat(20_000)}`), 414],
      ['large headers', head('GET', '/fhir/R4/Patient', { 'x-filler': 'a'.repeat(20_000) }), 431],
      ['large headers, admin route', head('GET', '/access/policies', { 'x-filler': 'a'.repeat(20_000) }), 431],
      ['not HTTP', Buffer.from('HELLO THERE\r\n\r\n'), 400],
    ];
    for (const [name, request, status] of cases) {
      const r = await rawRequest(s.base, request);
      assert.equal(r.status, status, name);
      const path = request.toString('latin1').split(' ')[1] ?? '';
      assertRouteError(path, r, name);
    }
  });

  it('refuses bodies it cannot process before parsing them: depth, size, NUL, surrogates, encoding, type', async () => {
    const p = JSON.stringify(patient(1));
    const cases: Array<[string, string, Buffer | string, string, number, RegExp]> = [
      ['nested 2,000 levels', '/fhir/R4/Patient', nested(2000), 'application/fhir+json', 400, /nested deeper than 100 levels/],
      ['nested 20,000 levels', '/fhir/R4/Patient', nested(20_000), 'application/fhir+json', 400, /nested deeper than 100/],
      ['nested, admin route', '/access/decide', nested(500), 'application/json', 400, /nested deeper than 100/],
      ['lone surrogate', '/fhir/R4/Patient', p.replace('周', '\\ud800'), 'application/fhir+json', 400, /unpaired surrogate/],
      ['NUL', '/fhir/R4/Patient', p.replace('周', 'a\\u0000b'), 'application/json', 400, /U\+0000/],
      [
        'invalid UTF-8',
        '/fhir/R4/Patient',
        Buffer.concat([Buffer.from(p.slice(0, 40)), Buffer.from([0xc3, 0x28, 0xff]), Buffer.from(p.slice(40))]),
        'application/fhir+json',
        400,
        /not valid UTF-8/,
      ],
      [
        'CESU surrogate bytes',
        '/auth/login',
        Buffer.from([0x7b, 0x22, 0xed, 0xa0, 0x80, 0x22, 0x3a, 0x31, 0x7d]),
        'application/json',
        400,
        /UTF-8/,
      ],
      ['latin1 charset', '/fhir/R4/Patient', p, 'application/fhir+json; charset=iso-8859-1', 415, /charset/],
      ['too large', '/fhir/R4/Patient', `{"a":"${'x'.repeat(3 * 2 ** 20)}"}`, 'application/fhir+json', 413, /2097152 bytes/],
      ['too large, admin route', '/auth/login', `{"a":"${'x'.repeat(3 * 2 ** 20)}"}`, 'application/json', 413, /2097152 bytes/],
      ['malformed JSON', '/fhir/R4/Patient', '{"resourceType":', 'application/fhir+json', 400, /malformed JSON/],
      ['malformed JSON, admin route', '/auth/login', '{"username":', 'application/json', 400, /malformed JSON/],
      ['wrong content type', '/fhir/R4/Patient', p, 'text/plain', 415, /not supported/],
      ['odd content type', '/fhir/R4/Patient', p, 'application/fhir+jsonx', 415, /not supported/],
      ['no media type', '/fhir/R4/Patient', p, '; charset=utf-8', 415, /not supported/],
      ['wrong content type, admin route', '/auth/login', p, 'application/xml', 415, /not supported/],
      [
        'prototype poisoning',
        '/fhir/R4/Patient',
        '{"resourceType":"Patient","__proto__":{"x":1}}',
        'application/fhir+json',
        400,
        /./,
      ],
      ['form with NUL', '/fhir/R4/Patient/_search', 'name=%00', 'application/x-www-form-urlencoded', 400, /U\+0000/],
      [
        'form not UTF-8',
        '/fhir/R4/Patient/_search',
        Buffer.from([0x6e, 0x3d, 0xff]),
        'application/x-www-form-urlencoded',
        400,
        /UTF-8/,
      ],
    ];
    const before = await s.counts();
    for (const [name, path, body, type, status, re] of cases) {
      const r = await post(path, body, type);
      assertRouteError(path, r, name);
      assert.equal(r.status, status, `${name}: ${r.body.slice(0, 300)}`);
      assert.match(r.body, re, name);
    }
    const counts = await s.counts();
    assert.deepEqual({ ...counts, audit_entry: 0 }, { ...before, audit_entry: 0 }, 'nothing was written');
  });

  it('accepts nesting up to the limit', async () => {
    const r = await post('/fhir/R4/Patient', nested(MAX_JSON_DEPTH / 2 - 1));
    assert.ok(r.status !== 400 || !/nested deeper/.test(r.body), r.body.slice(0, 300));
    assert.ok(r.status < 500, r.body.slice(0, 300));
  });

  it('refuses a Bundle entry search with NUL inside the entry, and an entry id no resource can have', async () => {
    const bundle: Bundle = {
      resourceType: 'Bundle',
      type: 'batch',
      entry: [
        { request: { method: 'GET', url: 'Patient?name=%00' } },
        { request: { method: 'GET', url: 'Patient/a b' } },
        { request: { method: 'DELETE', url: 'Patient/%00' } },
      ],
    };
    const r = await post('/fhir/R4', JSON.stringify(bundle));
    assert.equal(r.status, 200, r.body);
    const b = JSON.parse(r.body) as Bundle;
    assert.deepEqual(
      b.entry!.map((e) => e.response!.status),
      ['400', '400', '400'],
    );
    assert.doesNotMatch(r.body, DATABASE_TEXT);
  });

  it('cannot be ended by clients that go away mid-request (a second answer used to end the process)', async () => {
    const u = new URL(s.base);
    const requests = [
      'GET /fhir/R4/Patient/x HTTP/1.1\r\nHost: t\r\n\r\n',
      `GET /fhir/R4/Patient?name=x HTTP/1.1\r\nHost: t\r\nAuthorization: ${s.auth.authorization!}\r\n\r\n`,
      'GET /access/policies HTTP/1.1\r\nHost: t\r\n\r\n',
      'DELETE /nowhere HTTP/1.1\r\nHost: t\r\n\r\n',
      'POST /fhir/R4/Patient HTTP/1.1\r\nHost: t\r\nContent-Type: application/fhir+json\r\nContent-Length: 2\r\n\r\n{}',
    ];
    for (let round = 0; round < 10; round++)
      for (const request of requests)
        for (const leave of ['half-close', 'destroy'] as const)
          await new Promise<void>((resolve) => {
            const c = connect(Number(u.port), u.hostname, () => {
              if (leave === 'half-close') c.end(request);
              else c.write(request, () => setImmediate(() => c.destroy()));
            });
            c.on('error', () => resolve());
            c.on('close', () => resolve());
            c.resume();
          });
    assert.equal((await fetch(`${s.base}/healthz`)).status, 200, 'the site is still there');
    assert.equal((await fetch(`${s.fhir}/Patient?_count=1`, { headers: s.auth })).status, 200);
  });

  it('serves bodiless requests that carry a content type, on every route, as if they had none', async () => {
    const admin = s.as(['administrator', 'integration'], {}, { userId: 'test-admin' });
    const routes = s.site.app.routeAccess.filter((r) => r.method !== 'HEAD');
    const types = [
      'application/fhir+json',
      'application/fhir+json; charset=utf-8',
      'application/json',
      'application/json; charset=UTF-8',
    ];
    let checked = 0;
    for (const r of routes) {
      const path = r.url.replace(/:[a-z]+/g, (m) => (m === ':type' ? 'Patient' : 'x1')).replace(/\/$/, '') || '/';
      const send = (headers: Record<string, string>) =>
        rawRequest(s.base, head(r.method, path, { ...admin, ...headers })).then((a) => a.status);
      const plain = await send({});
      for (const type of types) {
        const status = await send({ 'content-type': type });
        // A POST or PUT without a body is refused by the route itself, whatever the type says.
        assert.equal(status, plain, `${r.method} ${path} with content-type ${type}`);
        checked++;
      }
    }
    assert.ok(checked >= 150, `${checked} requests`);
    // The FHIR DELETE of issue 23 (generic FHIR clients send the header on every request).
    const created = await post('/fhir/R4/Patient', JSON.stringify(patient(2)));
    assert.equal(created.status, 201, created.body);
    const { id } = JSON.parse(created.body) as Patient;
    for (const type of types) {
      const d = await rawRequest(s.base, head('DELETE', `/fhir/R4/Patient/${id!}`, { 'content-type': type }));
      assert.equal(d.status, 204, `DELETE with ${type}: ${d.body}`);
    }
    const gone = await rawRequest(s.base, head('GET', `/fhir/R4/Patient/${id!}`, { 'content-type': 'application/fhir+json' }));
    assert.equal(gone.status, 410);
  });
});
