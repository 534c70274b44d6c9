// Research pseudonyms cannot be linked back (issue 22, finding 6). The records come in twins,
// identical in everything research and statistics may see (sex, birth year, city, codes,
// values) and different in everything that identifies them (ids, versions, times, resident
// IDs, names, phones, notes). Then every string of every answer (bodies and headers) given to
// researchers of two projects and to a regulator is walked: none may equal or contain a value
// that tells one twin from the other in the identified data, and none of one project's
// record-specific values may appear in the other project's answers.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { testBackend } from '../db/test-db.ts';
import { seededRandom } from '../records/synthetic.ts';
import { makeResidentId } from '../region/index.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
const FHIR = { 'content-type': 'application/fhir+json' };
const RECORD_HEADERS = new Set(['etag', 'last-modified', 'location', 'content-location']);
type Answer = { status: number; strings: string[]; json: unknown };

describe(`research and statistics answers cannot be linked (${testBackend()})`, () => {
  const seed = Number(process.env.MEDMESH_TEST_SEED ?? Date.now() % 1_000_000_000);
  const rnd = seededRandom(seed);
  const why = (m: string) => `${m} (seed ${seed}; rerun with MEDMESH_TEST_SEED=${seed})`;
  let s: TestServer;
  /** The identified view: the interface account (one token, so its answers are told apart). */
  let auth: Record<string, string>;
  /** Per twin pair: the identified answers of each twin's records. */
  const twins: Array<[Answer[], Answer[]]> = [];
  const patientOrder: string[] = [];

  const call = async (method: string, path: string, headers: Record<string, string>, body?: unknown): Promise<Answer> => {
    const res = await fetch(`${s.base}${path}`, {
      method,
      headers: body === undefined ? headers : { ...FHIR, ...headers },
      ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
    });
    const text = await res.text();
    const json = (text ? JSON.parse(text) : {}) as unknown;
    // Every header of an answer; of the identified ones, those that describe the record (not the
    // time or size of that answer, which differ between twins without identifying them).
    const heads = [...res.headers].filter(([k]) => headers !== auth || RECORD_HEADERS.has(k)).map(([, v]) => v);
    return { status: res.status, json, strings: [...heads, ...stringsIn(json)] };
  };
  const write = async (type: string, body: Record<string, unknown>) => {
    const r = await call('POST', `/fhir/R4/${type}`, auth, body);
    assert.equal(r.status, 201, JSON.stringify(r.json));
    return r.json as { id: string; meta: { versionId: string; lastUpdated: string } };
  };

  before(async () => {
    s = await startTestServer();
    auth = s.auth;
    let last = 0;
    for (let n = 0; n < 6; n++) {
      const year = 1940 + Math.floor(rnd() * 60);
      const gender = rnd() < 0.5 ? 'male' : 'female';
      const value = Math.round(rnd() * 100);
      const twin: Answer[][] = [];
      for (let k = 0; k < 2; k++) {
        const birthDate = `${year}-0${1 + Math.floor(rnd() * 9)}-1${Math.floor(rnd() * 9)}`;
        const rid = makeResidentId({ divisionCode: '440104', birthDate, sequence: Math.floor(rnd() * 1000) });
        const phone = `139${String(Math.floor(rnd() * 1e8)).padStart(8, '0')}`;
        const p = await write('Patient', {
          resourceType: 'Patient',
          meta: { source: `urn:his:${n}-${k}`, tag: [{ system: 'urn:his:mrn', code: `MRN${n}${k}${Math.floor(rnd() * 1e6)}` }] },
          text: { status: 'generated', div: `<div xmlns="http://www.w3.org/1999/xhtml">${rid}</div>` },
          identifier: [{ system: RID, value: rid }],
          name: [{ family: '李', given: [`小${n}${k}号`] }],
          telecom: [{ system: 'phone', value: phone }],
          gender,
          birthDate,
          address: [{ line: [`中山路 ${n}${k} 号`], district: '越秀区', city: '广州市', postalCode: `5100${n}${k}` }],
        });
        patientOrder.push(p.id);
        const at = new Date(
          Date.UTC(2025, Math.floor(rnd() * 12), 1 + Math.floor(rnd() * 27), 8, Math.floor(rnd() * 60), Math.floor(rnd() * 60)),
        );
        const enc = await write('Encounter', {
          resourceType: 'Encounter',
          status: 'finished',
          class: { code: 'AMB' },
          subject: { reference: `Patient/${p.id}` },
          serviceProvider: { reference: 'Organization/cardiology' },
          period: { start: at.toISOString(), end: new Date(at.getTime() + 3_600_000).toISOString() },
        });
        const obs = await write('Observation', {
          resourceType: 'Observation',
          status: 'final',
          code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
          subject: { reference: `Patient/${p.id}`, identifier: { system: RID, value: rid } },
          encounter: { reference: `Encounter/${enc.id}` },
          effectiveDateTime: at.toISOString(),
          issued: new Date(at.getTime() + 60_000).toISOString(),
          valueQuantity: { value, unit: '/min' },
          note: [{ text: `called ${phone}` }],
          extension: [{ url: 'https://medmesh.example/fhir/StructureDefinition/source', valueString: `see Patient/${p.id}` }],
        });
        const report = await write('DiagnosticReport', {
          resourceType: 'DiagnosticReport',
          status: 'final',
          code: { text: 'ECG' },
          subject: { reference: `Patient/${p.id}` },
          result: [{ reference: `Observation/${obs.id}` }],
          issued: new Date(at.getTime() + 120_000).toISOString(),
          presentedForm: [
            {
              contentType: 'text/plain',
              data: Buffer.from(`ECG of ${rid}`).toString('base64'),
              url: `${s.fhir}/Binary/${obs.id}`,
              size: 200_000 + n * 2 + k,
              title: `ECG ${n}${k}`,
            },
          ],
        });
        last = Math.max(last, Date.parse(report.meta.lastUpdated));
        const mine: Answer[] = [];
        for (const [type, id] of [
          ['Patient', p.id],
          ['Encounter', enc.id],
          ['Observation', obs.id],
          ['DiagnosticReport', report.id],
        ] as const) {
          mine.push(await call('GET', `/fhir/R4/${type}/${id}`, auth));
          mine.push(await call('GET', `/fhir/R4/${type}/${id}/_history`, auth));
          mine.push(await call('GET', `/fhir/R4/${type}?_id=${id}`, auth));
        }
        twin.push(mine);
      }
      twins.push([twin[0]!, twin[1]!]);
    }
    // No answer below may share its Date header's second with a record's Last-Modified.
    while (Date.now() < last + 1100) await new Promise((r) => setImmediate(r));
  });
  after(() => s?.close());

  /** Everything a de-identified caller can ask for, answered or refused. */
  const answersOf = async (headers: Record<string, string>, types: string[]): Promise<Answer[]> => {
    const out: Answer[] = [];
    for (const type of types) {
      out.push(await call('GET', `/fhir/R4/${type}?_count=100`, headers));
      out.push(await call('GET', `/fhir/R4/${type}?_count=100&_total=accurate&_lastUpdated=ge2020-01`, headers));
      out.push(await call('GET', `/fhir/R4/${type}?_summary=count`, headers));
      out.push(
        await call(
          'POST',
          `/fhir/R4/${type}/_search`,
          { ...headers, 'content-type': 'application/x-www-form-urlencoded' },
          '_count=3',
        ),
      );
      // Page by page, following the links the server gives.
      let next: string | undefined = `${s.fhir}/${type}?_count=1`;
      for (let i = 0; next && i < 30; i++) {
        const page = await call('GET', next.slice(s.base.length), headers);
        out.push(page);
        next = (page.json as { link?: Array<{ relation: string; url: string }> }).link?.find((l) => l.relation === 'next')?.url;
      }
      for (const refused of ['_history', `?_sort=_lastUpdated`, '?_sort=-_id', `?_lastUpdated=gt2025-06-01T00:00:00Z`]) {
        const r = await call('GET', `/fhir/R4/${type}${refused.startsWith('?') ? refused : `/${refused}`}`, headers);
        assert.ok(r.status >= 400, `${type} ${refused} is refused (${r.status})`);
        out.push(r);
      }
    }
    out.push(await call('GET', `/fhir/R4/Observation?date=2025-06`, headers));
    out.push(await call('GET', `/fhir/R4/Observation?date=2025-06-15`, headers));
    out.push(await call('GET', `/fhir/R4/Patient/${patientOrder[0]}`, headers));
    out.push(await call('GET', `/fhir/R4/Patient/${patientOrder[0]}/_history`, headers));
    out.push(
      await call('POST', '/fhir/R4', headers, {
        resourceType: 'Bundle',
        type: 'batch',
        entry: [
          ...types.map((t) => ({ request: { method: 'GET', url: `${t}?_count=100` } })),
          { request: { method: 'GET', url: `Patient/${patientOrder[1]}` } },
        ],
      }),
    );
    return out;
  };

  it('shares no identifying value with the identified record, and no record-specific value across projects', async () => {
    const types = ['Patient', 'Encounter', 'Observation', 'DiagnosticReport'];
    const p1 = await answersOf(s.as(['researcher'], { project: 'p1' }), types);
    const p2 = await answersOf(s.as(['researcher'], { project: 'p2' }), types);
    const stats = await answersOf(s.as(['regulator']), ['Patient', 'Encounter', 'Observation']);
    assert.ok(p1.some((a) => a.status === 200 && ((a.json as { entry?: unknown[] }).entry?.length ?? 0) >= 12));

    // What tells one twin from the other in the identified data (bodies and headers).
    const identifying = new Set<string>();
    for (const [a, b] of twins) {
      const sa = new Set(a.flatMap((x) => x.strings));
      const sb = new Set(b.flatMap((x) => x.strings));
      // (Strings under 4 characters identify nothing: "12" is a count as often as a size.)
      for (const v of sa) if (!sb.has(v) && v.length >= 4) identifying.add(v);
      for (const v of sb) if (!sa.has(v) && v.length >= 4) identifying.add(v);
    }
    assert.ok(identifying.size > 100, 'the twins differ in their identifying values');
    const leaks = (answers: Answer[], secrets: ReadonlySet<string>) =>
      answers.flatMap((a) => a.strings).filter((v) => [...secrets].some((x) => v === x || (x.length >= 8 && v.includes(x))));
    for (const [name, answers] of [
      ['project p1', p1],
      ['project p2', p2],
      ['statistics', stats],
    ] as const)
      assert.deepEqual([...new Set(leaks(answers, identifying))], [], why(`${name} answers carry no identifying value`));

    // What tells one record from another inside a project's answers: its keyed ids and versions.
    const specific = (answers: Answer[]) => {
      const count = new Map<string, number>();
      for (const a of answers)
        for (const e of (a.json as { entry?: Array<{ resource?: unknown; fullUrl?: string }> }).entry ?? [])
          for (const v of new Set([...stringsIn(e.resource), ...(e.fullUrl ? [e.fullUrl] : [])]))
            count.set(v, (count.get(v) ?? 0) + 1);
      // Seen once per answer page that listed the record; the twin's differ, so count per value over twins is per record.
      return new Set([...count.keys()].filter((v) => /[0-9a-f]{32}/.test(v)));
    };
    const k1 = specific(p1);
    const k2 = specific(p2);
    const ks = specific(stats);
    assert.ok(k1.size > 20 && k2.size > 20 && ks.size > 10, 'pseudonyms were served');
    assert.deepEqual(leaks(p2, k1), [], why('nothing of project p1 appears in project p2'));
    assert.deepEqual(leaks(p1, k2), [], why('nothing of project p2 appears in project p1'));
    assert.deepEqual(leaks(p1, ks), [], why('nothing of statistics appears in research'));
    assert.deepEqual(leaks(stats, k1), [], why('nothing of research appears in statistics'));

    // Nothing that identifies a record survives as a value either: the home shard tag has no
    // district, times are months, attachments are their content type.
    const pat = (p1[0]!.json as { entry: Array<{ resource: Record<string, unknown> }> }).entry[0]!.resource;
    const meta = pat.meta as { versionId: string; lastUpdated: string; tag: Array<Record<string, unknown>>; source?: string };
    assert.match(meta.lastUpdated, /^\d{4}-\d{2}-01T00:00:00Z$/);
    assert.deepEqual(meta.tag, [{ system: 'urn:medmesh:home-shard', code: 'guangzhou' }]);
    assert.equal(meta.source, undefined);
    const obs = (
      p1.find((a) => JSON.stringify(a.json).includes('"Observation"'))!.json as {
        entry: Array<{ resource: Record<string, unknown> }>;
      }
    ).entry[0]!.resource;
    assert.match(String(obs.effectiveDateTime), /^\d{4}-\d{2}$/);
    const report = (
      p1.find((a) => JSON.stringify(a.json).includes('"DiagnosticReport"'))!.json as {
        entry: Array<{ resource: Record<string, unknown> }>;
      }
    ).entry[0]!.resource;
    assert.deepEqual(report.presentedForm, [{ contentType: 'text/plain' }]);
  });

  it('orders each project differently from the other and from the identified order', async () => {
    const order = async (headers: Record<string, string>) => {
      const out: string[] = [];
      for (let offset = 0; offset < patientOrder.length; offset += 5) {
        const r = await call('GET', `/fhir/R4/Patient?_count=5&_offset=${offset}`, headers);
        out.push(
          ...((r.json as { entry?: Array<{ resource: { birthDate?: string; gender?: string } }> }).entry ?? []).map(
            (e) => `${e.resource.birthDate ?? ''}${e.resource.gender ?? ''}`,
          ),
        );
      }
      return out;
    };
    const identified = await order(auth);
    const a = await order(s.as(['researcher'], { project: 'p1' }));
    const b = await order(s.as(['researcher'], { project: 'p2' }));
    assert.equal(a.length, patientOrder.length);
    // The birth dates of the identified answer are full; compare by what research shows.
    const shown = identified.map((x) => x.slice(0, 4) + x.slice(10));
    assert.notDeepEqual(a, shown, why('project p1 does not see the identified order'));
    assert.notDeepEqual(a, b, why('two projects do not see the same order'));
    assert.deepEqual(a, await order(s.as(['researcher'], { project: 'p1' })), 'a project sees a stable order');
  });
});

function stringsIn(v: unknown): string[] {
  if (typeof v === 'string') return [v];
  if (typeof v === 'number') return [String(v)];
  if (Array.isArray(v)) return v.flatMap(stringsIn);
  if (v && typeof v === 'object') return Object.values(v).flatMap(stringsIn);
  return [];
}
