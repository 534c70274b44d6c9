// medmesh keys end to end: custodians, init, offline key management, unsealing a running site.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { verifyCertificate } from '../security/kms/index.ts';

const BIN = fileURLToPath(new URL('../../bin/medmesh.js', import.meta.url));
const EXAMPLE = fileURLToPath(new URL('../../region.example.yaml', import.meta.url));
const { DATABASE_URL: _ignored, ...ENV } = process.env;
const medmesh = (...args: string[]) =>
  spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 120_000, env: ENV });

describe('medmesh keys', () => {
  let dir: string;
  let data: string;
  const site = ['--region', EXAMPLE, '--site', 'B'];
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'medmesh-keys-'));
    data = join(dir, 'data');
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it('creates custodians and a 2-of-3 master key, then manages keys offline with shares', async () => {
    for (const name of ['alice', 'bob', 'carol'])
      assert.equal(medmesh('keys', 'custodian-keygen', '--name', name, '--out', join(dir, 'custodians')).status, 0);
    assert.match(
      medmesh('keys', 'custodian-keygen', '--name', 'alice', '--out', join(dir, 'custodians')).stderr,
      /exists; not overwriting/,
    );
    const custodian = (n: string) => ['--custodian', `${n}=${join(dir, 'custodians', `${n}.pub.pem`)}`];
    const init = medmesh(
      'keys',
      'init',
      ...site,
      '--data',
      data,
      ...custodian('alice'),
      ...custodian('bob'),
      ...custodian('carol'),
      '--threshold',
      '2',
      '--out',
      join(dir, 'shares'),
    );
    assert.equal(init.status, 0, init.stderr);
    assert.match(init.stdout, /2 of 3 shares unseal it/);
    const files = (await readdir(join(dir, 'shares'))).sort();
    assert.deepEqual(
      files,
      ['B-share-1-alice.json', 'B-share-2-bob.json', 'B-share-3-carol.json', 'B.service.pub.pem'],
      'one share per custodian, and the site key other sites trust',
    );
    assert.match(init.stdout, /site B's service key: .*B\.service\.pub\.pem, fingerprint ([0-9a-f]{4}:){15}[0-9a-f]{4}/);
    const again = medmesh(
      'keys',
      'init',
      ...site,
      '--data',
      data,
      ...custodian('alice'),
      ...custodian('bob'),
      '--threshold',
      '2',
      '--out',
      join(dir, 'x'),
    );
    assert.equal(again.status, 1);
    assert.match(again.stderr, /already initialized/);

    const unseal = (n: number, who: string) => [
      '--unseal',
      `${join(dir, 'shares', `B-share-${n}-${who}.json`)}:${join(dir, 'custodians', `${who}.key.pem`)}`,
    ];
    const one = medmesh('keys', 'create', ...site, '--data', data, ...unseal(1, 'alice'), '--name', 'records');
    assert.equal(one.status, 2);
    assert.match(one.stderr, /not enough --unseal shares/);
    const wrongKey = medmesh(
      'keys',
      'create',
      ...site,
      '--data',
      data,
      '--unseal',
      `${join(dir, 'shares', 'B-share-1-alice.json')}:${join(dir, 'custodians', 'bob.key.pem')}`,
      '--name',
      'records',
    );
    assert.equal(wrongKey.status, 1);
    assert.match(wrongKey.stderr, /wrapped for custodian alice/);
    const created = medmesh(
      'keys',
      'create',
      ...site,
      '--data',
      data,
      ...unseal(1, 'alice'),
      ...unseal(3, 'carol'),
      '--name',
      'records',
      '--rotation-days',
      '90',
    );
    assert.equal(created.status, 0, created.stderr);
    assert.equal((JSON.parse(created.stdout) as { rotationPeriodSeconds: number }).rotationPeriodSeconds, 90 * 86_400);
    const rotated = medmesh(
      'keys',
      'rotate',
      ...site,
      '--data',
      data,
      ...unseal(2, 'bob'),
      ...unseal(3, 'carol'),
      '--name',
      'records',
    );
    assert.equal((JSON.parse(rotated.stdout) as { latestVersion: number }).latestVersion, 2);
    // Destruction: a request, signed by two custodians with their own keys; names alone are refused.
    const names = medmesh(
      'keys',
      'destroy',
      ...site,
      '--data',
      data,
      ...unseal(1, 'alice'),
      ...unseal(2, 'bob'),
      '--approver',
      'alice',
      '--approver',
      'bob',
    );
    assert.equal(names.status, 2);
    assert.match(names.stderr, /--approver names are not approvals/);
    const request = join(dir, 'destroy-records-1.json');
    const requested = medmesh(
      'keys',
      'destroy-request',
      ...site,
      '--data',
      data,
      '--name',
      'records',
      '--version',
      '1',
      '--reason',
      'compromised backup tape',
      '--out',
      request,
    );
    assert.equal(requested.status, 0, requested.stderr);
    const approveAs = (who: string, keyOf = who) => {
      const out = join(dir, `approval-${who}-${keyOf}.json`);
      const r = medmesh(
        'keys',
        'approve',
        '--request',
        request,
        '--custodian',
        who,
        '--key',
        join(dir, 'custodians', `${keyOf}.key.pem`),
        '--out',
        out,
      );
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`${who} approves destroying version 1 of key records at site B`));
      return out;
    };
    const destroy = (...approvals: string[]) =>
      medmesh(
        'keys',
        'destroy',
        ...site,
        '--data',
        data,
        ...unseal(1, 'alice'),
        ...unseal(2, 'bob'),
        '--request',
        request,
        ...approvals.flatMap((a) => ['--approval', a]),
      );
    const lone = destroy(approveAs('alice'));
    assert.equal(lone.status, 1);
    assert.match(lone.stderr, /at least two custodians; 1 valid/);
    const impostor = destroy(approveAs('alice'), approveAs('bob', 'carol'));
    assert.equal(impostor.status, 1);
    assert.match(impostor.stderr, /the approval of bob is not made with bob's key/);
    const destroyed = destroy(approveAs('alice'), approveAs('carol'));
    assert.equal(destroyed.status, 0, destroyed.stderr);
    assert.match(destroyed.stderr, /kms_key_version rewritten: the destroyed material is in no row version of the live table/);
    const cert = JSON.parse(destroyed.stdout) as Parameters<typeof verifyCertificate>[0];
    assert.match(cert.document, /"versions":\[1\]/);
    await writeFile(join(dir, 'certificate.json'), destroyed.stdout);
    const pubOf = (who: string) => ['--approver-key', `${who}=${join(dir, 'custodians', `${who}.pub.pem`)}`];
    const checked = medmesh(
      'keys',
      'verify-certificate',
      '--certificate',
      join(dir, 'certificate.json'),
      '--site-key',
      join(dir, 'shares', 'B.service.pub.pem'),
      ...pubOf('alice'),
      ...pubOf('carol'),
    );
    assert.equal(checked.status, 0, checked.stderr);
    assert.match(
      checked.stderr,
      /valid: records version 1 destroyed at site B, approved by alice, carol \(with the keys given\)/,
    );
    const otherKey = medmesh(
      'keys',
      'verify-certificate',
      '--certificate',
      join(dir, 'certificate.json'),
      '--approver-key',
      `carol=${join(dir, 'custodians', 'bob.pub.pem')}`,
    );
    assert.equal(otherKey.status, 1);
    assert.match(
      otherKey.stderr,
      /NOT VALID: no key was given for alice.*the approval of carol is not made with the key given for carol/,
    );
  });

  it('a running site starts sealed, refuses a second opener of its data, and unseals over HTTP', async () => {
    const port = 20000 + Math.floor(Math.random() * 20000);
    const child = spawn(process.execPath, [BIN, 'site', ...site, '--data', data, '--port', String(port)], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: ENV,
    });
    const exited = new Promise<number | null>((r) => child.on('exit', r));
    try {
      await new Promise<void>((resolve, reject) => {
        let out = '';
        child.stdout.on('data', (d: Buffer) => ((out += d.toString()), /serving FHIR R4/.test(out) && resolve()));
        setTimeout(() => reject(new Error(`site did not start: ${out}`)), 180_000).unref();
      });
      const url = `http://127.0.0.1:${port}`;
      const health = (await (await fetch(`${url}/healthz`)).json()) as { kms: { sealed: boolean; unsealProgress: string } };
      assert.deepEqual(health.kms, { initialized: true, sealed: true, unsealProgress: '0/2' });
      const busy = medmesh('keys', 'shares', 'list', ...site, '--data', data);
      assert.equal(busy.status, 1);
      assert.match(busy.stderr, /is in use by process \d+; stop it first/);
      // A tampered share file is refused on the custodian's machine, before anything is sent.
      const share = JSON.parse(await readFile(join(dir, 'shares', 'B-share-1-alice.json'), 'utf8')) as { sealed: string };
      share.sealed = Buffer.from(Buffer.from(share.sealed, 'base64').map((b, i) => (i === 40 ? b ^ 1 : b))).toString('base64');
      await writeFile(join(dir, 'tampered.json'), JSON.stringify(share));
      const tampered = medmesh(
        'keys',
        'unseal',
        '--url',
        url,
        '--unseal',
        `${join(dir, 'tampered.json')}:${join(dir, 'custodians', 'alice.key.pem')}`,
      );
      assert.equal(tampered.status, 1);
      assert.match(tampered.stderr, /does not match/);
      const first = medmesh(
        'keys',
        'unseal',
        '--url',
        url,
        '--unseal',
        `${join(dir, 'shares', 'B-share-2-bob.json')}:${join(dir, 'custodians', 'bob.key.pem')}`,
      );
      assert.match(first.stdout, /still sealed: 1 of 2/);
      const second = medmesh(
        'keys',
        'unseal',
        '--url',
        url,
        '--unseal',
        `${join(dir, 'shares', 'B-share-3-carol.json')}:${join(dir, 'custodians', 'carol.key.pem')}`,
      );
      assert.match(second.stdout, /^unsealed/);
      assert.match(medmesh('keys', 'status', '--url', url).stdout, /"sealed": false/);
      const bad = await fetch(`${url}/kms/unseal`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ share: 'nonsense' }),
      });
      assert.equal(bad.status, 400);
    } finally {
      child.kill('SIGTERM');
      await exited;
    }
  });
});
