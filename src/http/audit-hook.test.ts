// Every FHIR access is in the audit log before the answer leaves; a sealed site serves no data.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { testBackend } from '../db/test-db.ts';
import { verifyAuditLog } from '../security/audit/index.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

describe(`audit of every access (${testBackend()})`, () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer();
  });
  after(() => s.close());

  const entries = async () => {
    const { rows } = await s.db.query<{ entry: Uint8Array }>('SELECT entry FROM audit_entry ORDER BY seq');
    return rows.map((r) => JSON.parse(Buffer.from(r.entry).toString('utf8')) as Record<string, unknown>);
  };

  it('records reads, searches, writes and failures with who, what, where and the outcome', async () => {
    const created = await fetch(`${s.fhir}/Organization`, {
      method: 'POST',
      headers: {
        ...s.auth,
        'content-type': 'application/fhir+json',
        'x-medmesh-terminal': 'ward-3-pc-12',
        'x-client-mac': '00:1a:2b:3c:4d:5e',
      },
      body: JSON.stringify({ resourceType: 'Organization', name: 'x' }),
    });
    const id = ((await created.json()) as { id: string }).id;
    await (await fetch(`${s.fhir}/Organization/${id}`, { headers: s.auth })).arrayBuffer();
    await (await fetch(`${s.fhir}/Organization?name=x`, { headers: s.auth })).arrayBuffer();
    await (await fetch(`${s.fhir}/Organization/nope`, { headers: s.auth })).arrayBuffer();
    await (await fetch(`${s.fhir}/Organization/nope`)).arrayBuffer();
    await (await fetch(`${s.fhir}/metadata`)).arrayBuffer();
    const log = await entries();
    assert.deepEqual(
      log.map((e) => [e.action, e.resource, e.outcome]),
      [
        ['create', `Organization/${id}`, 'allow'],
        ['read', `Organization/${id}`, 'allow'],
        ['search', 'Organization', 'allow'],
        ['read', 'Organization/nope', 'failure'],
        ['read', 'Organization/nope', 'deny'],
      ],
    );
    assert.deepEqual(
      [log[0]!.terminal, log[0]!.macAddress, log[0]!.sourceIp, (log[0]!.actor as { id: string }).id, log[0]!.purpose],
      ['ward-3-pc-12', '00:1a:2b:3c:4d:5e', '127.0.0.1', 'test-integration', 'treatment'],
    );
    assert.equal((log[4]!.actor as { kind: string }).kind, 'anonymous', 'an anonymous attempt is recorded too');
    const cp = await s.site.audit()!.checkpoint();
    assert.equal(cp?.treeSize, 5);
    const report = await verifyAuditLog(s.db, {
      macKey: s.site.kms.deriveSecret('audit-entry-mac'),
      signers: [s.site.kms.signingKey()!.key.publicKey],
    });
    assert.equal(report.ok, true);
  });

  it('serves no clinical data while sealed, and says how to fix it', async () => {
    const auth = s.auth;
    s.site.kms.seal();
    const r = await fetch(`${s.fhir}/Organization`, { headers: auth });
    assert.equal(r.status, 503);
    assert.match(JSON.stringify(await r.json()), /sealed.*data is served only while every access can be/);
    assert.equal((await fetch(`${s.fhir}/metadata`)).status, 200, 'capabilities stay public');
  });
});
