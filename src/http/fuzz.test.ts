// Fuzzing a real site over raw HTTP: ids, query strings, bodies, content types and
// credentials, with NUL, lone surrogates, invalid UTF-8, broken percent-encoding, huge and
// deeply nested input. Whatever comes in, the answer is never a 5xx, a refusal is in the
// shape of its route (OperationOutcome under /fhir, {code, message} elsewhere) and names
// nothing of the database, and the site answers afterwards. Seeded (MEDMESH_FUZZ_SEED to
// replay; the seed is printed), bounded in runs and time (MEDMESH_FUZZ_RUNS).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import type { Patient } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { assertRouteError, DATABASE_TEXT, nested, rawRequest } from './testing-raw.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

const SEED = Number(process.env.MEDMESH_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const RUNS = Number(process.env.MEDMESH_FUZZ_RUNS ?? 300);
const BODY_LIMIT = 128 * 1024;

/** Strings made to hurt: NUL and other controls, lone surrogates, reserved URL characters, non-ASCII. */
const nasty = fc.oneof(
  { weight: 3, arbitrary: fc.string({ maxLength: 12 }) },
  { weight: 3, arbitrary: fc.string({ unit: 'binary', maxLength: 12 }) },
  {
    weight: 4,
    arbitrary: fc
      .array(
        fc.constantFrom(
          '\0',
          '\ud800',
          '\udfff',
          '\u0001',
          '\u007f',
          '%',
          '%0',
          '/',
          '?',
          '#',
          '&',
          '=',
          '+',
          ' ',
          '"',
          '\\',
          ':',
          '|',
        ),
        { maxLength: 6 },
      )
      .chain((bad) => fc.tuple(fc.constant(bad), fc.string({ maxLength: 6 })))
      .map(([bad, s]) => bad.join('') + s + bad.reverse().join('')),
  },
  { weight: 1, arbitrary: fc.constantFrom('a'.repeat(300), 'x'.repeat(5000), '\u00e9'.repeat(2000), '張三', '😀') },
);

/** Well-formed text (it passes the door and reaches routes and the database). */
const text = fc.string({ unit: 'grapheme', maxLength: 12 });

/** How a string goes into the request line: percent-encoded UTF-8, raw bytes, or random percent-encoded bytes. */
const component = fc.oneof(
  { weight: 6, arbitrary: text.map((t) => encodeURIComponent(t)) },
  {
    weight: 2,
    arbitrary: nasty.map((t) => [...Buffer.from(t, 'utf8')].map((b) => `%${b.toString(16).padStart(2, '0')}`).join('')),
  },
  { weight: 1, arbitrary: nasty.map((t) => Buffer.from(t, 'utf8').toString('latin1')) },
  {
    weight: 1,
    arbitrary: fc
      .uint8Array({ maxLength: 8 })
      .map((b) => [...b].map((x) => `%${x.toString(16).padStart(2, '0').toUpperCase()}`).join('')),
  },
  { weight: 2, arbitrary: fc.constantFrom('x1', 'Patient', '0000000000000000-B', '%E0%A4%A', '%', '%zz', '%ED%A0%80', '..', '') },
);

const query = fc
  .array(
    fc.tuple(
      fc.oneof(
        fc.constantFrom(
          'name',
          '_count',
          '_id',
          'identifier',
          'birthdate',
          '_since',
          '_offset',
          'after',
          'wait',
          'limit',
          'user',
          '_format',
        ),
        component,
      ),
      component,
    ),
    { maxLength: 4 },
  )
  .map((pairs) => (pairs.length ? `?${pairs.map(([k, v]) => `${k}=${v}`).join('&')}` : ''));

const type = fc.oneof(fc.constantFrom('Patient', 'Observation', 'Bundle', 'Encounter', 'Nope'), component);
const target = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(type, query).map(([t, q]) => `/fhir/R4/${t}${q}`) },
  { weight: 6, arbitrary: fc.tuple(type, component, query).map(([t, id, q]) => `/fhir/R4/${t}/${id}${q}`) },
  { weight: 2, arbitrary: fc.tuple(type, component, component).map(([t, id, v]) => `/fhir/R4/${t}/${id}/_history/${v}`) },
  { weight: 2, arbitrary: fc.tuple(type, query).map(([t, q]) => `/fhir/R4/${t}/_history${q}`) },
  { weight: 2, arbitrary: fc.tuple(type, query).map(([t, q]) => `/fhir/R4/${t}/_search${q}`) },
  { weight: 2, arbitrary: query.map((q) => `/fhir/R4${q}`) },
  {
    weight: 5,
    arbitrary: fc
      .tuple(
        fc.constantFrom(
          '/auth/login',
          '/auth/refresh',
          '/auth/revoke',
          '/access/decide',
          '/access/grants',
          '/access/policies/',
          '/access/break-glass',
          '/conflicts',
          '/conflicts/resolve',
          '/empi/lookup',
          '/audit/proof',
          '/audit/report',
          '/replication/changes',
          '/replication/dead-letters/',
          '/kms/unseal',
          '/kms/shares',
          '/healthz',
          '/imaging/collection/',
          '/dicomweb/studies',
          '/nowhere/',
        ),
        component,
        query,
      )
      .map(([p, c, q]) => (p.endsWith('/') ? `${p}${c}${q}` : `${p}${q}`)),
  },
);

const contentType = fc.oneof(
  fc.constantFrom(
    undefined,
    'application/fhir+json',
    'application/fhir+json; charset=utf-8',
    'application/json',
    'application/json; charset=UTF-8',
    'application/fhir+json; charset=latin1',
    'application/json+fhir',
    'application/x-www-form-urlencoded',
    'text/plain',
    'application/xml',
    'multipart/related; boundary=x',
    '*/*',
    '',
    'application/fhir+json;;',
  ),
  fc.string({ unit: 'grapheme-ascii', maxLength: 30 }).map((s) => s.replace(/[\r\n]/g, '')),
);

/** A Bundle whose entries name fuzzed urls and carry fuzzed resources. */
const bundle = fc
  .record({
    type: fc.constantFrom('batch', 'transaction', 'searchset', 'x'),
    entry: fc.array(
      fc.record({
        method: fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH'),
        url: fc.oneof(
          fc.tuple(type, component).map(([t, id]) => `${t}/${id}`),
          fc.tuple(type, component, component).map(([t, id, v]) => `${t}/${id}/_history/${v}`),
          fc.tuple(type, query).map(([t, q]) => `${t}${q}`),
          nasty,
        ),
        family: fc.oneof(text, nasty),
        ifNoneExist: fc.option(query.map((q) => q.slice(1))),
      }),
      { maxLength: 5 },
    ),
  })
  .map(({ type: bundleType, entry }) =>
    Buffer.from(
      JSON.stringify({
        resourceType: 'Bundle',
        type: bundleType,
        entry: entry.map((e) => ({
          request: { method: e.method, url: e.url, ...(e.ifNoneExist ? { ifNoneExist: e.ifNoneExist } : {}) },
          resource: { resourceType: 'Patient', name: [{ family: e.family }] },
        })),
      }),
    ),
  );

const body = fc.oneof(
  { weight: 2, arbitrary: fc.constant(undefined) },
  { weight: 3, arbitrary: bundle },
  {
    weight: 3,
    arbitrary: fc
      .record({ family: text, given: text, birthDate: fc.oneof(text, fc.constant('1970-01-01')), value: text })
      .map((p) =>
        Buffer.from(
          JSON.stringify({
            resourceType: 'Patient',
            name: [{ family: p.family, given: [p.given] }],
            birthDate: p.birthDate,
            identifier: [{ system: 'urn:oid:2.16.156.10011.1.3', value: p.value }],
          }),
        ),
      ),
  },
  {
    weight: 4,
    arbitrary: fc
      .record({ family: nasty, given: nasty, gender: nasty, key: nasty })
      .map(({ family, given, gender, key }) =>
        Buffer.from(JSON.stringify({ resourceType: 'Patient', name: [{ family, given: [given] }], gender, [key]: 1 })),
      ),
  },
  { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 6 }).map((v) => Buffer.from(JSON.stringify(v) ?? 'null')) },
  { weight: 2, arbitrary: fc.integer({ min: 40, max: 3000 }).map((n) => Buffer.from(nested(n))) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 4000 }).map((n) => Buffer.from('['.repeat(n) + ']'.repeat(n))) },
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)) },
  {
    weight: 2,
    arbitrary: fc.tuple(fc.uint8Array({ minLength: 1, maxLength: 4 }), fc.nat(30)).map(([bad, at]) => {
      const text = Buffer.from('{"resourceType":"Patient","name":[{"family":"abcdefghij"}]}');
      return Buffer.concat([text.subarray(0, at), Buffer.from(bad), text.subarray(at)]);
    }),
  },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      Buffer.from(`{"resourceType":"Patient","text":{"div":"${'x'.repeat(BODY_LIMIT + 10)}"}}`),
      Buffer.from('{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient?name=%00"}}]}'),
      Buffer.from('{"resourceType":"Patient","__proto__":{"admin":true}}'),
      Buffer.from('name=%00&_id=%ED%A0%80'),
      Buffer.from('\uFEFF{"resourceType":"Patient"}'),
    ),
  },
);

describe(`fuzzing a site over HTTP (${testBackend()})`, () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({ bodyLimit: BODY_LIMIT });
  });
  after(() => s.close());

  it(`never answers 5xx, always in the route's shape, and keeps answering (seed ${SEED})`, async () => {
    console.log(`fuzz seed ${SEED} (replay: MEDMESH_FUZZ_SEED=${SEED})`);
    const auth = fc.oneof(
      { weight: 8, arbitrary: fc.constant<Record<string, string>>(s.auth) },
      {
        weight: 4,
        arbitrary: fc.constantFrom<Record<string, string>>(
          {},
          { authorization: `bearer ${s.auth.authorization!.slice(7)}` },
          { authorization: 'Bearer not.a.token' },
          { authorization: 'MedmeshService x' },
          { authorization: 'Basic dXNlcjpwYXNz' },
        ),
      },
    );
    const method = fc.constantFrom('GET', 'GET', 'POST', 'POST', 'PUT', 'DELETE', 'HEAD', 'PATCH', 'OPTIONS');
    type Req = [string, string, string | undefined, Record<string, string>, Buffer | undefined];
    // Anything at all: most of it is refused at the door.
    const wild = fc.tuple(method, target, contentType, auth, body);
    // Well-formed requests carrying fuzzed values: these reach the routes, the store and the database.
    const fhirJson = fc.constantFrom('application/fhir+json', 'application/json; charset=utf-8');
    const patientBody = body.filter((b) => b !== undefined && b.toString('latin1').startsWith('{"resourceType":"Patient"'));
    const served = fc.constantFrom('Patient', 'Observation', 'Encounter', 'Organization');
    const wellFormed = fc.oneof(
      fc.tuple(
        fc.constant('GET'),
        fc.tuple(served, component).map(([t, id]) => `/fhir/R4/${t}/${id}`),
      ),
      fc.tuple(
        fc.constant('GET'),
        fc.tuple(served, query).map(([t, q]) => `/fhir/R4/${t}${q}`),
      ),
      fc.tuple(
        fc.constant('GET'),
        fc.tuple(served, component, component).map(([t, id, v]) => `/fhir/R4/${t}/${id}/_history/${v}`),
      ),
      fc.tuple(
        fc.constantFrom('DELETE', 'GET'),
        fc.tuple(served, component).map(([t, id]) => `/fhir/R4/${t}/${id}`),
      ),
    );
    const withBody = fc.oneof(
      fc.tuple(fc.constant('POST'), fc.constant('/fhir/R4/Patient'), patientBody),
      fc.tuple(
        fc.constant('PUT'),
        component.map((id) => `/fhir/R4/Patient/${id}`),
        patientBody,
      ),
      fc.tuple(fc.constant('POST'), fc.constant('/fhir/R4'), bundle),
      fc.tuple(
        fc.constant('POST'),
        fc.constant('/auth/login'),
        fc.record({ username: text, password: nasty }).map((b) => Buffer.from(JSON.stringify(b))),
      ),
    );
    const request: fc.Arbitrary<Req> = fc.oneof(
      { weight: 4, arbitrary: wild },
      {
        weight: 3,
        arbitrary: fc
          .tuple(wellFormed, fc.option(fhirJson), auth)
          .map(([[m, path], type, headers]): Req => [m, path, type ?? undefined, headers, undefined]),
      },
      {
        weight: 3,
        arbitrary: fc
          .tuple(withBody, fhirJson, auth)
          .map(([[m, path, payload], type, headers]): Req => [m, path, type, headers, payload]),
      },
      {
        weight: 1,
        arbitrary: fc
          .tuple(served, query, auth)
          .map(([t, q, headers]): Req => [
            'POST',
            `/fhir/R4/${t}/_search`,
            'application/x-www-form-urlencoded',
            headers,
            Buffer.from(q.slice(1), 'latin1'),
          ]),
      },
    );
    let answered = 0;
    const statuses = new Map<number, number>();
    const out = await fc.check(
      fc.asyncProperty(request, async ([m, path, type, headers, payload]) => {
        const h: Record<string, string> = { host: 'fuzz', connection: 'close', ...headers };
        if (type !== undefined) h['content-type'] = type;
        if (payload) h['content-length'] = String(payload.length);
        const head = Buffer.concat([
          Buffer.from(`${m} `),
          Buffer.from(path, 'latin1'),
          Buffer.from(
            ` HTTP/1.1\r\n${Object.entries(h)
              .map(([k, v]) => `${k}: ${v}\r\n`)
              .join('')}\r\n`,
          ),
        ]);
        const who = headers.authorization?.slice(0, 16) ?? 'anonymous';
        const sent = `${payload?.length ?? 0} bytes: ${payload?.subarray(0, 60).toString('latin1') ?? ''}`;
        const what = `${m} ${path.slice(0, 200)} (${String(type)}, ${who}, ${sent})`;
        const r = await rawRequest(s.base, head, payload).catch((e: unknown) => {
          throw new Error(`${what}: ${e instanceof Error ? e.message : String(e)}`);
        });
        assert.ok(r.status >= 200, `${what}: an answer (got none)`);
        assert.ok(r.status < 500, `${what}: ${r.status} ${r.body.slice(0, 400)}`);
        assert.doesNotMatch(r.body.slice(0, 4000), DATABASE_TEXT, what);
        if (r.status >= 400 && m !== 'HEAD') assertRouteError(path, r, what);
        answered++;
        statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
      }),
      { seed: SEED, numRuns: RUNS, endOnFailure: true, interruptAfterTimeLimit: 40_000 },
    );
    // The failing request is named by the assertion; replay it with the seed and path.
    if (out.failed)
      assert.fail(
        `fuzz failed (MEDMESH_FUZZ_SEED=${out.seed}, path ${String(out.counterexamplePath)}): ${String(
          (out.errorInstance as Error | undefined)?.message ?? out.errorInstance,
        ).slice(0, 2000)}`,
      );
    console.log(`fuzz: ${answered} requests, by status ${JSON.stringify(Object.fromEntries([...statuses].sort()))}`);
    assert.ok(answered >= Math.min(RUNS, 50), `${answered} requests answered`);
    // Still a working site.
    assert.equal((await fetch(`${s.base}/healthz`)).status, 200);
    const p: Patient = {
      resourceType: 'Patient',
      identifier: [
        {
          system: 'urn:oid:2.16.156.10011.1.3',
          value: makeResidentId({ divisionCode: '440104', birthDate: '1990-09-09', sequence: 7 }),
        },
      ],
    };
    const created = await fetch(`${s.fhir}/Patient`, {
      method: 'POST',
      headers: { ...s.auth, 'content-type': 'application/fhir+json' },
      body: JSON.stringify(p),
    });
    assert.equal(created.status, 201);
    const { id } = (await created.json()) as Patient;
    assert.equal((await fetch(`${s.fhir}/Patient/${id!}`, { headers: s.auth })).status, 200);
  });
});
