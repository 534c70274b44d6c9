// Access control end to end: roles, care relationship, field rules, masking scenarios,
// break-glass, grants, policies as data, and that every attempt is audited.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type {
  Address,
  Bundle,
  BundleEntry,
  ContactPoint,
  HumanName,
  Identifier,
  Observation,
  OperationOutcome,
  Patient,
} from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { AGE_BAND_URL, DIVISION_SYSTEM, PSEUDONYM_SYSTEM } from '../security/access/index.ts';
import { Sm2PrivateKey } from '../security/crypto/index.ts';
import { signToken, type TokenClaims } from '../security/identity/index.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';
import { applyVersions, recordEpochCuts } from '../records/index.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
const FHIR = { 'content-type': 'application/fhir+json' };
const JSON_BODY = { 'content-type': 'application/json' };
/** What the tests read from a response: a Bundle, a Patient, an OperationOutcome or an admin answer. */
type Answer = Record<string, unknown> & {
  entry?: BundleEntry[];
  total?: number;
  issue?: OperationOutcome['issue'];
  id?: string;
  version?: number;
  identifier?: Identifier[];
  telecom?: ContactPoint[];
  address?: Address[];
  name?: HumanName[];
  contact?: unknown;
};

describe(`access control (${testBackend()})`, () => {
  let s: TestServer;
  let a: Patient; // in cardiology's care
  let b: Patient; // nobody's patient
  let obsA: Observation;
  const ridA = makeResidentId({ divisionCode: '440104', birthDate: '1960-05-05', sequence: 17 });
  let doctor: Record<string, string>;
  let nurse: Record<string, string>;
  let admin: Record<string, string>;

  const call = async (method: string, path: string, headers: Record<string, string>, body?: unknown) => {
    const res = await fetch(`${s.base}${path}`, {
      method,
      headers: body === undefined ? headers : { ...FHIR, ...headers },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await res.text();
    return { status: res.status, json: (text ? JSON.parse(text) : {}) as Answer };
  };
  const get = (path: string, headers: Record<string, string>) => call('GET', `/fhir/R4${path}`, headers);
  const diag = (r: { json: Answer }) => r.json.issue?.map((i) => i.diagnostics).join(' ') ?? '';
  const auditTail = async (n: number) => {
    await s.site.audit()!.checkpoint(); // flushes pending appends
    const { rows } = await s.db.query<{ entry: Uint8Array }>('SELECT entry FROM audit_entry ORDER BY seq DESC LIMIT $1', [n]);
    return rows.map((r) => JSON.parse(Buffer.from(r.entry).toString('utf8')) as Record<string, unknown>).reverse();
  };

  before(async () => {
    s = await startTestServer();
    const w = async <T>(type: string, body: unknown) => {
      const r = await call('POST', `/fhir/R4/${type}`, s.auth, body);
      assert.equal(r.status, 201, JSON.stringify(r.json));
      return r.json as unknown as T;
    };
    a = await w<Patient>('Patient', {
      resourceType: 'Patient',
      name: [{ family: '张', given: ['小明'] }],
      gender: 'male',
      birthDate: '1960-05-05',
      identifier: [{ system: RID, value: ridA }],
      telecom: [{ system: 'phone', value: '13812345678' }],
      address: [{ line: ['天河路 1 号'], city: '广州市', district: '天河区', postalCode: '510000' }],
      contact: [{ name: { text: '张大明' } }],
    });
    b = await w<Patient>('Patient', {
      resourceType: 'Patient',
      name: [{ family: '李', given: ['四'] }],
      gender: 'female',
      birthDate: '1985-02-03',
      identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440106', birthDate: '1985-02-03', sequence: 20 }) }],
    });
    await w('Encounter', {
      resourceType: 'Encounter',
      status: 'finished',
      class: { code: 'AMB' },
      subject: { reference: `Patient/${a.id}` },
      serviceProvider: { reference: 'Organization/cardiology' },
    });
    obsA = await w<Observation>('Observation', {
      resourceType: 'Observation',
      status: 'final',
      code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
      subject: { reference: `Patient/${a.id}` },
      valueQuantity: { value: 72 },
    });
    await w('Observation', {
      resourceType: 'Observation',
      status: 'final',
      code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
      subject: { reference: `Patient/${b.id}` },
      valueQuantity: { value: 80 },
    });
    doctor = s.as(['doctor'], { department: 'cardiology' });
    nurse = s.as(['nurse'], { department: 'cardiology' });
    admin = s.as(['administrator'], {}, { userId: 'test-admin' });
  });
  after(() => s.close());

  it('lets a doctor see the patients in their care and nothing else: reads, searches, counts, history, Bundles', async () => {
    assert.equal((await get(`/Patient/${a.id}`, doctor)).status, 200);
    const denied = await get(`/Patient/${b.id}`, doctor);
    assert.equal(denied.status, 403);
    assert.match(diag(denied), /outside your care relationship.*break-glass/);
    const found = await get('/Patient?_count=100', doctor);
    assert.deepEqual(
      found.json.entry?.map((e) => e.resource!.id),
      [a.id],
    );
    assert.equal((await get('/Patient?_summary=count', doctor)).json.total, 1, 'counts never include hidden rows');
    assert.equal((await get('/Observation?code=http://loinc.org|8867-4&_total=accurate', doctor)).json.total, 1);
    assert.equal(
      (await get(`/Observation?subject=Patient/${b.id}`, doctor)).json.entry?.length ?? 0,
      0,
      'asking by the hidden patient finds nothing',
    );
    const typeHistory = await get('/Observation/_history', doctor);
    assert.deepEqual([...new Set(typeHistory.json.entry?.map((e) => e.resource?.id))], [obsA.id], 'no history side door');
    assert.equal((await get(`/Patient/${b.id}/_history`, doctor)).status, 403);
    assert.equal((await get(`/Patient/${b.id}/_history/${b.meta!.versionId}`, doctor)).status, 403);
    assert.equal((await get(`/Observation?_include=Observation:subject`, doctor)).status, 400, 'no _include side door');
    assert.equal((await get(`/Observation?_revinclude=Observation:subject`, doctor)).status, 400);
    const batch = await call('POST', '/fhir/R4', doctor, {
      resourceType: 'Bundle',
      type: 'batch',
      entry: [
        { request: { method: 'GET', url: `Patient/${b.id}` } },
        { request: { method: 'GET', url: `Patient/${a.id}` } },
        { request: { method: 'GET', url: 'Patient?_summary=count' } },
      ],
    });
    assert.deepEqual(
      batch.json.entry?.map((e) => e.response?.status),
      ['403', '200', '200'],
    );
    assert.equal((batch.json.entry?.[2]?.resource as Bundle).total, 1);
    const before = await s.counts();
    const tx = await call('POST', '/fhir/R4', doctor, {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        {
          resource: {
            resourceType: 'Observation',
            status: 'final',
            code: { text: 'x' },
            subject: { reference: `Patient/${a.id}` },
          },
          request: { method: 'POST', url: 'Observation' },
        },
        { resource: { ...b, gender: 'male' }, request: { method: 'PUT', url: `Patient/${b.id}` } },
      ],
    });
    assert.equal(tx.status, 403);
    assert.deepEqual(await s.counts(), before, 'a transaction with one refused entry writes nothing');
    const conditional = await call(
      'POST',
      '/fhir/R4/Observation',
      { ...doctor, 'if-none-exist': `subject=Patient/${b.id}` },
      { resourceType: 'Observation', status: 'final', code: { text: 'probe' }, subject: { reference: `Patient/${b.id}` } },
    );
    assert.equal(conditional.status, 403, 'conditional create is no side door either');
  });

  it('masks and hides fields for a nurse, refuses searches that probe them, keeps stored values on write', async () => {
    const r = await get(`/Patient/${a.id}`, nurse);
    assert.equal(r.status, 200);
    assert.equal(r.json.identifier?.[0]?.value, `${ridA.slice(0, 6)}************`);
    assert.equal(r.json.birthDate, '1960', 'beside a masked resident ID, the birth date is given to the year');
    assert.equal(r.json.telecom?.[0]?.value, '138****5678');
    assert.deepEqual(r.json.address, [{ city: '广州市', district: '天河区' }]);
    assert.equal(r.json.contact, undefined, 'hidden');
    assert.equal(r.json.name?.[0]?.family, '张', 'the name stays for a nurse');
    for (const probe of [`identifier=${ridA}`, 'phone=13812345678', 'address-city=广州市', '_sort=address-city']) {
      const p = await get(`/Patient?${probe}`, nurse);
      assert.equal(p.status, 403, probe);
      assert.match(diag(p), /which is (mask|hidden) for you/);
    }
    assert.equal((await get('/Patient?name=张', nurse)).json.entry?.length, 1);
    assert.equal((await call('PUT', `/fhir/R4/Patient/${a.id}`, nurse, r.json)).status, 403, 'nurses do not edit demographics');
    const mine = await call('POST', '/fhir/R4/Observation', nurse, {
      resourceType: 'Observation',
      status: 'final',
      code: { text: 'pulse' },
      subject: { reference: `Patient/${a.id}` },
      valueQuantity: { value: 70 },
    });
    assert.equal(mine.status, 201);
    assert.equal(
      (
        await call('POST', '/fhir/R4/Observation', nurse, {
          resourceType: 'Observation',
          status: 'final',
          code: { text: 'pulse' },
          subject: { reference: `Patient/${b.id}` },
        })
      ).status,
      403,
    );
    const log = await auditTail(12);
    const read = log.find(
      (e) => e.action === 'read' && e.resource === `Patient/${a.id}` && (e.actor as { role?: string }).role === 'nurse',
    );
    for (const f of ['identifier:partial-id', 'telecom:partial-phone', 'address:partial-address', 'contact:remove'])
      assert.ok((read?.fields as string[] | undefined)?.includes(f), f);
    assert.ok(
      log.some((e) => e.outcome === 'deny' && /phone/.test(String(e.detail))),
      'the probing attempt is audited as a denial',
    );
  });

  it('enforces read-only fields on update and carries masked fields over untouched', async () => {
    const current = (await get(`/Patient/${a.id}`, doctor)).json;
    const changed = await call('PUT', `/fhir/R4/Patient/${a.id}`, doctor, {
      ...current,
      identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440104', birthDate: '1960-05-05', sequence: 19 }) }],
    });
    assert.equal(changed.status, 403);
    assert.match(diag(changed), /Patient.identifier is read-only/);
    const ok = await call('PUT', `/fhir/R4/Patient/${a.id}`, doctor, { ...current, gender: 'male', birthDate: '1960-05-05' });
    assert.equal(ok.status, 200);
    const stored = (await get(`/Patient/${a.id}`, s.auth)).json;
    assert.equal(stored.identifier?.[0]?.value, ridA);
    assert.equal(stored.telecom?.[0]?.value, '13812345678');
  });

  it('gives researchers keyed pseudonyms per project and never an individual record', async () => {
    const p1 = s.as(['researcher'], { project: 'p1' });
    const p2 = s.as(['researcher'], { project: 'p2' });
    const single = await get(`/Patient/${a.id}`, p1);
    assert.equal(single.status, 403);
    assert.match(diag(single), /search-only and de-identified/);
    assert.equal((await get('/Patient?_sort=birthdate', p1)).status, 403, 'sorting by a generalized field would reveal it');
    const one = await get('/Patient?_count=10', p1);
    assert.equal(one.status, 200);
    const pa = one.json.entry!.find((e) => (e.resource as Patient).birthDate === '1960')!.resource as Patient;
    assert.match(pa.id!, /^[0-9a-f]{32}$/);
    assert.notEqual(pa.id, a.id);
    assert.equal(pa.name, undefined);
    assert.equal(pa.telecom, undefined);
    assert.equal(pa.identifier?.[0]?.system, PSEUDONYM_SYSTEM);
    assert.notEqual(pa.identifier?.[0]?.value, ridA);
    assert.deepEqual(pa.address, [{ city: '广州市' }]);
    const again = await get('/Patient?_count=10', p1);
    assert.ok(
      again.json.entry!.some((e) => e.resource!.id === pa.id),
      'stable within a project',
    );
    const other = await get('/Patient?_count=10', p2);
    assert.ok(!other.json.entry!.some((e) => e.resource!.id === pa.id), 'another project cannot link');
    const obs = await get('/Observation?code=http://loinc.org|8867-4', p1);
    assert.ok(
      obs.json.entry!.some((e) => (e.resource as Observation).subject?.reference === `Patient/${pa.id}`),
      'links survive inside the project',
    );
    for (const probe of [`_id=${a.id}`, `identifier=${ridA}`, `subject=Patient/${a.id}`])
      assert.equal((await get(`/${probe.startsWith('subject') ? 'Observation' : 'Patient'}?${probe}`, p1)).status, 403, probe);
    assert.equal((await get('/Patient?_count=1', s.as(['researcher']))).status, 403, 'a researcher without a project has no key');
  });

  it('generalizes for statistics: age bands, birth years gone, 4-digit division codes', async () => {
    const r = await get('/Patient?_count=10', s.as(['regulator']));
    const pa = r.json.entry!.map((e) => e.resource as Patient).find((p) => p.identifier?.[0]?.value === ridA.slice(0, 4))!;
    assert.ok(pa, JSON.stringify(r.json.entry?.map((e) => e.resource)));
    assert.equal(pa.identifier![0]!.system, DIVISION_SYSTEM);
    assert.equal(pa.birthDate, undefined);
    assert.match(String(pa.extension?.find((x) => x.url === AGE_BAND_URL)?.valueString), /^\d+-\d+$/);
    assert.equal(pa.name, undefined);
  });

  it('lets a patient read only their own record', async () => {
    const me = s.as(['patient'], { patient: a.id! });
    assert.equal((await get(`/Patient/${a.id}`, me)).status, 200);
    assert.equal((await get(`/Patient/${b.id}`, me)).status, 403);
    const obs = await get('/Observation?_count=50', me);
    assert.ok(obs.json.entry!.every((e) => (e.resource as Observation).subject?.reference === `Patient/${a.id}`));
    assert.equal(
      (await get('/Patient?_count=1', s.as(['patient']))).status,
      403,
      'a patient account not linked to a record sees nothing',
    );
  });

  it('break-glass: a reason is mandatory, access is temporary, flagged in audit; only roles allowed to may', async () => {
    const other = s.as(['doctor'], { department: 'neurology' }, { userId: 'doctor-neuro' });
    const emergency = { ...other, 'x-medmesh-purpose': 'emergency' };
    assert.equal((await get(`/Patient/${a.id}`, other)).status, 403);
    assert.equal((await get(`/Patient/${a.id}`, emergency)).status, 403, 'emergency purpose without break-glass');
    const short = await call('POST', '/access/break-glass', { ...other, ...JSON_BODY }, { patient: a.id, reason: 'urgent' });
    assert.equal(short.status, 400);
    assert.match(String(short.json.message), /reason/);
    const opened = await call(
      'POST',
      '/access/break-glass',
      { ...other, ...JSON_BODY },
      { patient: a.id, reason: 'unconscious in ED, no relatives reachable', minutes: 30 },
    );
    assert.equal(opened.status, 201);
    assert.equal((await get(`/Patient/${a.id}`, emergency)).status, 200);
    assert.equal((await get(`/Patient/${b.id}`, emergency)).status, 403, 'only the patient broken glass for');
    const withoutPurpose = await get(`/Patient/${a.id}`, other);
    assert.equal(withoutPurpose.status, 403, 'outside the emergency purpose nothing changed');
    assert.match(diag(withoutPurpose), /x-medmesh-purpose: emergency/, 'the refusal names the header break-glass needs');
    const log = await auditTail(6);
    const flagged = log.filter((e) => e.breakGlass);
    assert.ok(flagged.some((e) => e.action === 'break-glass'));
    assert.ok(
      flagged.some(
        (e) => e.action === 'read' && e.resource === `Patient/${a.id}` && e.purpose === 'emergency' && e.outcome === 'allow',
      ),
    );
    await s.db.query(
      `UPDATE access_grant SET valid_from = now() - interval '2 hours', valid_until = now() - interval '1 hour'
        WHERE user_id = 'doctor-neuro'`,
    );
    assert.equal((await get(`/Patient/${a.id}`, emergency)).status, 403, 'an expired break-glass denies');
    const pharmacist = await call(
      'POST',
      '/access/break-glass',
      { ...s.as(['pharmacist']), ...JSON_BODY },
      { patient: a.id, reason: 'unconscious in ED, no relatives reachable' },
    );
    assert.equal(pharmacist.status, 403);
  });

  it('break-glass reaches only the patient it opened, via searches naming it; only those accesses carry its reason', async () => {
    const c = (
      await call('POST', '/fhir/R4/Patient', s.auth, { resourceType: 'Patient', name: [{ family: '王', given: ['五'] }] })
    ).json;
    await call('POST', '/fhir/R4/Encounter', s.auth, {
      resourceType: 'Encounter',
      status: 'finished',
      class: { code: 'AMB' },
      subject: { reference: `Patient/${c.id}` },
      serviceProvider: { reference: 'Organization/emergency-dept' },
    });
    const er = s.as(['doctor'], { department: 'emergency-dept' }, { userId: 'doctor-er' });
    const emergency = { ...er, 'x-medmesh-purpose': 'emergency' };
    const opened = await call(
      'POST',
      '/access/break-glass',
      { ...er, ...JSON_BODY },
      { patient: a.id, reason: 'collapsed in the waiting room, no records here' },
    );
    assert.equal(opened.status, 201);
    const cases: Array<[string, Record<string, string>, number, boolean, string[]?]> = [
      ['/Patient?_count=100', emergency, 403, false],
      [`/Patient?_id=${a.id}`, emergency, 200, true, [a.id!]],
      [`/Observation?patient=${a.id}&_count=1`, emergency, 200, true, [obsA.id!]],
      [`/Observation?subject=Patient/${c.id}`, emergency, 403, false],
      [`/Patient/${c.id}`, emergency, 403, false],
      [`/Patient/${a.id}`, emergency, 200, true],
      ['/Patient?_count=100', er, 200, false, [c.id!]],
      [`/Patient/${c.id}`, er, 200, false],
      [`/Patient/${a.id}`, er, 403, false],
    ];
    for (const [path, headers, status, flagged, ids] of cases) {
      const r = await get(path, headers);
      const what = `${headers['x-medmesh-purpose'] ?? 'treatment'} ${path}`;
      assert.equal(r.status, status, `${what}: ${diag(r)}`);
      if (ids)
        assert.deepEqual(
          r.json.entry?.map((e) => e.resource!.id),
          ids,
          what,
        );
      const [entry] = await auditTail(1);
      assert.equal(entry!.breakGlass !== undefined, flagged, `${what} is ${flagged ? '' : 'not '}audited as break-glass`);
    }
    assert.match(diag(await get('/Patient?_count=100', emergency)), /must name them/);
  });

  it('answers a conflict resolution for a record out of scope with 403, before saying whether it has conflicts', async () => {
    const resolve = (p: Patient) =>
      call('POST', '/conflicts/resolve', { ...doctor, ...JSON_BODY }, { resourceType: 'Patient', id: p.id, resource: { ...p } });
    const refused = await resolve(b);
    assert.equal(refused.status, 403);
    assert.equal(refused.json.code, 'forbidden', 'the JSON error shape, not an OperationOutcome: /conflicts is no FHIR route');
    assert.equal((await resolve(a)).status, 404, 'in scope: no open conflict on it');
    const malformed = await call(
      'POST',
      '/conflicts/resolve',
      { ...doctor, ...JSON_BODY },
      { resourceType: 'Patient', id: 'not an id', resource: [] },
    );
    assert.equal(malformed.status, 400);
    assert.equal(malformed.json.code, 'bad-request');
    assert.deepEqual(malformed.json.issues, [
      'body.id: a FHIR id',
      'body.resource: Invalid input: expected record, received array',
    ]);
    const listed = await call('GET', '/conflicts?resolved=maybe', doctor);
    assert.equal(listed.status, 400);
    assert.match(String(listed.json.message), /^querystring\.resolved: /);
    const unexplained = await call(
      'POST',
      '/conflicts/resolve',
      { ...doctor, ...JSON_BODY, 'x-medmesh-purpose': 'curiosity' },
      {},
    );
    assert.equal(unexplained.status, 400);
    assert.match(String(unexplained.json.message), /^X-Medmesh-Purpose must be one of/, 'the purpose is checked before the body');
  });

  it('lists versions fenced out for review only to those who may read them', async () => {
    // C's unreplicated tail of an ended epoch, for a patient in the doctor's care and for one who is not.
    const tail = async (p: Patient, epoch: number): Promise<string> => {
      const { rows } = await s.site.ctx.db.query<{ hlc: string; shard: string }>(
        "SELECT hlc::text AS hlc, shard FROM resource_current WHERE resource_type = 'Patient' AND id = $1",
        [p.id],
      );
      const parent = BigInt(rows[0]!.hlc);
      const hlc = parent + (1000n << 16n);
      const versionId = `${hlc.toString(16).padStart(16, '0')}-C`;
      const lastUpdated = new Date(Number(hlc >> 16n)).toISOString();
      const cut = { shard: rows[0]!.shard, epoch: BigInt(epoch), holder: 'C', cutHlc: parent, voteSeq: epoch };
      await s.site.ctx.db.transaction(async (tx) => {
        await applyVersions(s.site.ctx, tx, [
          {
            resourceType: 'Patient',
            id: p.id!,
            versionId,
            hlc,
            parentHlc: parent,
            parentOrigin: 'B',
            originSite: 'C',
            epoch: BigInt(epoch),
            shard: rows[0]!.shard,
            dataClass: 'core',
            patientId: p.id!,
            deleted: false,
            lastUpdated,
            content: { ...p, gender: 'other', meta: { versionId, lastUpdated } },
          },
        ]);
        await recordEpochCuts(s.site.ctx, tx, [cut]);
      });
      return versionId;
    };
    const inCare = await tail(a, 71);
    const notInCare = await tail(b, 72);
    const listed = await call('GET', '/conflicts/fenced-out', doctor);
    assert.equal(listed.status, 200);
    const versions = (listed.json as unknown as Array<{ versionId: string; currentVersion: string }>).map((v) => v.versionId);
    assert.ok(versions.includes(inCare));
    assert.ok(!versions.includes(notInCare), 'a tail of a patient out of scope is not shown');
    // The tail is never the current version.
    assert.notEqual((await call('GET', `/fhir/R4/Patient/${a.id!}`, doctor)).json.gender, 'other');
    assert.equal((await call('GET', '/conflicts/fenced-out?shard=Not%20a%20shard', doctor)).status, 400);
  });

  it('grants: valid only inside their window, revocable, administered by administrators only', async () => {
    const created = await s.site.identity.createUser({
      username: 'dr.consult',
      password: 'consult-pass-2026',
      roles: ['doctor'],
      attributes: { department: 'neurology' },
    });
    assert.ok(created.ok);
    const consult = s.as(['doctor'], { department: 'neurology' }, { userId: created.value.id });
    const grant = (validFrom: string, validUntil: string, who = admin) =>
      call(
        'POST',
        '/access/grants',
        { ...who, ...JSON_BODY },
        { user: 'dr.consult', patient: b.id, reason: 'second opinion requested by Dr. Li', validFrom, validUntil },
      );
    const hour = 3_600_000;
    assert.equal(
      (await grant(new Date(Date.now() - 2 * hour).toISOString(), new Date(Date.now() + hour).toISOString(), doctor)).status,
      403,
      'doctors cannot grant',
    );
    const expired = await grant(new Date(Date.now() - 2 * hour).toISOString(), new Date(Date.now() - hour).toISOString());
    assert.equal(expired.status, 201);
    assert.equal((await get(`/Patient/${b.id}`, consult)).status, 403, 'an expired grant denies');
    const future = await grant(new Date(Date.now() + hour).toISOString(), new Date(Date.now() + 2 * hour).toISOString());
    assert.equal(future.status, 201);
    assert.equal((await get(`/Patient/${b.id}`, consult)).status, 403, 'a grant not yet valid denies');
    const live = await grant(new Date(Date.now() - hour).toISOString(), new Date(Date.now() + hour).toISOString());
    assert.equal((await get(`/Patient/${b.id}`, consult)).status, 200);
    assert.equal((await call('DELETE', `/access/grants/${String(live.json.id)}`, admin)).status, 204);
    assert.equal((await get(`/Patient/${b.id}`, consult)).status, 403, 'revoked');
    const bad = await call(
      'POST',
      '/access/grants',
      { ...admin, ...JSON_BODY },
      { user: 'dr.consult', patient: b.id, reason: 'x', validUntil: 'tomorrow' },
    );
    assert.equal(bad.status, 400);
    assert.match(String(bad.json.message), /reason: .*validUntil: /s);
  });

  it('keeps policies and masking rules as versioned data with an admin API and a decision endpoint', async () => {
    const nurseUser = await s.site.identity.createUser({
      username: 'nurse.wang',
      password: 'nurse-pass-2026',
      roles: ['nurse'],
      attributes: { department: 'cardiology' },
    });
    assert.ok(nurseUser.ok);
    const list = await call('GET', '/access/policies', admin);
    const names = (list.json as unknown as Array<{ name: string; version: number }>).map((p) => p.name);
    for (const role of [
      'doctor',
      'nurse',
      'pharmacist',
      'lab',
      'registrar',
      'administrator',
      'auditor',
      'researcher',
      'regulator',
      'patient',
    ])
      assert.ok(names.includes(role), role);
    assert.equal((await call('GET', '/access/policies', nurse)).status, 403);
    const decide = (body: unknown) => call('POST', '/access/decide', { ...admin, ...JSON_BODY }, body);
    const phone = await decide({ user: 'nurse.wang', resourceType: 'Patient', field: 'telecom' });
    assert.deepEqual(
      [phone.json.decision, (phone.json.field as { rule: string }).rule, (phone.json.field as { transform: string }).transform],
      ['allow', 'mask', 'partial-phone'],
    );
    const rowB = await decide({ user: 'nurse.wang', resourceType: 'Patient', id: b.id, field: 'name' });
    assert.equal(rowB.json.decision, 'deny');
    assert.match(String(rowB.json.reason), /care relationship/);
    assert.equal((await decide({ user: 'nurse.wang', resourceType: 'Patient', purpose: 'research' })).json.decision, 'deny');

    const nursePolicy = (
      (await call('GET', '/access/policies/nurse/_history', admin)).json as unknown as Array<{
        body: { rules: Array<{ fields?: Record<string, string> }> };
      }>
    )[0]!.body;
    const invalid = await call(
      'PUT',
      '/access/policies/nurse',
      { ...admin, ...JSON_BODY },
      { ...nursePolicy, rules: [{ resourceTypes: ['Patient'], actions: ['read'], scope: 'everywhere' }] },
    );
    assert.equal(invalid.status, 400);
    assert.match(String(invalid.json.message), /rules\[0\]\.scope: /);
    assert.equal((await call('PUT', '/access/policies/nurse', { ...nurse, ...JSON_BODY }, nursePolicy)).status, 403);
    nursePolicy.rules[0]!.fields = { ...nursePolicy.rules[0]!.fields, identifier: 'hidden' };
    const v2 = await call('PUT', '/access/policies/nurse', { ...admin, ...JSON_BODY }, nursePolicy);
    assert.equal(v2.status, 200);
    assert.equal(v2.json.version, 2);
    assert.equal((await get(`/Patient/${a.id}`, nurse)).json.identifier, undefined, 'the new version is in force');
    assert.equal(
      ((await call('GET', '/access/policies/nurse/_history', admin)).json as unknown as unknown[]).length,
      2,
      'the old version stays on record',
    );

    const rules = (
      (await call('GET', '/access/masking-rules', admin)).json as unknown as Array<{
        version: number;
        body: { clinical: Record<string, Record<string, string>> };
      }>
    )[0]!;
    assert.equal(rules.version, 1);
    rules.body.clinical['*']!.telecom = 'remove';
    const m2 = await call('PUT', '/access/masking-rules', { ...admin, ...JSON_BODY }, rules.body);
    assert.equal(m2.json.version, 2);
    assert.equal((await get(`/Patient/${a.id}`, nurse)).json.telecom, undefined);
    assert.ok(
      (await auditTail(10)).some((e) => e.action === 'policy-change' && e.resource === 'MaskingRules/default/_history/2'),
    );
  });

  it('refuses bad tokens and purposes before any data, and audits each attempt', async () => {
    const [h, p, sig] = doctor.authorization!.slice(7).split('.') as [string, string, string];
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString('utf8')) as Record<string, unknown>;
    const tampered = `${h}.${Buffer.from(JSON.stringify({ ...claims, roles: ['integration'] })).toString('base64url')}.${sig}`;
    const now = Math.floor(Date.now() / 1000);
    const issuer = s.site.kms.signingKey()!;
    const expired = signToken(
      { ...(claims as unknown as TokenClaims), iat: now - 7200, exp: now - 3600 },
      issuer.key,
      issuer.kid,
    );
    const otherKey = signToken(claims as unknown as TokenClaims, Sm2PrivateKey.generate(), issuer.kid);
    const revoked = s.as(['doctor'], { department: 'cardiology' });
    assert.equal(
      (await call('POST', '/auth/revoke', { 'content-type': 'application/json' }, { token: revoked.authorization!.slice(7) }))
        .status,
      204,
    );
    const cases: Array<[string, Record<string, string>, number]> = [
      ['no token', {}, 401],
      ['tampered claim', { authorization: `Bearer ${tampered}` }, 401],
      ['expired token', { authorization: `Bearer ${expired}` }, 401],
      ['token signed by another key', { authorization: `Bearer ${otherKey}` }, 401],
      ['revoked token', revoked, 401],
      ['garbage', { authorization: 'Bearer a.b.c' }, 401],
      ['wrong scheme', { authorization: `Basic ${Buffer.from('x:y').toString('base64')}` }, 401],
      ['purpose not allowed for the role', { ...doctor, 'x-medmesh-purpose': 'research' }, 403],
      ['unknown purpose', { ...doctor, 'x-medmesh-purpose': 'curiosity' }, 400],
      ['a role without a policy', s.as(['janitor']), 403],
      ['a service on a user route', s.as(['service-site']), 403],
    ];
    for (const [name, headers, status] of cases) assert.equal((await get(`/Patient/${a.id}`, headers)).status, status, name);
    const log = await auditTail(cases.length);
    assert.deepEqual(
      log.map((e) => e.outcome),
      cases.map(([, , st]) => (st === 400 ? 'failure' : 'deny')),
    );
  });
});
