// The OpenAPI document is generated from the route schemas, and docs/api-reference.md from it:
// the document is well formed and covers the API, and the committed page is what
// `npm run docs:api` writes today (a route changed without the page fails here).
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { testBackend } from '../db/test-db.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';
import { apiReference, type OpenApiDocument } from './api-reference.ts';

describe(`OpenAPI document and API reference (${testBackend()})`, () => {
  let s: TestServer;
  let doc: OpenApiDocument & { openapi: string };
  before(async () => {
    s = await startTestServer({ siteId: 'B' });
    const r = await fetch(`${s.base}/openapi.json`);
    assert.equal(r.status, 200, 'public, like health');
    doc = (await r.json()) as typeof doc;
  });
  after(async () => {
    await s.close();
  });

  it('is OpenAPI 3.1 and covers the API, with summaries', () => {
    assert.equal(doc.openapi, '3.1.0');
    for (const path of ['/access/grants', '/auth/login', '/kms/status', '/replication/verify', '/healthz'])
      assert.ok(doc.paths[path], `${path} is documented`);
    const unsummarized = Object.entries(doc.paths).flatMap(([path, ops]) =>
      Object.entries(ops)
        .filter(([, op]) => !op.summary)
        .map(([m]) => `${m.toUpperCase()} ${path}`),
    );
    assert.deepEqual(unsummarized, [], 'every route says what it does');
  });

  it('docs/api-reference.md is what npm run docs:api writes', async () => {
    const committed = await readFile(new URL('../../docs/api-reference.md', import.meta.url), 'utf8');
    assert.equal(committed, apiReference(doc), 'the API changed: run npm run docs:api and commit docs/api-reference.md');
  });
});
