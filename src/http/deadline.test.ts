// No request holds a site: the request timeout answers a stuck handler and frees the
// database it held; closing a site drains (or stops) requests in flight before the database
// closes under them.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Bundle, Patient } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
const patient = (seq: number): Patient => ({
  resourceType: 'Patient',
  name: [{ family: '李' }],
  identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440104', birthDate: '1971-03-03', sequence: seq }) }],
});
const FHIR = { 'content-type': 'application/fhir+json' };

/** `p`, or a failure after `ms` (a hang is reported, not waited out). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms))),
  ]).finally(() => clearTimeout(timer));
}

function latch(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => (open = resolve));
  return { wait, open };
}

describe(`request deadlines (${testBackend()})`, () => {
  let s: TestServer;
  const entered = { json: latch(), fhir: latch() };
  before(async () => {
    s = await startTestServer({
      // The site's timeout (the JSON route below waits it out); the FHIR one has its own, shorter.
      requestTimeoutMs: 2000,
      // A handler stuck inside its transaction: a real fault of the kind the Bundle vread was.
      routes: (app, site) => {
        const stuck = (which: 'json' | 'fhir') => () =>
          site.ctx.db.transaction(async (tx) => {
            await tx.query("INSERT INTO hlc_bound (site_id, upper_ms) VALUES ('stuck-' || $1, 1)", [which]);
            entered[which].open();
            await new Promise(() => undefined);
          });
        app.get('/test/stuck', { config: { access: 'public' } }, stuck('json'));
        app.get('/fhir/R4/test/stuck', { config: { access: 'public', timeoutMs: 300 } }, stuck('fhir'));
        // Answers just after the timeout did, while that answer is still being written (audited).
        app.get<{ Querystring: { fail?: string } }>(
          '/fhir/R4/test/late',
          { config: { access: 'public' } },
          async (req, reply) => {
            while (!req.work?.answering) await new Promise((resolve) => setImmediate(resolve));
            if (req.query.fail === 'throw') throw new Error('late failure');
            if (req.query.fail === 'send') return reply.code(200).send({ resourceType: 'Basic', id: 'late' });
            return { resourceType: 'Basic', id: 'late' };
          },
        );
        // Slower than the site's timeout, with a timeout of its own.
        app.get('/test/slow', { config: { access: 'public', timeoutMs: 10_000 } }, async () => {
          await new Promise((resolve) => setTimeout(resolve, 2300));
          return { done: true };
        });
      },
    });
  });
  after(() => s.close());

  it('answers a handler stuck in its transaction with 503 in the route shape, rolls it back, keeps the site usable', async () => {
    const json = await within(fetch(`${s.base}/test/stuck`), 10_000, 'stuck JSON route');
    assert.equal(json.status, 503);
    assert.match(json.headers.get('content-type') ?? '', /^application\/json/);
    const jb = (await json.json()) as { code: string; message: string };
    assert.equal(jb.code, 'unavailable');
    assert.match(jb.message, /did not finish within 2000 ms/);
    const fhir = await within(fetch(`${s.base}/fhir/R4/test/stuck`), 10_000, 'stuck FHIR route');
    assert.equal(fhir.status, 503);
    const fb = (await fhir.json()) as { resourceType: string; issue: Array<{ code: string; diagnostics: string }> };
    assert.equal(fb.resourceType, 'OperationOutcome');
    assert.equal(fb.issue[0]!.code, 'transient');
    await entered.json.wait;
    await entered.fhir.wait;
    // The stuck transactions were rolled back, and the database is free again (on PGlite its
    // one connection was held): health, a write and a read answer.
    const left = await within(
      s.db.query<{ n: number }>("SELECT count(*)::int AS n FROM hlc_bound WHERE site_id LIKE 'stuck-%'"),
      10_000,
      'a query after the timeout',
    );
    assert.equal(left.rows[0]!.n, 0);
    assert.equal((await within(fetch(`${s.base}/healthz`), 10_000, 'healthz')).status, 200);
    const created = await within(
      fetch(`${s.fhir}/Patient`, { method: 'POST', headers: { ...FHIR, ...s.auth }, body: JSON.stringify(patient(1)) }),
      10_000,
      'a create after the timeout',
    );
    assert.equal(created.status, 201);
    const { id } = (await created.json()) as Patient;
    assert.equal((await fetch(`${s.fhir}/Patient/${id!}`, { headers: s.auth })).status, 200);
  });

  it('drops a late answer after the timeout answered (a second answer could end the process)', async () => {
    for (const how of ['return', 'send', 'throw', 'return', 'send', 'throw']) {
      const r = await within(fetch(`${s.base}/fhir/R4/test/late?fail=${how}`), 10_000, `late route (${how})`);
      assert.equal(r.status, 503);
      assert.equal(((await r.json()) as { resourceType: string }).resourceType, 'OperationOutcome');
    }
    assert.equal((await fetch(`${s.base}/healthz`)).status, 200);
  });

  it('lets a route take longer than the site timeout when it says so', async () => {
    const r = await fetch(`${s.base}/test/slow`);
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { done: true });
  });
});

// On its own site with the default timeout: under a loaded machine this real work may take
// longer than the 2 s the site above is given to show its timeout.
describe(`a Bundle that once hung a site (${testBackend()})`, () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer();
  });
  after(() => s.close());

  it('answers a Bundle with vread entries (it hung a PGlite site), and the site answers after it', async () => {
    const created = (await (
      await fetch(`${s.fhir}/Patient`, { method: 'POST', headers: { ...FHIR, ...s.auth }, body: JSON.stringify(patient(2)) })
    ).json()) as Patient;
    const url = `Patient/${created.id!}/_history/${created.meta!.versionId!}`;
    for (const type of ['batch', 'transaction'] as const) {
      const r = await within(
        fetch(s.fhir, {
          method: 'POST',
          headers: { ...FHIR, ...s.auth },
          body: JSON.stringify({ resourceType: 'Bundle', type, entry: [{ request: { method: 'GET', url } }] }),
        }),
        10_000,
        `${type} Bundle with a vread`,
      );
      assert.equal(r.status, 200, type);
      const b = (await r.json()) as Bundle;
      assert.equal(b.entry![0]!.response!.status, '200');
      assert.equal(b.entry![0]!.resource!.id, created.id);
    }
    assert.equal((await fetch(`${s.base}/healthz`)).status, 200);
    const login = await fetch(`${s.base}/auth/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'nobody', password: 'not the password' }),
    });
    assert.equal(login.status, 401);
  });
});

describe(`closing a site with requests in flight (${testBackend()})`, () => {
  it('lets a request in flight finish, and closes the database after it', async () => {
    const entered = latch();
    const release = latch();
    const s = await startTestServer({
      routes: (app, site) => {
        app.get('/test/slow', { config: { access: 'public' } }, async () => {
          entered.open();
          await release.wait;
          // The database is still open for a request the closing site lets finish.
          const { rows } = await site.ctx.db.query<{ n: number }>('SELECT 1 AS n');
          return { n: rows[0]!.n };
        });
      },
    });
    const answer = fetch(`${s.base}/test/slow`);
    await entered.wait;
    const closed = within(s.close(), 20_000, 'closing the site');
    release.open();
    const done = await within(answer, 20_000, 'the answer');
    assert.equal(done.status, 200);
    assert.deepEqual(await done.json(), { n: 1 });
    await closed;
  });

  it('stops a request stuck in its transaction with 503, closes the database (PGlite: it held the one connection)', async () => {
    const stuck = latch();
    const s = await startTestServer({
      routes: (app, site) => {
        app.get('/fhir/R4/test/stuck', { config: { access: 'public' } }, () =>
          site.ctx.db.transaction(async (tx) => {
            await tx.query('SELECT 1');
            stuck.open();
            await new Promise(() => undefined);
          }),
        );
      },
    });
    const answer = fetch(`${s.base}/fhir/R4/test/stuck`);
    await stuck.wait;
    // site.close, then db.close, as `medmesh site` stops on SIGINT: before, the database never
    // closed (and background loops stopping first waited behind the same transaction).
    const closed = within(s.close(), 20_000, 'closing the site');
    const stopped = await within(answer, 20_000, 'the answer');
    assert.equal(stopped.status, 503);
    const body = (await stopped.json()) as { resourceType: string; issue: Array<{ diagnostics: string }> };
    assert.equal(body.resourceType, 'OperationOutcome');
    assert.match(body.issue[0]!.diagnostics, /the site is stopping/);
    await closed;
  });
});
