// The KMS HTTP surface between sites and for operators; runs on PGlite and PostgreSQL.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { openTestDb, testBackend } from '../db/test-db.ts';
import type { Db } from '../db/index.ts';
import { Sm2PrivateKey } from '../security/crypto/index.ts';
import { encodeShareToken, Kms, unwrapShare, type WrappedShare } from '../security/kms/index.ts';
import { startTestServer, type TestServer } from './testing.ts';

describe(`KMS HTTP (${testBackend()})`, () => {
  let c: TestServer;
  let bDb: Db;
  let shares: WrappedShare[];
  const custodians = ['alice', 'bob', 'carol'].map((name) => ({ name, key: Sm2PrivateKey.generate() }));
  before(async () => {
    c = await startTestServer({ siteId: 'C', kms: 'uninitialized' });
    bDb = await openTestDb();
    const b = new Kms({ db: bDb, siteId: 'B', policy: 'national' });
    shares = (await b.init({ custodians: custodians.map((x) => ({ name: x.name, publicKey: x.key.publicKey })), threshold: 2 })).shares;
  });
  after(async () => {
    await c.close();
    await bDb.close();
  });
  const post = (path: string, body: unknown) => fetch(`${c.base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

  it('keeps site B\'s wrapped shares at site C and hands them back; deposits are write-once', async () => {
    for (const s of shares.slice(0, 2)) assert.equal((await post('/kms/shares', s)).status, 204);
    assert.equal((await post('/kms/shares', shares[0])).status, 204, 'the same deposit again is idempotent');
    const forged = { ...shares[0]!, sealed: shares[1]!.sealed };
    const refused = await post('/kms/shares', forged);
    assert.equal(refused.status, 409);
    assert.match(((await refused.json()) as { message: string }).message, /already deposited a different share 1/);
    assert.equal((await post('/kms/shares', { format: 'something-else' })).status, 400);
    const back = (await (await fetch(`${c.base}/kms/shares?owner=B`)).json()) as WrappedShare[];
    assert.deepEqual(back.map((s) => s.index), [1, 2]);
    const alice = custodians[0]!.key;
    assert.equal(unwrapShare(back[0]!, alice).index, 1, 'the custodian opens the share fetched from the other site');
    assert.equal((await fetch(`${c.base}/kms/shares`)).status, 400);
  });

  it('reports an uninitialized KMS and refuses unseal attempts with the reason', async () => {
    const status = (await (await fetch(`${c.base}/kms/status`)).json()) as { initialized: boolean };
    assert.equal(status.initialized, false);
    const token = encodeShareToken(unwrapShare(shares[0]!, custodians[0]!.key));
    const r = await post('/kms/unseal', { share: token });
    assert.equal(r.status, 409);
    assert.equal(((await r.json()) as { error: string }).error, 'not-initialized');
    const health = (await (await fetch(`${c.base}/healthz`)).json()) as { kms: { initialized: boolean; sealed: boolean } };
    assert.deepEqual([health.kms.initialized, health.kms.sealed], [false, true]);
  });
});
