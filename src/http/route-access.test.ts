// Every route is access-controlled: one without a declaration cannot be registered, and
// every route of a running site either is on the reviewed public list or refuses callers
// without a token (401) and callers whose role grants nothing (403).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import Fastify from 'fastify';
import { testBackend } from '../db/test-db.ts';
import { registerRouteAccess } from './route-access.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

/** Reviewed: each of these serves nothing that needs a caller (see each route's comment). */
const PUBLIC = [
  'GET /auth/keys',
  'GET /fhir/R4/metadata',
  'GET /healthz',
  'GET /kms/shares',
  'GET /kms/status',
  'GET /metrics',
  'GET /openapi.json',
  'GET /readyz',
  'POST /auth/login',
  'POST /auth/refresh',
  'POST /auth/revoke',
  'POST /kms/shares',
  'POST /kms/unseal',
];

describe(`route access (${testBackend()})`, () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer();
  });
  after(() => s.close());

  it('refuses to register a route that does not say who may call it', async () => {
    const app = Fastify();
    registerRouteAccess(app);
    assert.throws(() => app.get('/sneaky', () => 'all the data'), /declares no access/);
    app.get('/fine', { config: { access: 'public' } }, () => 'ok');
    await app.close();
  });

  it('answers 401 without a token and 403 for a role that grants nothing, on every non-public route', async () => {
    const routes = s.site.app.routeAccess.filter((r) => r.method !== 'HEAD');
    const pub = routes
      .filter((r) => r.access === 'public')
      .map((r) => `${r.method} ${r.url}`)
      .sort();
    assert.deepEqual(pub, [...PUBLIC].sort(), 'a new public route must be reviewed and added to this list');
    const guarded = routes.filter((r) => r.access !== 'public');
    assert.ok(guarded.length >= 15, `found ${guarded.length} guarded routes`);
    const nobody = s.as(['janitor']);
    for (const r of guarded) {
      const path =
        r.url
          .replace(':type', 'Patient')
          .replace(':id', 'x1')
          .replace(':vid', '1')
          .replace(':name', 'nurse')
          .replace(/\/$/, '') || '/';
      const init = (headers: Record<string, string>): RequestInit =>
        r.method === 'GET' || r.method === 'DELETE'
          ? { method: r.method, headers }
          : { method: r.method, headers: { ...headers, 'content-type': 'application/json' }, body: '{}' };
      const anon = await fetch(`${s.base}${path}`, init({}));
      assert.equal(anon.status, 401, `${r.method} ${r.url} without a token`);
      const other = await fetch(`${s.base}${path}`, init(nobody));
      assert.equal(other.status, 403, `${r.method} ${r.url} as a role without a policy`);
    }
  });
});
