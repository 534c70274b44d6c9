// Identity at the HTTP edge: login, tokens on every route, refresh, revocation, services.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { testBackend } from '../db/test-db.ts';
import { Sm2PrivateKey } from '../security/crypto/index.ts';
import { serviceAssertion } from '../security/identity/index.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

describe(`authentication over HTTP (${testBackend()})`, () => {
  let s: TestServer;
  const siteC = Sm2PrivateKey.generate();
  before(async () => {
    s = await startTestServer({ kms: 'uninitialized' });
    const custodians = ['a', 'b'].map((name) => ({ name, publicKey: Sm2PrivateKey.generate().publicKey }));
    await s.site.kms.init({ custodians, threshold: 2 });
    const u = await s.site.identity.createUser({
      username: 'nurse.chen',
      password: 'a long enough passphrase',
      roles: ['nurse'],
      attributes: { department: 'icu' },
    });
    assert.ok(u.ok);
    await s.site.identity.registerService({ id: 'C', kind: 'site', publicKey: siteC.publicKey });
  });
  after(() => s.close());
  const post = (path: string, body: unknown) =>
    fetch(`${s.base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const get = (path: string, auth?: string) => fetch(`${s.base}${path}`, auth ? { headers: { authorization: auth } } : {});

  it('logs in and accepts the token on FHIR routes; a bad credential is 401 where one is needed', async () => {
    const bad = await post('/auth/login', { username: 'nurse.chen', password: 'wrong wrong wrong' });
    assert.equal(bad.status, 401);
    assert.equal(((await bad.json()) as { code: string }).code, 'invalid-credentials');
    assert.match(bad.headers.get('www-authenticate') ?? '', /invalid-credentials/);
    const login = await post('/auth/login', { username: 'nurse.chen', password: 'a long enough passphrase' });
    assert.equal(login.status, 200);
    const tokens = (await login.json()) as { accessToken: string; refreshToken: string; tokenType: string };
    assert.equal(tokens.tokenType, 'Bearer');
    assert.equal((await get('/fhir/R4/metadata', `Bearer ${tokens.accessToken}`)).status, 200);
    // The scheme is case-insensitive (RFC 7235 §2.1), on a route that needs the token.
    for (const scheme of ['Bearer', 'bearer', 'BEARER', 'bEaReR  ']) {
      const r = await get('/fhir/R4/Patient?_count=1', `${scheme} ${tokens.accessToken}`);
      assert.equal(r.status, 200, scheme);
    }
    const [h, p, sig] = tokens.accessToken.split('.') as [string, string, string];
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>;
    const raised = Buffer.from(JSON.stringify({ ...claims, roles: ['administrator'] })).toString('base64url');
    const forged = `${h}.${raised}.${sig}`;
    const refused = await get('/fhir/R4/Patient?_count=1', `Bearer ${forged}`);
    assert.equal(refused.status, 401);
    assert.match(refused.headers.get('www-authenticate') ?? '', /token-invalid/);
    assert.equal(((await refused.json()) as { resourceType: string }).resourceType, 'OperationOutcome');
    assert.equal((await get('/fhir/R4/Patient?_count=1', 'Basic dXNlcjpwYXNz')).status, 401);
    // Public routes answer whatever credential came along (a probe holding an expired token).
    for (const path of ['/fhir/R4/metadata', '/healthz', '/readyz', '/metrics'])
      for (const auth of ['Basic dXNlcjpwYXNz', `Bearer ${forged}`, 'Bearer abc'])
        assert.equal((await get(path, auth)).status, 200, `${path} with ${auth.slice(0, 12)}`);
    const keys = (await (await get('/auth/keys')).json()) as { keys: Array<{ alg: string; kid: string }> };
    assert.deepEqual(
      keys.keys.map((k) => k.alg),
      ['SM2-SM3'],
    );

    const refreshed = await post('/auth/refresh', { refreshToken: tokens.refreshToken });
    assert.equal(refreshed.status, 200);
    assert.equal(
      (await post('/auth/refresh', { refreshToken: tokens.refreshToken })).status,
      401,
      'refresh tokens are single use',
    );
    assert.equal((await post('/auth/revoke', { token: tokens.accessToken })).status, 204);
    assert.equal(
      (await get('/fhir/R4/Patient?_count=1', `Bearer ${tokens.accessToken}`)).status,
      401,
      'a revoked token is refused',
    );
  });

  it('refuses a malformed body with 400 naming each path, before any credential is checked', async () => {
    const missing = await post('/auth/login', { username: 'nurse.chen' });
    assert.equal(missing.status, 400);
    const body = (await missing.json()) as { code: string; message: string };
    assert.equal(body.code, 'bad-request');
    assert.match(body.message, /^body\.password: /);
    const typed = (await (await post('/auth/login', { username: 'nurse.chen', password: 'x', totp: 123456 })).json()) as {
      message: string;
    };
    assert.match(typed.message, /^body\.totp: /);
    const long = await post('/auth/refresh', { refreshToken: 'x'.repeat(4097) });
    assert.equal(long.status, 400);
    assert.match(((await long.json()) as { message: string }).message, /^body\.refreshToken: /);
    const none = await fetch(`${s.base}/auth/revoke`, { method: 'POST' });
    assert.equal(none.status, 400, 'no body at all');
    assert.match(((await none.json()) as { message: string }).message, /^body: /);
  });

  it("accepts another site's service assertion, not a user token in its place", async () => {
    const assertion = serviceAssertion({ serviceId: 'C', key: siteC, site: 'B' });
    assert.equal((await get('/fhir/R4/metadata', `MedmeshService ${assertion}`)).status, 200);
    assert.equal((await get('/replication/changes', `medmeshservice ${assertion}`)).status, 200, 'any case of the scheme');
    const wrongSite = serviceAssertion({ serviceId: 'C', key: siteC, site: 'A' });
    assert.equal((await get('/replication/changes', `MedmeshService ${wrongSite}`)).status, 401);
  });

  it('cannot log anyone in while the KMS is sealed', async () => {
    s.site.kms.seal();
    const r = await post('/auth/login', { username: 'nurse.chen', password: 'a long enough passphrase' });
    assert.equal(r.status, 503);
    const malformed = await post('/auth/login', { username: 'nurse.chen' });
    assert.equal(malformed.status, 503, 'a sealed site says so before it checks the body');
    assert.equal(((await malformed.json()) as { code: string }).code, 'sealed');
    const keys = await get('/auth/keys');
    assert.equal(keys.status, 503);
    assert.deepEqual(await keys.json(), { code: 'issuer-unavailable', message: 'the site is sealed' });
  });
});
