import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { Db } from '../../db/index.ts';
import { openTestDb, testBackend } from '../../db/test-db.ts';
import { sealEnvelope, openEnvelope, Sm2PrivateKey } from '../crypto/index.ts';
import { IdentityService, serviceAssertion } from './identity.ts';
import { hashPassword, verifyPassword } from './password.ts';
import { signToken, verifyToken } from './token.ts';
import { base32, base32Decode, hotp, matchTotp } from './totp.ts';

describe('one-time passwords', () => {
  const secret = Buffer.from('12345678901234567890');
  it('matches the RFC 4226 HOTP vectors', () => {
    const expected = ['755224', '287082', '359152', '969429', '338314', '254676', '287922', '162583', '399871', '520489'];
    expected.forEach((code, i) => assert.equal(hotp(secret, BigInt(i)), code));
  });
  it('matches the RFC 6238 TOTP (SHA-1) vectors', () => {
    for (const [t, code] of [
      [59, '94287082'],
      [1111111109, '07081804'],
      [1111111111, '14050471'],
      [1234567890, '89005924'],
      [2000000000, '69279037'],
      [20000000000, '65353130'],
    ] as const) {
      assert.equal(hotp(secret, BigInt(Math.floor(t / 30)), { digits: 8 }), code, `t=${t}`);
    }
  });
  it('writes and reads base32 as RFC 4648 does (unpadded), refusing other characters', () => {
    for (const [text, b32] of [
      ['', ''],
      ['f', 'MY'],
      ['fo', 'MZXQ'],
      ['foo', 'MZXW6'],
      ['foob', 'MZXW6YQ'],
      ['fooba', 'MZXW6YTB'],
      ['foobar', 'MZXW6YTBOI'],
    ] as const) {
      assert.equal(base32(Buffer.from(text)), b32, text);
      assert.equal(base32Decode(b32).toString(), text, b32);
    }
    for (let i = 0; i < 50; i++) {
      const bytes = randomBytes(i);
      assert.deepEqual(base32Decode(base32(bytes).toLowerCase()), bytes);
    }
    assert.throws(() => base32Decode('MZ1W'), /not a base32 character: "1"/);
  });
  it('accepts the neighbouring step only, and an SM3 variant differs', () => {
    const now = 1_800_000_000_000;
    const code = hotp(secret, BigInt(Math.floor(now / 30_000)));
    assert.ok(matchTotp(secret, code, now + 30_000) !== undefined);
    assert.equal(matchTotp(secret, code, now + 90_000), undefined);
    assert.equal(matchTotp(secret, '12345', now), undefined);
    assert.notEqual(hotp(secret, 1n, { algorithm: 'sm3' }), hotp(secret, 1n));
  });
});

describe('passwords and tokens', () => {
  it('hashes passwords with scrypt and verifies only the right one', async () => {
    const h = await hashPassword('correct horse battery staple');
    assert.match(h, /^scrypt\$32768\$8\$1\$/);
    assert.equal(await verifyPassword('correct horse battery staple', h), true);
    assert.equal(await verifyPassword('correct horse battery stapl', h), false);
    assert.equal(await verifyPassword('x', 'not-a-hash'), false);
  });
  it('verifies SM2-signed tokens and rejects tampering, other keys, expiry and other algorithms', () => {
    const key = Sm2PrivateKey.generate();
    const t = signToken({ iss: 'B', sub: 'u1', typ: 'access', iat: 1000, exp: 1600, jti: 'j', roles: ['nurse'] }, key, 'B-1');
    assert.ok(verifyToken(t, key.publicKey, 1100).ok);
    const [h, p, s] = t.split('.') as [string, string, string];
    const elevated = Buffer.from(
      JSON.stringify({ ...JSON.parse(Buffer.from(p, 'base64url').toString()), roles: ['administrator'] }),
    ).toString('base64url');
    const cases: Array<[string, string]> = [
      [`${h}.${elevated}.${s}`, 'bad-signature'],
      [
        signToken({ iss: 'B', sub: 'u1', typ: 'access', iat: 1000, exp: 1600, jti: 'j' }, Sm2PrivateKey.generate(), 'B-1'),
        'bad-signature',
      ],
      [`${Buffer.from('{"alg":"none"}').toString('base64url')}.${p}.${s}`, 'wrong-algorithm'],
      ['not.a-token', 'malformed'],
    ];
    for (const [tok, kind] of cases) {
      const r = verifyToken(tok, key.publicKey, 1100);
      assert.ok(!r.ok);
      assert.equal(r.error.kind, kind);
    }
    const late = verifyToken(t, key.publicKey, 5000);
    assert.ok(!late.ok && late.error.kind === 'expired');
  });
});

describe(`identity service (${testBackend()})`, () => {
  let db: Db;
  let ids: IdentityService;
  let clock = 1_900_000_000_000;
  let sealed = false;
  const issuerKey = Sm2PrivateKey.generate();
  const secretsKey = randomBytes(16);
  before(async () => {
    db = await openTestDb();
    ids = new IdentityService({
      db,
      siteId: 'B',
      now: () => new Date(clock),
      issuer: () => (sealed ? undefined : { key: issuerKey, kid: 'B-1' }),
      secrets: {
        seal: (b) => Promise.resolve(sealEnvelope({ alg: 'SM4-GCM', keyId: 'identity', keyVersion: 1, key: secretsKey }, b)),
        open: (b) => Promise.resolve(openEnvelope(b, secretsKey)),
      },
    });
  });
  after(() => db.close());

  it('logs a doctor in, authenticates the token, refreshes once and revokes', async () => {
    const u = await ids.createUser({
      username: 'dr.li',
      password: 'a long enough passphrase',
      roles: ['doctor'],
      attributes: { department: 'cardiology' },
    });
    assert.ok(u.ok && u.value.totpSecret === undefined);
    assert.equal(
      (await ids.createUser({ username: 'dr.li', password: 'a long enough passphrase', roles: ['doctor'] })).ok,
      false,
    );
    assert.match(
      JSON.stringify(await ids.createUser({ username: 'weak', password: 'short', roles: ['nurse'] })),
      /at least 12 characters/,
    );
    const bad = await ids.login({ username: 'dr.li', password: 'wrong password here' });
    const unknown = await ids.login({ username: 'nobody', password: 'wrong password here' });
    assert.ok(!bad.ok && !unknown.ok);
    assert.deepEqual(bad.error, unknown.error, 'an unknown user and a wrong password look the same');
    const t = await ids.login({ username: 'dr.li', password: 'a long enough passphrase' });
    assert.ok(t.ok);
    const who = await ids.authenticate(t.value.accessToken);
    assert.ok(who.ok && who.value.kind === 'user');
    assert.deepEqual(
      [who.value.kind === 'user' && who.value.roles, who.value.kind === 'user' && who.value.attributes.department],
      [['doctor'], 'cardiology'],
    );
    const r1 = await ids.refresh(t.value.refreshToken);
    assert.ok(r1.ok);
    const reuse = await ids.refresh(t.value.refreshToken);
    assert.ok(!reuse.ok && reuse.error.kind === 'token-revoked', 'a refresh token works once');
    assert.ok((await ids.revoke(r1.value.accessToken)).ok);
    const revoked = await ids.authenticate(r1.value.accessToken);
    assert.ok(!revoked.ok && revoked.error.kind === 'token-revoked');
    assert.ok((await ids.revoke(r1.value.refreshToken)).ok);
    const afterRevoke = await ids.refresh(r1.value.refreshToken);
    assert.ok(!afterRevoke.ok);
    clock += 3_600_000;
    const expired = await ids.authenticate(t.value.accessToken);
    assert.ok(!expired.ok && expired.error.kind === 'token-expired');
  });

  it('sees a revocation made through another API node of the site within a second', async () => {
    const other = new IdentityService({
      db,
      siteId: 'B',
      now: () => new Date(clock),
      issuer: () => ({ key: issuerKey, kid: 'B-1' }),
      secrets: { seal: () => Promise.reject(new Error('unused')), open: () => Promise.reject(new Error('unused')) },
    });
    const t = await ids.login({ username: 'dr.li', password: 'a long enough passphrase' });
    assert.ok(t.ok);
    assert.ok((await other.authenticate(t.value.accessToken)).ok);
    assert.ok((await ids.revoke(t.value.accessToken)).ok);
    const local = await ids.authenticate(t.value.accessToken);
    assert.ok(!local.ok && local.error.kind === 'token-revoked', 'at once on the node that revoked');
    clock += 1_100;
    const remote = await other.authenticate(t.value.accessToken);
    assert.ok(!remote.ok && remote.error.kind === 'token-revoked', 'after the sync interval on the other node');
  });

  it('requires a second factor from administrators and refuses a replayed code', async () => {
    const u = await ids.createUser({ username: 'admin.wang', password: 'another long passphrase', roles: ['administrator'] });
    assert.ok(u.ok && u.value.totpSecret);
    const secret = base32Decode(u.value.totpSecret);
    const none = await ids.login({ username: 'admin.wang', password: 'another long passphrase' });
    assert.ok(!none.ok && none.error.kind === 'second-factor-required');
    const code = hotp(secret, BigInt(Math.floor(clock / 30_000)));
    const wrong = await ids.login({
      username: 'admin.wang',
      password: 'another long passphrase',
      totp: code === '000000' ? '111111' : '000000',
    });
    assert.ok(!wrong.ok && wrong.error.kind === 'second-factor-invalid');
    assert.ok((await ids.login({ username: 'admin.wang', password: 'another long passphrase', totp: code })).ok);
    const replay = await ids.login({ username: 'admin.wang', password: 'another long passphrase', totp: code });
    assert.ok(!replay.ok && replay.error.kind === 'second-factor-replayed');
    const stored = await db.query<{ totp_secret: Uint8Array }>("SELECT totp_secret FROM iam_user WHERE username = 'admin.wang'");
    assert.ok(!Buffer.from(stored.rows[0]!.totp_secret).includes(secret), 'the TOTP secret is not stored in clear');
  });

  it('authenticates sites with their own key, never with user tokens', async () => {
    const siteC = Sm2PrivateKey.generate();
    await ids.registerService({ id: 'C', kind: 'site', publicKey: siteC.publicKey });
    const now = Math.floor(clock / 1000);
    const ok = await ids.authenticateService(serviceAssertion({ serviceId: 'C', key: siteC, site: 'B', nowSeconds: now }));
    assert.ok(ok.ok && ok.value.kind === 'service' && ok.value.serviceId === 'C');
    for (const [assertion, kind] of [
      [serviceAssertion({ serviceId: 'C', key: siteC, site: 'A', nowSeconds: now }), 'token-invalid'],
      [serviceAssertion({ serviceId: 'C', key: Sm2PrivateKey.generate(), site: 'B', nowSeconds: now }), 'token-invalid'],
      [serviceAssertion({ serviceId: 'Z', key: siteC, site: 'B', nowSeconds: now }), 'unknown-service'],
      [serviceAssertion({ serviceId: 'C', key: siteC, site: 'B', nowSeconds: now - 3600 }), 'token-expired'],
    ] as const) {
      const r = await ids.authenticateService(assertion);
      assert.ok(!r.ok);
      assert.equal(r.error.kind, kind);
    }
    const login = await ids.login({ username: 'dr.li', password: 'a long enough passphrase' });
    assert.ok(login.ok);
    assert.equal((await ids.authenticateService(login.value.accessToken)).ok, false, 'a user token is not a service credential');
    const asUser = await ids.authenticate(serviceAssertion({ serviceId: 'C', key: siteC, site: 'B', nowSeconds: now }));
    assert.equal(asUser.ok, false, 'a service assertion is not a user token');
  });

  it('issues nothing while the KMS is sealed', async () => {
    sealed = true;
    const r = await ids.login({ username: 'dr.li', password: 'a long enough passphrase' });
    sealed = false;
    assert.ok(!r.ok && r.error.kind === 'issuer-unavailable');
  });
});
