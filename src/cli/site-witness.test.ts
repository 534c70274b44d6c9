// `medmesh site --witness-key`: a site process under a `medmesh witness` process, set up the way
// operators do it (keys init, users add, witness trust of the site's service key, keys unseal).
// Its FHIR writes of a shard it holds are accepted once the lease is granted; with the witness
// stopped (SIGTERM) they are refused 503 once the lease ran out; with the witness back they resume.
// Wrong flags are refused before anything opens, naming the flag.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import pg from 'pg';
import { TEST_POSTGRES_URL, testBackend } from '../db/test-db.ts';
import { freePort } from '../failover/testing.ts';
import { makeResidentId } from '../region/index.ts';
import { Sm2PrivateKey } from '../security/crypto/index.ts';
import { EXAMPLE, killChildren, loginAt, medmesh, startVerb } from './testing.ts';

const PASSWORD = 'interface-pass-2026';
const RID = 'urn:oid:2.16.156.10011.1.3';

describe(`medmesh site under a medmesh witness (${testBackend()})`, () => {
  const dirs: string[] = [];
  const databases: string[] = [];
  after(async () => {
    killChildren();
    if (databases.length) {
      const admin = new pg.Client({ connectionString: TEST_POSTGRES_URL });
      await admin.connect();
      for (const name of databases) await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await admin.end();
    }
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('refuses a missing or wrong witness key, and witness flags without one, naming the flag', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'medmesh-site-witness-flags-'));
    dirs.push(dir);
    const site = (...flags: string[]) =>
      medmesh('site', '--region', EXAMPLE, '--site', 'B', '--data', join(dir, 'data'), ...flags);
    const missing = site('--witness-key', join(dir, 'nowhere.pem'));
    assert.equal(missing.status, 2, missing.stderr);
    assert.match(missing.stderr, /--witness-key .*nowhere\.pem: cannot read it \(ENOENT\)/);
    const notKey = site('--witness-key', EXAMPLE);
    assert.equal(notKey.status, 2, notKey.stderr);
    assert.match(notKey.stderr, /--witness-key .*region\.example\.yaml: not an SM2 public key PEM/);
    const stray = site('--witness-url', 'http://127.0.0.1:7300');
    assert.equal(stray.status, 2, stray.stderr);
    assert.match(stray.stderr, /--witness-url needs --witness-key/);
    const keyFile = join(dir, 'witness.pub.pem');
    await writeFile(keyFile, Sm2PrivateKey.generate().publicKey.toPem());
    const badUrl = site('--witness-key', keyFile, '--witness-url', 'ftp://witness');
    assert.match(badUrl.stderr, /--witness-url must be http\(s\):\/\/host:port \(got ftp:\/\/witness\)/);
    const badLease = site('--witness-key', keyFile, '--lease-ms', '50');
    assert.match(badLease.stderr, /--lease-ms must be an integer from 500 to 600000 \(got 50\)/);
  });

  it('writes under the lease, 503 once the stopped witness let it run out, and again with the witness back', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'medmesh-site-witness-'));
    dirs.push(dir);
    const keys = join(dir, 'keys');
    const witnessData = join(dir, 'witness');
    const [sitePort, witnessPort] = [await freePort(), await freePort()];
    const base = `http://127.0.0.1:${sitePort}`;
    const regionFile = join(dir, 'region.yaml');
    await writeFile(
      regionFile,
      (await readFile(EXAMPLE, 'utf8'))
        .replace('http://127.0.0.1:7101', base)
        .replace('http://127.0.0.1:7300', `http://127.0.0.1:${witnessPort}`),
    );
    let storage = ['--data', join(dir, 'data')];
    if (testBackend() === 'postgres') {
      const name = `medmesh_site_witness_${process.pid}`;
      const admin = new pg.Client({ connectionString: TEST_POSTGRES_URL });
      await admin.connect();
      await admin.query(`DROP DATABASE IF EXISTS ${name}`);
      await admin.query(`CREATE DATABASE ${name}`);
      await admin.end();
      databases.push(name);
      storage = ['--database-url', new URL(`/${name}`, TEST_POSTGRES_URL).toString()];
    }
    for (const n of ['ann', 'ben']) assert.equal(medmesh('keys', 'custodian-keygen', '--name', n, '--out', keys).status, 0);
    const init = medmesh(
      'keys',
      'init',
      '--region',
      regionFile,
      '--site',
      'B',
      ...storage,
      '--custodian',
      `ann=${join(keys, 'ann.pub.pem')}`,
      '--custodian',
      `ben=${join(keys, 'ben.pub.pem')}`,
      '--threshold',
      '2',
      '--out',
      keys,
    );
    assert.equal(init.status, 0, init.stderr);
    const user = medmesh(
      'users',
      'add',
      '--region',
      regionFile,
      '--site',
      'B',
      ...storage,
      '--username',
      'his.interface',
      '--role',
      'integration',
      { MEDMESH_PASSWORD: PASSWORD },
    );
    assert.equal(user.status, 0, user.stderr);
    // The witness accepts B's calls signed with its service key (trusted while the witness is stopped: PGlite
    // store); its own key is made on its first start.
    const trusted = medmesh(
      'witness',
      'trust',
      '--region',
      regionFile,
      '--site',
      'B',
      '--public-key',
      join(keys, 'B.service.pub.pem'),
      '--data',
      witnessData,
    );
    assert.equal(trusted.status, 0, trusted.stderr);

    const startWitness = async () => {
      const w = startVerb(['witness', '--region', regionFile, '--data', witnessData], /serving at/);
      await w.started;
      return w;
    };
    let witness = await startWitness();
    const site = startVerb(
      [
        'site',
        '--region',
        regionFile,
        '--site',
        'B',
        ...storage,
        '--no-replication',
        '--verify-every',
        '0',
        '--witness-key',
        join(witnessData, 'witness.pub.pem'),
      ],
      /serving FHIR R4/,
    );
    await site.started;
    assert.match(site.output(), new RegExp(`under the witness at http://127\\.0\\.0\\.1:${witnessPort}`));
    const unseal = medmesh(
      'keys',
      'unseal',
      '--url',
      base,
      '--unseal',
      `${join(keys, 'B-share-1-ann.json')}:${join(keys, 'ann.key.pem')}`,
      '--unseal',
      `${join(keys, 'B-share-2-ben.json')}:${join(keys, 'ben.key.pem')}`,
    );
    assert.match(unseal.stdout, /^unsealed/, unseal.stderr);
    const headers = {
      authorization: `Bearer ${await loginAt(base, 'his.interface', PASSWORD)}`,
      'content-type': 'application/fhir+json',
    };
    let seq = 0;
    /** POSTs a new Patient of shard guangzhou (home site B): the status, and the body when refused. */
    const create = async () => {
      seq++;
      const r = await fetch(`${base}/fhir/R4/Patient`, {
        method: 'POST',
        headers,
        body: JSON.stringify({
          resourceType: 'Patient',
          name: [{ family: '冯', given: [`${seq}`] }],
          identifier: [
            { system: RID, value: makeResidentId({ divisionCode: '440106', birthDate: '1979-04-05', sequence: seq }) },
          ],
        }),
      });
      return { status: r.status, body: await r.text() };
    };
    const untilStatus = async (what: string, status: number, ms: number) => {
      const deadline = performance.now() + ms;
      for (;;) {
        const r = await create();
        if (r.status === status) return r;
        assert.ok(performance.now() < deadline, `timed out waiting for ${what}: last answer ${r.status} ${r.body.slice(0, 300)}`);
        await new Promise((res) => setTimeout(res, 100));
      }
    };
    // Unsealed, the site signs its renewals; the first one granted opens guangzhou for writing.
    await untilStatus('a write accepted under the lease', 201, 30_000);

    witness.child.kill('SIGTERM');
    assert.equal(await witness.exited, 0, witness.errors());
    const stoppedAt = performance.now();
    const refused = await untilStatus('writes refused once the lease ran out', 503, 10_000);
    const refusedAfterMs = performance.now() - stoppedAt;
    assert.match(refused.body, /write lease/);
    assert.ok(refusedAfterMs < 6000, `refused only ${Math.round(refusedAfterMs)} ms after the witness stopped`);
    t.diagnostic(`writes refused ${Math.round(refusedAfterMs)} ms after the witness stopped (lease 3000 ms)`);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.match(metrics, /medmesh_witness_unreachable\{site="B"\} 1/);

    witness = await startWitness();
    const restartedAt = performance.now();
    await untilStatus('writes accepted again with the witness back', 201, 20_000);
    t.diagnostic(`writes accepted again ${Math.round(performance.now() - restartedAt)} ms after the witness restarted`);

    site.child.kill('SIGTERM');
    assert.equal(await site.exited, 0, site.errors());
    witness.child.kill('SIGTERM');
    assert.equal(await witness.exited, 0, witness.errors());
  });
});
