// Real process kills (issue: fault tests). Three `medmesh site` processes, each on its own
// database (PGlite data folders, or three databases on the PostgreSQL server), set up the
// way operators do it: keys init, peers trust, users add, keys unseal. While site B takes
// writes, site C is killed with SIGKILL again and again (mid-apply: it is pulling all the
// time) and restarted. Afterwards every acknowledged version is readable at every site that
// may hold it, exactly once, the public cloud holds no core data, and the digests agree.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import type { Organization, Patient } from '@medplum/fhirtypes';
import { openDb, type Db } from '../db/index.ts';
import { TEST_POSTGRES_URL, testBackend } from '../db/test-db.ts';
import { loadRegionFile, makeResidentId } from '../region/index.ts';
import { localVerifyPeer, verifyPair, watermarkBefore } from '../replication/index.ts';
import { HybridClock } from '../clock/index.ts';
import { pgBoundStore } from '../db/index.ts';
import { buildSearchParamTable, createR4Validator, loadFhirDefinitions, SUPPORTED_TYPES } from '../records/index.ts';
import { EXAMPLE, killChildren, loginAt, medmesh, startVerb } from './testing.ts';

type SiteId = 'A' | 'B' | 'C';
const SITES: SiteId[] = ['B', 'C', 'A'];
const PASSWORD = 'interface-pass-2026';
const RID = 'urn:oid:2.16.156.10011.1.3';

describe(`SIGKILL of a site mid-replication (${testBackend()})`, () => {
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

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'medmesh-kill-'));
    const first = 20000 + Math.floor(Math.random() * 30000);
    SITES.forEach((id, i) => (ports[id] = first + i));
    regionFile = join(dir, 'region.yaml');
    await writeFile(
      regionFile,
      (await readFile(EXAMPLE, 'utf8'))
        .replace('http://127.0.0.1:7101', base('B'))
        .replace('http://127.0.0.1:7102', base('C'))
        .replace('http://127.0.0.1:7103', base('A')),
    );
    for (const id of SITES) {
      if (testBackend() === 'postgres') {
        const name = `medmesh_kill_${process.pid}_${id.toLowerCase()}`;
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
      assert.match(init.stdout, new RegExp(`${id}\\.service\\.pub\\.pem, fingerprint [0-9a-f:]{79}`));
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
    for (const id of SITES) {
      for (const peer of SITES.filter((p) => p !== id)) {
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
    }
    const wrong = medmesh(
      'peers',
      'trust',
      '--region',
      regionFile,
      '--site',
      'B',
      ...storage.B,
      '--peer',
      'C',
      '--public-key',
      join(keys(), 'C.service.pub.pem'),
      '--fingerprint',
      '00',
    );
    assert.match(wrong.stderr, /--fingerprint does not match/);
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

  it('loses nothing acknowledged and converges after repeated SIGKILLs of a receiving site', async () => {
    const auth = async (id: SiteId) => ({ authorization: `Bearer ${await loginAt(base(id), 'his.interface', PASSWORD)}` });
    const atB = await auth('B');
    const acked: Array<{ path: string; versionId: string; core: boolean }> = [];
    let writing = true;
    const writer = (async () => {
      for (let i = 0; i < 120; i++) {
        const body: Patient | Organization =
          i % 4 === 3
            ? { resourceType: 'Organization', name: `社区卫生服务站 ${i}` }
            : {
                resourceType: 'Patient',
                name: [{ family: '周', given: [`${i}`] }],
                birthDate: '1988-08-08',
                identifier: [
                  { system: RID, value: makeResidentId({ divisionCode: '440104', birthDate: '1988-08-08', sequence: i + 1 }) },
                ],
              };
        const r = await fetch(`${base('B')}/fhir/R4/${body.resourceType}`, {
          method: 'POST',
          headers: { ...atB, 'content-type': 'application/fhir+json' },
          body: JSON.stringify(body),
        });
        assert.equal(r.status, 201, await r.clone().text());
        const w = (await r.json()) as Patient | Organization;
        acked.push({ path: `${w.resourceType}/${w.id}`, versionId: w.meta!.versionId!, core: w.resourceType === 'Patient' });
        await new Promise((res) => setTimeout(res, 15)); // paced on purpose: the writes span the kills
      }
      writing = false;
    })();
    let kills = 0;
    while (writing || kills < 3) {
      // A wait on purpose: C is killed at a moment nothing announces, mid-pull or mid-apply.
      await new Promise((res) => setTimeout(res, 400 + Math.random() * 600));
      running.C.child.kill('SIGKILL');
      assert.equal(await running.C.exited, null, 'killed, not exited');
      kills++;
      await start('C');
    }
    await writer;

    const atC = await auth('C');
    const atA = await auth('A');
    const read = async (id: SiteId, h: Record<string, string>, path: string, versionId: string) =>
      (await fetch(`${base(id)}/fhir/R4/${path}/_history/${versionId}`, { headers: h })).status;
    const until = Date.now() + 90_000;
    for (const a of acked) {
      while ((await read('C', atC, a.path, a.versionId)) !== 200) {
        assert.ok(Date.now() < until, `${a.path} never reached C after ${kills} kills`);
        await new Promise((res) => setTimeout(res, 200));
      }
      if (a.core) assert.equal(await read('A', atA, a.path, a.versionId), 404, 'core data never reaches the public cloud');
      else {
        while ((await read('A', atA, a.path, a.versionId)) !== 200) {
          assert.ok(Date.now() < until, `${a.path} never reached A`);
          await new Promise((res) => setTimeout(res, 200));
        }
      }
      const history = (await (await fetch(`${base('C')}/fhir/R4/${a.path}/_history`, { headers: atC })).json()) as {
        total?: number;
        entry?: unknown[];
      };
      assert.equal(history.entry?.length, 1, `${a.path}: exactly one version at C`);
    }

    // Stop the sites cleanly, then compare their databases' digests directly.
    for (const id of SITES) {
      running[id].child.kill('SIGTERM');
      assert.equal(await running[id].exited, 0);
    }
    const loaded = await loadRegionFile(regionFile);
    assert.ok(loaded.ok);
    const region = loaded.region;
    loadFhirDefinitions();
    const dbs = {} as Record<SiteId, Db>;
    for (const id of SITES)
      dbs[id] = await openDb(
        storage[id][0] === '--database-url'
          ? { siteId: id, databaseUrl: storage[id][1]! }
          : { siteId: id, dataRoot: storage[id][1]! },
      );
    try {
      for (const [x, y] of [
        ['C', 'B'],
        ['A', 'B'],
      ] as const) {
        const clock = await HybridClock.start({ store: pgBoundStore(dbs[x], x), maxOffsetMs: 500 });
        const records = {
          db: dbs[x],
          region,
          siteId: x,
          clock,
          searchParams: buildSearchParamTable(),
          validator: createR4Validator(SUPPORTED_TYPES),
        };
        const r = await verifyPair({
          apply: { db: dbs[x], siteId: x, region, clock, records },
          peer: localVerifyPeer({ db: dbs[y], region, site: y, forSite: x }),
          watermark: watermarkBefore(0, Date.now() + 1000),
        });
        assert.deepEqual([r.divergent, r.accuracy], [[], 1], `${x} and ${y} agree after ${kills} kills`);
        // Each patient also has its EMPI directory entry, which (unlike the patient) reaches A too.
        const patients = acked.filter((a) => a.core).length;
        const organizations = acked.length - patients;
        assert.equal(r.resources, x === 'C' ? organizations + 2 * patients : organizations + patients);
      }
    } finally {
      for (const id of SITES) await dbs[id].close();
    }
  });
});
