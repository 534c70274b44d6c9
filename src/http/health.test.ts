// The site's own routes (app.ts) and the API document: readiness answers 503 not-ready in the
// JSON error shape while the database does not answer, and /openapi.json describes the routes
// from their schemas (each with a summary, its parameters bounded).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Db } from '../db/index.ts';
import { openTestDb, testBackend } from '../db/test-db.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

interface Operation {
  summary?: string;
  tags?: string[];
  parameters?: Array<{ in: string; name: string; schema: Record<string, unknown> }>;
  requestBody?: { content: Record<string, unknown> };
}

describe(`health and the API document (${testBackend()})`, () => {
  let s: TestServer;
  /** While set, the readiness probe's query fails as a database that does not answer would. */
  let unreachable = false;
  before(async () => {
    const db = await openTestDb({ migrated: false });
    const query: Db['query'] = (sql, ...rest) =>
      unreachable && sql === 'SELECT 1'
        ? Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:5432'))
        : db.query(sql, ...rest);
    s = await startTestServer({ db: { ...db, query } });
  });
  after(() => s.close());

  it('answers /readyz 503 not-ready in the JSON error shape while the database does not answer, without its text', async () => {
    assert.deepEqual(await (await fetch(`${s.base}/readyz`)).json(), { status: 'ready', site: 'B' });
    unreachable = true;
    try {
      const r = await fetch(`${s.base}/readyz`);
      assert.equal(r.status, 503);
      assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
      assert.deepEqual(await r.json(), {
        code: 'not-ready',
        message: 'the database does not answer',
        status: 'not-ready',
        site: 'B',
      });
    } finally {
      unreachable = false;
    }
    assert.equal((await fetch(`${s.base}/readyz`)).status, 200);
  });

  it('describes the routes in /openapi.json from their schemas', async () => {
    const r = await fetch(`${s.base}/openapi.json`);
    assert.equal(r.status, 200);
    const doc = (await r.json()) as { openapi: string; paths: Record<string, Record<string, Operation>> };
    assert.equal(doc.openapi, '3.1.0');
    const op = (path: string, method: string) => {
      const o = doc.paths[path]?.[method];
      assert.ok(o, `${method} ${path} is in the document`);
      return o;
    };
    const param = (o: Operation, where: string, name: string) =>
      o.parameters?.find((p) => p.in === where && p.name === name)?.schema;
    for (const prefix of ['/replication/', '/imaging/collection', '/dicomweb/', '/fhir/R4/', '/healthz', '/readyz', '/metrics'])
      // (AuditEvent is the audit routes' own FHIR view.)
      for (const [path, methods] of Object.entries(doc.paths).filter(([p]) => p.startsWith(prefix) && !p.includes('AuditEvent')))
        for (const [method, o] of Object.entries(methods)) {
          assert.ok(o.summary, `${method} ${path} has a summary`);
          assert.ok(o.tags?.length, `${method} ${path} has a tag`);
        }
    assert.deepEqual(param(op('/dicomweb/studies/{study}', 'get'), 'path', 'study'), {
      type: 'string',
      maxLength: 64,
      pattern: '^[0-9]+(\\.[0-9]+)*$',
    });
    assert.equal(param(op('/dicomweb/studies', 'get'), 'query', 'limit')?.maximum, 1000);
    assert.ok(op('/dicomweb/studies', 'post').requestBody?.content['multipart/related'], 'STOW-RS takes multipart/related');
    const changes = op('/replication/changes', 'get');
    assert.deepEqual(
      ['after', 'limit', 'wait'].map((n) => param(changes, 'query', n) !== undefined),
      [true, true, true],
    );
    assert.equal(param(op('/replication/dead-letters/{changeId}/skip', 'post'), 'path', 'changeId')?.type, 'string');
    assert.ok(op('/replication/verify', 'post').requestBody, 'the verify body is described');
    assert.equal(param(op('/imaging/collection/{source}/{day}', 'get'), 'path', 'day')?.pattern, '^\\d{8}$');
    assert.equal(param(op('/fhir/R4/{type}/{id}', 'put'), 'header', 'if-match')?.maxLength, 200);
    assert.equal(param(op('/fhir/R4/{type}/{id}', 'get'), 'path', 'id')?.maxLength, 200);
    // Open-ended search parameters: the named ones are listed, nothing of the schema's own structure.
    const search = op('/fhir/R4/{type}', 'get');
    assert.ok(param(search, 'query', '_count'));
    assert.deepEqual(
      search.parameters?.filter(
        (p) => p.in === 'query' && ['additionalProperties', 'propertyNames', 'type', 'description'].includes(p.name),
      ),
      [],
    );
  });
});
