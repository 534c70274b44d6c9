// A peer site that dies and comes back (issue 22 finding 2). Two `medmesh site` processes, B
// and C, set up as operators do. B is killed with SIGKILL: at C the lag toward B must grow
// with the time since B last answered, /healthz must say "degraded" and name B, since when
// and why (HTTP 200: C still serves its own requests, and /readyz stays ready). B is
// restarted: C's link must be up within about two seconds of B answering again (pullers
// used to back off up to 30 s), and replication goes on.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import type { Patient } from '@medplum/fhirtypes';
import { TEST_POSTGRES_URL, testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { EXAMPLE, killChildren, loginAt, medmesh, startVerb } from './testing.ts';

type SiteId = 'B' | 'C';
const SITES: SiteId[] = ['B', 'C'];
const PASSWORD = 'interface-pass-2026';
const RID = 'urn:oid:2.16.156.10011.1.3';

interface Health {
  status: string;
  degraded: Array<{ kind: string; peer?: string; since?: string; lastError?: string; lagMs?: number }>;
  replication: Array<{ peer: string; state: string; up: boolean; lagMs: number; lastContactAt: string | null }>;
}

describe(`a peer site killed and restarted (${testBackend()})`, () => {
  let dir = '';
  let regionFile = '';
  const ports = {} as Record<SiteId, number>;
  const storage = {} as Record<SiteId, string[]>;
  const databases: string[] = [];
  const running = {} as Record<SiteId, ReturnType<typeof startVerb>>;
  const base = (id: SiteId) => `http://127.0.0.1:${ports[id]}`;
  const keys = () => join(dir, 'keys');

  const start = async (id: SiteId) => {
    running[id] = startVerb(
      ['site', '--region', regionFile, '--site', id, ...storage[id], '--verify-every', '0'],
      /serving FHIR R4/,
    );
    await running[id].started;
    const unseal = medmesh(
      'keys',
      'unseal',
      '--url',
      base(id),
      '--unseal',
      `${join(keys(), `${id}-share-1-ann.json`)}:${join(keys(), 'ann.key.pem')}`,
      '--unseal',
      `${join(keys(), `${id}-share-2-ben.json`)}:${join(keys(), 'ben.key.pem')}`,
    );
    assert.match(unseal.stdout, /^unsealed/, unseal.stderr);
  };
  const health = async (): Promise<Health> => {
    const r = await fetch(`${base('C')}/healthz`);
    assert.equal(r.status, 200, 'health answers 200 whatever the links: C still serves');
    return (await r.json()) as Health;
  };
  const linkB = async () => (await health()).replication.find((l) => l.peer === 'B');
  const metric = async (name: string) => {
    const text = await (await fetch(`${base('C')}/metrics`)).text();
    const m = new RegExp(`^${name}\\{site="C",peer="B"\\} (\\S+)$`, 'm').exec(text);
    return m ? Number(m[1]) : undefined;
  };
  const until = async <T>(what: string, ms: number, f: () => Promise<T | undefined | false>): Promise<T> => {
    const end = Date.now() + ms;
    for (;;) {
      const v = await f();
      if (v) return v;
      assert.ok(Date.now() < end, `timed out after ${ms} ms waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'medmesh-outage-'));
    const first = 20000 + Math.floor(Math.random() * 30000);
    SITES.forEach((id, i) => (ports[id] = first + i));
    regionFile = join(dir, 'region.yaml');
    // The example region without its public-cloud site: only B and C run here.
    const example = await readFile(EXAMPLE, 'utf8');
    await writeFile(
      regionFile,
      (example.slice(0, example.indexOf('  - id: A\n')) + example.slice(example.indexOf('# Geographic cells')))
        .replace('http://127.0.0.1:7101', base('B'))
        .replace('http://127.0.0.1:7102', base('C')),
    );
    for (const id of SITES) {
      if (testBackend() === 'postgres') {
        const name = `medmesh_outage_${process.pid}_${id.toLowerCase()}`;
        const admin = new pg.Client({ connectionString: TEST_POSTGRES_URL });
        await admin.connect();
        await admin.query(`DROP DATABASE IF EXISTS ${name}`);
        await admin.query(`CREATE DATABASE ${name}`);
        await admin.end();
        databases.push(name);
        storage[id] = ['--database-url', new URL(`/${name}`, TEST_POSTGRES_URL).toString()];
      } else storage[id] = ['--data', join(dir, 'data')];
    }
    for (const n of ['ann', 'ben']) assert.equal(medmesh('keys', 'custodian-keygen', '--name', n, '--out', keys()).status, 0);
    for (const id of SITES) {
      const init = medmesh(
        'keys',
        'init',
        '--region',
        regionFile,
        '--site',
        id,
        ...storage[id],
        '--custodian',
        `ann=${join(keys(), 'ann.pub.pem')}`,
        '--custodian',
        `ben=${join(keys(), 'ben.pub.pem')}`,
        '--threshold',
        '2',
        '--out',
        keys(),
      );
      assert.equal(init.status, 0, init.stderr);
      const user = medmesh(
        'users',
        'add',
        '--region',
        regionFile,
        '--site',
        id,
        ...storage[id],
        '--username',
        'his.interface',
        '--role',
        'integration',
        { MEDMESH_PASSWORD: PASSWORD },
      );
      assert.equal(user.status, 0, user.stderr);
    }
    for (const [id, peer] of [
      ['B', 'C'],
      ['C', 'B'],
    ] as const) {
      const t = medmesh(
        'peers',
        'trust',
        '--region',
        regionFile,
        '--site',
        id,
        ...storage[id],
        '--peer',
        peer,
        '--public-key',
        join(keys(), `${peer}.service.pub.pem`),
      );
      assert.equal(t.status, 0, t.stderr);
    }
    for (const id of SITES) await start(id);
  });
  after(async () => {
    killChildren();
    if (databases.length) {
      const admin = new pg.Client({ connectionString: TEST_POSTGRES_URL });
      await admin.connect();
      for (const name of databases) await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await admin.end();
    }
    await rm(dir, { recursive: true, force: true });
  });

  it('shows the outage at C while B is dead, and picks B up again within about two seconds of its return', async () => {
    let seq = 0;
    const write = async () => {
      const token = await loginAt(base('B'), 'his.interface', PASSWORD);
      seq++;
      const body: Patient = {
        resourceType: 'Patient',
        name: [{ family: '钟', given: [`${seq}`] }],
        birthDate: '1966-06-06',
        identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440104', birthDate: '1966-06-06', sequence: seq }) }],
      };
      const r = await fetch(`${base('B')}/fhir/R4/Patient`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/fhir+json' },
        body: JSON.stringify(body),
      });
      assert.equal(r.status, 201, await r.clone().text());
    };
    const applied = async () => (await metric('medmesh_replication_applied_total')) ?? 0;

    await write();
    await until('the write at C, health ok', 30_000, async () => (await applied()) >= 2 && (await health()).status === 'ok');

    running.B.child.kill('SIGKILL');
    assert.equal(await running.B.exited, null, 'killed, not exited');
    const killedAt = Date.now();
    const down = await until('C to see B down', 5_000, async () => {
      const h = await health();
      return h.status === 'degraded' && h.degraded.find((d) => d.kind === 'link-down' && d.peer === 'B');
    });
    assert.ok(down.since && Math.abs(Date.parse(down.since) - killedAt) < 3_000, `down since ${down.since}`);
    assert.match(down.lastError ?? '', /B/, 'the last error names the peer');
    assert.equal((await fetch(`${base('C')}/readyz`)).status, 200, 'ready: C serves its own requests');
    assert.equal(await metric('medmesh_replication_link_up'), 0);

    // The lag grows with the time since B last answered: the waits are the point (time must pass).
    await new Promise((r) => setTimeout(r, 3_000));
    const lag1 = (await metric('medmesh_replication_lag_ms'))!;
    const t1 = Date.now();
    await new Promise((r) => setTimeout(r, 4_000));
    const lag2 = (await metric('medmesh_replication_lag_ms'))!;
    const t2 = Date.now();
    assert.ok(lag1 >= t1 - killedAt - 1_500, `lag ${lag1} ms, ${t1 - killedAt} ms after the kill`);
    assert.ok(lag2 - lag1 >= t2 - t1 - 500, `the lag grew by ${lag2 - lag1} ms in ${t2 - t1} ms`);
    assert.ok((await linkB())!.lagMs >= t2 - killedAt - 1_500);
    assert.ok(((await metric('medmesh_replication_link_down_seconds')) ?? 0) >= 6);

    await start('B');
    const back = Date.now();
    await until('C to see B up again', 10_000, async () => (await linkB())?.up);
    const noticed = Date.now() - back;
    console.log(`C saw B up again ${noticed} ms after B was unsealed (B was down ${Math.round((back - killedAt) / 1000)} s)`);
    assert.ok(noticed <= 2_500, `link up ${noticed} ms after B answered again`);
    assert.equal((await health()).status, 'ok');

    const before = await applied();
    await write();
    await until('a write after the restart at C', 10_000, async () => (await applied()) >= before + 2);
    assert.ok(((await metric('medmesh_replication_lag_ms')) ?? Infinity) < 5_000, 'the lag is back to normal');
  });
});
