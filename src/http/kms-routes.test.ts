// The KMS HTTP surface between sites and for operators; runs on PGlite and PostgreSQL.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { openTestDb, testBackend } from '../db/test-db.ts';
import type { Db } from '../db/index.ts';
import { Sm2PrivateKey, type Sm2PublicKey } from '../security/crypto/index.ts';
import { encodeShareToken, Kms, signShare, unwrapShare, type WrappedShare } from '../security/kms/index.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

describe(`KMS HTTP (${testBackend()})`, () => {
  let c: TestServer;
  let bDb: Db;
  let shares: WrappedShare[];
  let bKey: Sm2PublicKey;
  let bSigner: Sm2PrivateKey;
  const custodians = ['alice', 'bob', 'carol'].map((name) => ({ name, key: Sm2PrivateKey.generate() }));
  before(async () => {
    c = await startTestServer({ siteId: 'C', kms: 'uninitialized' });
    bDb = await openTestDb();
    const b = new Kms({ db: bDb, siteId: 'B', policy: 'national' });
    shares = (await b.init({ custodians: custodians.map((x) => ({ name: x.name, publicKey: x.key.publicKey })), threshold: 2 }))
      .shares;
    bKey = (await b.signingPublicKey())!;
    bSigner = b.signingKey()!.key;
  });
  after(async () => {
    await c.close();
    await bDb.close();
  });
  const post = (path: string, body: unknown) =>
    fetch(`${c.base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

  it("keeps site B's wrapped shares at site C and hands them back; deposits are signed by B and write-once", async () => {
    // C (still uninitialized: no KMS of its own yet) takes deposits only from sites it trusts.
    const untrusted = await post('/kms/shares', shares[0]);
    assert.equal(untrusted.status, 403);
    assert.match(
      ((await untrusted.json()) as { message: string }).message,
      /site B is not trusted here: register its service key first \(medmesh peers trust\)/,
    );
    await c.site.identity.registerService({ id: 'B', kind: 'site', publicKey: bKey });
    const squatted = await post('/kms/shares', signShare({ ...shares[1]!, sealed: shares[0]!.sealed }, Sm2PrivateKey.generate()));
    assert.equal(squatted.status, 400, 'a share signed by anyone but B is refused');
    for (const s of shares.slice(0, 2)) assert.equal((await post('/kms/shares', s)).status, 204);
    assert.equal((await post('/kms/shares', shares[0])).status, 204, 'the same deposit again is idempotent');
    const forged = { ...shares[0]!, sealed: shares[1]!.sealed };
    const refused = await post('/kms/shares', forged);
    assert.equal(refused.status, 400);
    assert.match(((await refused.json()) as { message: string }).message, /not signed by site B's service key/);
    const other = await post('/kms/shares', signShare(forged, bSigner));
    assert.equal(other.status, 409, 'even B cannot replace a deposit');
    assert.match(((await other.json()) as { message: string }).message, /already deposited a different share 1/);
    assert.equal((await post('/kms/shares', { format: 'something-else' })).status, 400);
    const back = (await (await fetch(`${c.base}/kms/shares?owner=B`)).json()) as WrappedShare[];
    assert.deepEqual(
      back.map((s) => s.index),
      [1, 2],
    );
    const alice = custodians[0]!.key;
    assert.equal(unwrapShare(back[0]!, alice).index, 1, 'the custodian opens the share fetched from the other site');
    const ownerless = await fetch(`${c.base}/kms/shares`);
    assert.equal(ownerless.status, 400);
    assert.deepEqual(await ownerless.json(), {
      code: 'bad-request',
      message: 'querystring.owner: the site whose shares to list, required',
      issues: ['querystring.owner: the site whose shares to list, required'],
    });
  });

  it('reports an uninitialized KMS and refuses unseal attempts with the reason', async () => {
    const status = (await (await fetch(`${c.base}/kms/status`)).json()) as { initialized: boolean };
    assert.equal(status.initialized, false);
    const token = encodeShareToken(unwrapShare(shares[0]!, custodians[0]!.key));
    const r = await post('/kms/unseal', { share: token });
    assert.equal(r.status, 409);
    assert.equal(((await r.json()) as { code: string }).code, 'not-initialized');
    const malformed = await post('/kms/unseal', { share: 42 });
    assert.equal(malformed.status, 400);
    assert.match(((await malformed.json()) as { message: string }).message, /^body\.share: a master key share/);
    const notShare = await post('/kms/unseal', { share: 'mmshare1.nope' });
    assert.equal(notShare.status, 400);
    assert.equal(((await notShare.json()) as { code: string }).code, 'bad-share', "the form of a share is the KMS's to check");
    const health = (await (await fetch(`${c.base}/healthz`)).json()) as { kms: { initialized: boolean; sealed: boolean } };
    assert.deepEqual([health.kms.initialized, health.kms.sealed], [false, true]);
  });
});
