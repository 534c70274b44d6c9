// Auditors' side of the log: the FHIR AuditEvent view, the compliance report (JSON and
// printable HTML), checkpoints, proofs a peer can check, and cosignatures by another site.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { AuditEvent, Bundle, OperationOutcome, Patient } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { cosign, verifyConsistency, verifyInclusion } from '../security/audit/index.ts';
import { Sm2PrivateKey } from '../security/crypto/index.ts';
import { serviceAssertion } from '../security/identity/index.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

describe(`audit routes (${testBackend()})`, () => {
  let s: TestServer;
  let patient: Patient;
  let auditor: Record<string, string>;
  const json = async <T>(path: string, headers: Record<string, string>, init: RequestInit = {}) => {
    const r = await fetch(`${s.base}${path}`, {
      ...init,
      headers: { ...headers, ...(init.body ? { 'content-type': 'application/json' } : {}) },
    });
    return {
      status: r.status,
      type: r.headers.get('content-type') ?? '',
      text: await r.text(),
      get json(): T {
        return JSON.parse(this.text) as T;
      },
    };
  };

  before(async () => {
    s = await startTestServer();
    auditor = s.as(['auditor'], {}, { purpose: 'audit' });
    const created = await fetch(`${s.fhir}/Patient`, {
      method: 'POST',
      headers: { ...s.auth, 'content-type': 'application/fhir+json' },
      body: JSON.stringify({
        resourceType: 'Patient',
        name: [{ family: '赵' }],
        identifier: [
          {
            system: 'urn:oid:2.16.156.10011.1.3',
            value: makeResidentId({ divisionCode: '440104', birthDate: '1970-01-01', sequence: 3 }),
          },
        ],
      }),
    });
    patient = (await created.json()) as Patient;
    const doctor = s.as(['doctor'], { department: 'neurology' }, { userId: 'dr-ma' });
    assert.equal((await fetch(`${s.fhir}/Patient/${patient.id}`, { headers: doctor })).status, 403);
    const glass = await fetch(`${s.base}/access/break-glass`, {
      method: 'POST',
      headers: { ...doctor, 'content-type': 'application/json' },
      body: JSON.stringify({ patient: patient.id, reason: 'collapsed <script>alert(1)</script> in the lobby' }),
    });
    assert.equal(glass.status, 201);
    assert.equal(
      (await fetch(`${s.fhir}/Patient/${patient.id}`, { headers: { ...doctor, 'x-medmesh-purpose': 'emergency' } })).status,
      200,
    );
    await s.site.audit()!.checkpoint();
  });
  after(() => s.close());

  it('serves the log as FHIR AuditEvent resources, searchable, to auditors only', async () => {
    const denied = await json<Bundle>('/fhir/R4/AuditEvent?outcome=deny&agent=dr-ma', auditor);
    assert.equal(denied.status, 200);
    const events = denied.json.entry!.map((e) => e.resource as AuditEvent);
    assert.equal(events.length, 1);
    assert.equal(events[0]!.outcome, '4');
    assert.equal(events[0]!.entity?.[0]?.what?.reference, `Patient/${patient.id}`);
    const emergency = await json<Bundle>(`/fhir/R4/AuditEvent?purpose=emergency&entity=Patient/${patient.id}`, auditor);
    const e = emergency.json.entry![0]!.resource as AuditEvent;
    assert.equal(e.purposeOfEvent?.[0]?.coding?.[0]?.code, 'ETREAT');
    assert.ok(e.entity?.[0]?.detail?.some((d) => d.type === 'break-glass' && /collapsed/.test(d.valueString ?? '')));
    const one = await json<AuditEvent>(`/fhir/R4/AuditEvent/${e.id!}`, auditor);
    assert.deepEqual(one.json, e);
    const recent = await json<Bundle>(
      `/fhir/R4/AuditEvent?date=ge${new Date(Date.now() - 3_600_000).toISOString()}&_count=2`,
      auditor,
    );
    assert.equal(recent.json.entry?.length, 2, 'the date filter keeps this hour, _count pages it');
    assert.equal(
      (await json<Bundle>('/fhir/R4/AuditEvent?date=lt2020-01-01', auditor)).json.entry?.length ?? 0,
      0,
      'nothing before the site existed',
    );
    const paged = await json<Bundle>('/fhir/R4/AuditEvent?_count=1&agent=dr-ma', auditor);
    assert.match(paged.json.link!.find((l) => l.relation === 'next')!.url, /agent=dr-ma.*_offset=1/);
    assert.equal((await json('/fhir/R4/AuditEvent?who=x', auditor)).status, 400);
    assert.equal((await json('/fhir/R4/AuditEvent/999999', auditor)).status, 404);
    assert.equal((await json('/fhir/R4/AuditEvent', s.as(['nurse']))).status, 403);
  });

  it('hands out checkpoints and proofs a peer can check, and keeps its cosignature', async () => {
    const siteC = Sm2PrivateKey.generate();
    await s.site.identity.registerService({ id: 'C', kind: 'site', publicKey: siteC.publicKey });
    const peer = { authorization: `MedmeshService ${serviceAssertion({ serviceId: 'C', key: siteC, site: 'B' })}` };
    const c1 = await json<{ treeSize: number; root: string; statement: string }>('/audit/checkpoint', peer);
    assert.equal(c1.status, 200);
    const inc = await json<{ leafHash: string; proof: string[] }>(
      `/audit/proof/inclusion?seq=0&treeSize=${c1.json.treeSize}`,
      peer,
    );
    assert.ok(
      verifyInclusion(
        Buffer.from(inc.json.leafHash, 'hex'),
        0,
        c1.json.treeSize,
        inc.json.proof.map((h) => Buffer.from(h, 'hex')),
        Buffer.from(c1.json.root, 'hex'),
      ),
    );
    await s.site.audit()!.checkpoint();
    const c2 = await json<{ treeSize: number; root: string }>('/audit/checkpoint', peer);
    assert.ok(c2.json.treeSize > c1.json.treeSize);
    const cons = await json<{ proof: string[] }>(
      `/audit/proof/consistency?from=${c1.json.treeSize}&to=${c2.json.treeSize}`,
      peer,
    );
    assert.ok(
      verifyConsistency(
        c1.json.treeSize,
        c2.json.treeSize,
        Buffer.from(c1.json.root, 'hex'),
        Buffer.from(c2.json.root, 'hex'),
        cons.json.proof.map((h) => Buffer.from(h, 'hex')),
      ),
    );
    const body = (sig: Buffer) =>
      JSON.stringify({ treeSize: c1.json.treeSize, signature: sig.toString('base64'), publicKey: siteC.publicKey.toPem() });
    assert.equal(
      (await json('/audit/cosignatures', peer, { method: 'POST', body: body(cosign('something else', siteC)) })).status,
      400,
    );
    assert.equal(
      (await json('/audit/cosignatures', peer, { method: 'POST', body: body(cosign(c1.json.statement, siteC)) })).status,
      201,
    );
    const { rows } = await s.db.query<{ site: string }>('SELECT site FROM audit_cosignature WHERE tree_size = $1', [
      c1.json.treeSize,
    ]);
    assert.deepEqual(
      rows.map((r) => r.site),
      ['C'],
    );
    assert.equal(
      (await json('/audit/cosignatures', auditor, { method: 'POST', body: body(cosign(c1.json.statement, siteC)) })).status,
      403,
      'only sites cosign',
    );
    assert.equal((await json('/audit/proof/inclusion?seq=5&treeSize=2', peer)).status, 400);
  });

  it('400 for a malformed request, naming the path: an OperationOutcome under /fhir, {code, message} elsewhere', async () => {
    const problem = async (path: string, headers: Record<string, string>, init: RequestInit = {}) => {
      const r = await json<{ code: string; message: string }>(path, headers, init);
      assert.equal(r.status, 400, `${path}: ${r.text}`);
      assert.equal(r.json.code, 'bad-request', path);
      return r.json.message;
    };
    assert.match(await problem('/audit/proof/inclusion?seq=x&treeSize=2', auditor), /^querystring\.seq: an integer >= 0$/);
    assert.match(await problem('/audit/proof/consistency?from=1', auditor), /^querystring\.to: a tree size$/);
    assert.match(await problem('/audit/report?from=soon&to=2026-12-01', auditor), /^querystring\.from: a date or an instant$/);
    assert.match(
      await problem('/audit/report?from=2026-11-01&to=2026-12-01&format=pdf', auditor),
      /^querystring\.format: html \(printable\) or json$/,
    );
    assert.match(await problem('/audit/witness/B', auditor), /^querystring\.nonce: 8-128 letters, digits, _ or -$/);
    const siteD = Sm2PrivateKey.generate();
    await s.site.identity.registerService({ id: 'D', kind: 'site', publicKey: siteD.publicKey });
    const peer = { authorization: `MedmeshService ${serviceAssertion({ serviceId: 'D', key: siteD, site: 'B' })}` };
    assert.match(
      await problem('/audit/cosignatures', peer, { method: 'POST', body: JSON.stringify({ treeSize: -1, signature: 'AA==' }) }),
      /^body\.treeSize: /,
    );
    // Under /fhir the refusal is an OperationOutcome, the schema's path in its diagnostics.
    const badId = await json<OperationOutcome>('/fhir/R4/AuditEvent/no_such_id', auditor);
    assert.equal(badId.status, 400);
    assert.match(badId.type, /^application\/fhir\+json/);
    assert.equal(badId.json.issue[0]!.code, 'invalid');
    assert.match(badId.json.issue[0]!.diagnostics ?? '', /^params\.id: a FHIR id$/);
    const unknown = await json<OperationOutcome>('/fhir/R4/AuditEvent?who=x', auditor);
    assert.equal(unknown.status, 400);
    assert.match(unknown.json.issue[0]!.diagnostics ?? '', /AuditEvent search parameter who is not supported/);
    const missing = await json<OperationOutcome>('/fhir/R4/AuditEvent/999999', auditor);
    assert.deepEqual(
      [missing.status, missing.json.issue[0]!.code, missing.json.issue[0]!.diagnostics],
      [404, 'not-found', 'AuditEvent/999999 not found'],
    );
  });

  it('reports a period: accesses per role, break-glass uses, denials, verification; printable HTML', async () => {
    const from = new Date(Date.now() - 3_600_000).toISOString();
    const to = new Date(Date.now() + 3_600_000).toISOString();
    const r = await json<{
      totals: { deny: number };
      accessesByRole: Array<{ role: string; allow: number; deny: number }>;
      breakGlass: Array<{ user: string; accessesUnderIt: number; reason: string }>;
      denied: Array<{ user: string }>;
      verification: { ok: boolean; entries: number };
    }>(`/audit/report?from=${from}&to=${to}&format=json`, auditor);
    assert.equal(r.status, 200);
    const doctor = r.json.accessesByRole.find((x) => x.role === 'doctor')!;
    assert.ok(doctor.allow >= 1 && doctor.deny === 1, JSON.stringify(doctor));
    assert.deepEqual(
      r.json.breakGlass.map((b) => [b.user, b.accessesUnderIt]),
      [['dr-ma', 1]],
    );
    assert.ok(r.json.denied.some((d) => d.user === 'dr-ma'));
    assert.equal(r.json.verification.ok, true);
    const html = await json(`/audit/report?from=${from}&to=${to}`, auditor);
    assert.match(html.type, /text\/html/);
    assert.match(html.text, /INTACT/);
    assert.match(html.text, /@page/);
    assert.ok(!html.text.includes('<script>alert(1)</script>') && html.text.includes('&#60;script&#62;'), 'user text is escaped');
    assert.equal((await json(`/audit/report?from=${to}&to=${from}`, auditor)).status, 400);
    assert.equal((await json(`/audit/report?from=${from}&to=${to}`, s.as(['doctor']))).status, 403);
    await s.db.transaction(async (tx) => {
      await tx.query('SET LOCAL session_replication_role = replica');
      await tx.query(
        "UPDATE audit_entry SET entry = convert_to(replace(convert_from(entry, 'UTF8'), 'deny', 'allow'), 'UTF8') WHERE seq = 1",
      );
    });
    assert.match((await json(`/audit/report?from=${from}&to=${to}`, auditor)).text, /TAMPERED.*Entries failing their MAC: 1\b/s);
  });
});
