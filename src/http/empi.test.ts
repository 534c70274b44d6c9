// The EMPI directory across sites: a patient registered at B can be found by resident ID at
// the public cloud A, which never holds the patient: only its blind index and home shard
// travel. A site without the region's key says so; bad input and strangers are refused.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { Puller } from '../replication/index.ts';
import { pullUntilCaughtUp } from '../replication/testing.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
const REGION_KEY = Buffer.from('7f3a9c2e5b1d4a6f8e0c2b4d6a8f1e3c', 'hex');

describe(`EMPI directory (${testBackend()})`, () => {
  let a: TestServer;
  let b: TestServer;
  let c: TestServer;
  before(async () => {
    [a, b, c] = [
      await startTestServer({ siteId: 'A' }),
      await startTestServer({ siteId: 'B' }),
      await startTestServer({ siteId: 'C' }),
    ];
    for (const s of [a, b]) {
      await s.site.kms.createKey('empi-blind-index', { material: REGION_KEY });
      await s.site.refreshEmpiKey();
    }
    await a.site.identity.registerService({ id: 'B', kind: 'site', publicKey: b.site.kms.signingKey()!.key.publicKey });
    await b.site.identity.registerService({ id: 'A', kind: 'site', publicKey: a.site.kms.signingKey()!.key.publicKey });
  });
  after(async () => {
    for (const s of [a, b, c]) await s.close();
  });

  const lookup = (s: TestServer, body: unknown, headers = s.as(['registrar'])) =>
    fetch(`${s.base}/empi/lookup`, {
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });

  it('finds a patient by resident ID at a site that does not hold the patient', async () => {
    const rid = makeResidentId({ divisionCode: '440106', birthDate: '1992-02-02', sequence: 77 });
    const created = await fetch(`${b.fhir}/Patient`, {
      method: 'POST',
      headers: { ...b.auth, 'content-type': 'application/fhir+json' },
      body: JSON.stringify({
        resourceType: 'Patient',
        name: [{ family: '冯', given: ['敏'] }],
        identifier: [{ system: RID, value: rid }],
      }),
    });
    assert.equal(created.status, 201);
    const id = ((await created.json()) as { id: string }).id;
    const pull = new Puller({
      peer: { id: 'B', url: b.base },
      key: () => a.site.kms.signingKey()?.key,
      peerKey: () => a.site.identity.servicePublicKey('B'),
      waitSeconds: 0,
      apply: { db: a.db, siteId: 'A', region: a.site.ctx.region, clock: a.site.ctx.clock, records: a.site.ctx },
    });
    await pullUntilCaughtUp(b, a, 'B', () => pull.pullOnce());
    const r = await lookup(a, { system: RID, value: rid });
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { patients: [{ patientId: id, homeShard: 'guangzhou', activeSite: 'B' }] });
    assert.equal(
      (await fetch(`${a.fhir}/Patient/${id}`, { headers: a.auth })).status,
      404,
      'A routes the patient but does not hold it',
    );
    const { rows } = await a.db.query<{ content: string }>(
      "SELECT content::text AS content FROM resource_history WHERE resource_type = 'EmpiEntry' AND id = $1",
      [id],
    );
    assert.ok(
      rows[0] && !rows[0].content.includes(rid) && !rows[0].content.includes('冯'),
      'neither the identifier nor the name travels',
    );
    const none = await lookup(a, {
      system: RID,
      value: makeResidentId({ divisionCode: '440106', birthDate: '1992-02-02', sequence: 78 }),
    });
    assert.deepEqual(await none.json(), { patients: [] });
    // Registered together (grouped into one statement at B): each is found by its own identifier.
    const rids = [1, 2, 3, 4, 5, 6].map((n) => makeResidentId({ divisionCode: '440104', birthDate: '1960-06-06', sequence: n }));
    const burst = await Promise.all(
      rids.map((value) => b.site.store.create('Patient', { resourceType: 'Patient', identifier: [{ system: RID, value }] })),
    );
    assert.ok(
      burst.every((m) => m.ok),
      JSON.stringify(burst.find((m) => !m.ok)),
    );
    await pullUntilCaughtUp(b, a, 'B', () => pull.pullOnce());
    for (const [i, m] of burst.entries()) {
      for (const at of [a, b]) {
        const found = (await (await lookup(at, { system: RID, value: rids[i]! })).json()) as {
          patients: Array<{ patientId: string }>;
        };
        assert.deepEqual(
          found.patients.map((p) => p.patientId),
          [m.ok ? m.value.resource.id : ''],
          `found at ${at.site.siteId}`,
        );
      }
    }
    // Single and grouped writes at B, applies at A alike: the entries are history rows only.
    const burstIds: string[] = burst.flatMap((m) => (m.ok ? [m.value.resource.id!] : []));
    for (const at of [a, b]) {
      const { rows: counted } = await at.db.query<{ current: number; history: number }>(
        `SELECT (SELECT count(*)::int FROM resource_current WHERE resource_type = 'EmpiEntry') AS current,
                (SELECT count(*)::int FROM resource_history WHERE resource_type = 'EmpiEntry' AND id = ANY($1)) AS history`,
        [burstIds],
      );
      assert.deepEqual(counted[0], { current: 0, history: 6 }, `at ${at.site.siteId}`);
    }
  });

  it('says when the region key is missing, and refuses bad input and strangers', async () => {
    const missing = await lookup(c, { system: RID, value: '440106199202020771' });
    assert.equal(missing.status, 503);
    const missingBody = (await missing.json()) as { code: string; message: string };
    assert.equal(missingBody.code, 'empi-key-missing');
    assert.match(missingBody.message, /medmesh keys create --name empi-blind-index --material/);
    assert.equal(
      (await lookup(a, { system: 'urn:other', value: 'x' })).status,
      400,
      'only the regional identifier systems are indexed',
    );
    const partial = await lookup(a, { system: RID });
    assert.equal(partial.status, 400);
    assert.deepEqual(await partial.json(), {
      code: 'bad-request',
      message: 'body.value: Invalid input: expected string, received undefined',
      issues: ['body.value: Invalid input: expected string, received undefined'],
    });
    const extra = (await (await lookup(a, { system: RID, value: 'x'.repeat(101), name: '冯' })).json()) as { message: string };
    assert.match(extra.message, /^body\.value: .*; body: Unrecognized key: "name"$/);
    assert.equal((await lookup(a, { system: RID, value: 'x' }, {})).status, 401);
    assert.equal((await lookup(a, { system: RID, value: 'x' }, a.as(['researcher']))).status, 403);
  });

  it('answers a user only when their FHIR search by identifier would: one rule for both paths', async () => {
    const value = makeResidentId({ divisionCode: '440104', birthDate: '1951-03-03', sequence: 41 });
    const created = await b.site.store.create('Patient', { resourceType: 'Patient', identifier: [{ system: RID, value }] });
    assert.ok(created.ok);
    const nurse = b.as(['nurse'], { department: 'cardiology' });
    const search = (headers: Record<string, string>) =>
      fetch(`${b.fhir}/Patient?identifier=${encodeURIComponent(`${RID}|${value}`)}`, { headers });
    const refusedSearch = await search(nurse);
    assert.equal(refusedSearch.status, 403, 'FHIR search by a masked identifier is refused to the nurse');
    const refused = await lookup(b, { system: RID, value }, nurse);
    assert.equal(refused.status, 403, 'and so is the directory');
    assert.equal((await lookup(b, { value: 42 }, nurse)).status, 403, 'whatever the body: may not search is said first');
    assert.equal(
      ((await refused.json()) as { message: string }).message,
      ((await refusedSearch.json()) as { issue: Array<{ diagnostics: string }> }).issue[0]!.diagnostics,
      'for the same reason',
    );
    assert.equal((await lookup(b, { system: RID, value }, b.as(['administrator']))).status, 403, 'no patient search, no lookup');
    // The same patients as the search: a doctor's search finds none outside their care, nor does the lookup.
    for (const [role, n] of [
      ['registrar', 1],
      ['doctor', 0],
      ['integration', 1],
    ] as const) {
      const headers = b.as([role], { department: 'cardiology' });
      const r = await lookup(b, { system: RID, value }, headers);
      assert.equal(r.status, 200, `${role}: ${r.status === 200 ? '' : await r.clone().text()}`);
      assert.equal(((await r.json()) as { patients: unknown[] }).patients.length, n, role);
      const found = (await (await search(headers)).json()) as { entry?: unknown[] };
      assert.equal(found.entry?.length ?? 0, n, `${role}: the FHIR search finds as many`);
    }
    // Change the nurse policy: the same function now lets both paths answer.
    const admin = { ...b.as(['administrator']), 'content-type': 'application/json' };
    const history = (await (await fetch(`${b.base}/access/policies/nurse/_history`, { headers: admin })).json()) as Array<{
      body: { rules: Array<{ fields?: Record<string, string> }> };
    }>;
    const policy = history[0]!.body;
    policy.rules[0]!.fields = { ...policy.rules[0]!.fields, identifier: 'allow' };
    const put = await fetch(`${b.base}/access/policies/nurse`, { method: 'PUT', headers: admin, body: JSON.stringify(policy) });
    assert.equal(put.status, 200);
    assert.equal((await search(nurse)).status, 200);
    assert.equal((await lookup(b, { system: RID, value }, nurse)).status, 200);
  });
});
