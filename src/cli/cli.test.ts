// End-to-end tests of the medmesh command: real processes, real ports, real signals.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { startTestServer } from '../site/testing.ts';
import { dcmtk, PYDICOM } from '../imaging/testing.ts';
import { hotp, totpStep } from '../security/identity/index.ts';
import { BIN, ENV, EXAMPLE, killChildren, loginAt, medmesh, startVerb } from './testing.ts';

describe('medmesh CLI', () => {
  const dirs: string[] = [];
  const tmp = async () => {
    const d = await mkdtemp(join(tmpdir(), 'medmesh-cli-'));
    dirs.push(d);
    return d;
  };
  after(async () => {
    // A failed test must not leave a server behind (it would keep the runner waiting).
    killChildren();
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('prints usage, and names a wrong command or flag with a non-zero exit', () => {
    const none = medmesh();
    assert.equal(none.status, 2);
    assert.match(none.stdout, /Usage: medmesh <command>/);
    const help = medmesh('--help');
    assert.equal(help.status, 0);
    const unknown = medmesh('frobnicate');
    assert.equal(unknown.status, 2);
    assert.match(unknown.stderr, /unknown command 'frobnicate'/);
    const flag = medmesh('demo', '--bogus');
    assert.equal(flag.status, 2);
    assert.match(flag.stderr, /Unknown option '--bogus'/);
    for (const verb of ['demo', 'site', 'migrate', 'seed']) {
      const h = medmesh(verb, '--help');
      assert.equal(h.status, 0, verb);
      assert.match(h.stdout, new RegExp(`medmesh ${verb} — `), verb);
    }
    const count = medmesh('seed', '--region', EXAMPLE, '--site', 'B', '--patients', 'many');
    assert.equal(count.status, 2);
    assert.match(count.stderr, /--patients must be an integer/);
    const peers = medmesh('site', '--region', EXAMPLE, '--site', 'B', '--dicom-port', '11112', '--dicom-peers', 'PACS=somewhere');
    assert.equal(peers.status, 2);
    assert.match(peers.stderr, /--dicom-peers: "PACS=somewhere" is not AE=host:port/);
    const dport = medmesh('site', '--region', EXAMPLE, '--site', 'B', '--dicom-port', '99999');
    assert.match(dport.stderr, /--dicom-port must be 0-65535/);
    const noDicom = medmesh('site', '--region', EXAMPLE, '--site', 'B', '--collect-from', 'pacs=ORTHANC@127.0.0.1:4242');
    assert.equal(noDicom.status, 2);
    assert.match(noDicom.stderr, /--collect-from pacs \(DIMSE\) needs --dicom-port/);
    const badSource = medmesh(
      'site',
      '--region',
      EXAMPLE,
      '--site',
      'B',
      '--dicom-port',
      '11112',
      '--collect-from',
      'pacs=ORTHANC:4242',
    );
    assert.match(
      badSource.stderr,
      /--collect-from: "pacs=ORTHANC:4242" is neither id=AE@host:port nor id=http\(s\):\/\/host:port\/path/,
    );
    const badUrl = medmesh('site', '--region', EXAMPLE, '--site', 'B', '--collect-from', 'web=ftp://pacs/dicom-web');
    assert.match(badUrl.stderr, /"web=ftp:\/\/pacs\/dicom-web" is neither/);
    const noEndpoint = medmesh('site', '--region', EXAMPLE, '--site', 'B', '--blobs', 's3://medmesh-images/site-b', {
      MEDMESH_S3_ENDPOINT: '',
    });
    assert.equal(noEndpoint.status, 2);
    assert.match(noEndpoint.stderr, /--blobs s3:\/\/medmesh-images\/site-b needs MEDMESH_S3_ENDPOINT in the environment/);
    const noKey = medmesh('site', '--region', EXAMPLE, '--site', 'B', '--blobs', 's3://medmesh-images', {
      MEDMESH_S3_ENDPOINT: 'http://127.0.0.1:9000',
      AWS_ACCESS_KEY_ID: '',
    });
    assert.match(noKey.stderr, /needs AWS_ACCESS_KEY_ID/);
    const badBucket = medmesh('site', '--region', EXAMPLE, '--site', 'B', '--blobs', 's3://B');
    assert.match(badBucket.stderr, /an S3 location is s3:\/\/bucket or s3:\/\/bucket\/prefix/);
    const twice = medmesh(
      'site',
      '--region',
      EXAMPLE,
      '--site',
      'B',
      '--dicom-port',
      '11112',
      '--collect-from',
      'p=A@h:1,p=B@h:2',
    );
    assert.match(twice.stderr, /source id p is given twice/);
    const every = medmesh(
      'site',
      '--region',
      EXAMPLE,
      '--site',
      'B',
      '--dicom-port',
      '11112',
      '--collect-from',
      'p=A@h:1',
      '--collect-every',
      '0',
    );
    assert.match(every.stderr, /--collect-every must be 1-1440 minutes \(got 0\)/);
  });

  it('checks a region file and reports every problem with its path', async () => {
    const ok = medmesh('region', 'check', '--region', EXAMPLE);
    assert.equal(ok.status, 0);
    assert.match(ok.stdout, /shard shenzhen: residency C -> B/);
    const bad = join(await tmp(), 'bad.yaml');
    await writeFile(
      bad,
      'region: r\nwitness: { url: http://w }\nsites:\n' +
        '  - { id: B, kind: cloud, url: http://b, location: { lat: 0, lon: 0 } }\nshards: []\n',
    );
    const r = medmesh('region', 'check', '--region', bad);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /sites\[0\]\.kind: must be one of private, public, edge/);
    assert.match(r.stderr, /shards: must list at least one shard/);
    const site = medmesh('site', '--region', bad, '--site', 'B');
    assert.equal(site.status, 2);
    assert.match(site.stderr, /region file .* is not valid/);
    const unknownSite = medmesh('migrate', '--region', EXAMPLE, '--site', 'Z', '--data', await tmp());
    assert.equal(unknownSite.status, 2);
    assert.match(unknownSite.stderr, /--site Z is not in region guangdong \(sites: B, C, A\)/);
  });

  it('migrates, seeds and serves one site, and stops on SIGTERM', async () => {
    const data = await tmp();
    const m = medmesh('migrate', '--region', EXAMPLE, '--site', 'C', '--data', data);
    assert.equal(m.status, 0, m.stderr);
    assert.match(m.stdout, /applying 0001 records/);
    assert.match(medmesh('migrate', '--region', EXAMPLE, '--site', 'C', '--data', data).stdout, /up to date/);
    const s = medmesh('seed', '--region', EXAMPLE, '--site', 'C', '--data', data, '--patients', '10');
    assert.equal(s.status, 0, s.stderr);
    const seeded = Number(/seeded (\d+) patients/.exec(s.stdout)?.[1]);
    assert.ok(seeded > 0 && seeded < 10, `only patients homed at C are seeded: ${s.stdout}`);
    // A site serves data only once its KMS is unsealed: two custodians, 2-of-2.
    const keys = join(await tmp(), 'keys');
    for (const n of ['ann', 'ben']) assert.equal(medmesh('keys', 'custodian-keygen', '--name', n, '--out', keys).status, 0);
    const init = medmesh(
      'keys',
      'init',
      '--region',
      EXAMPLE,
      '--site',
      'C',
      '--data',
      data,
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
    // The interface account that reads the count below; users are created against the site's database.
    const bad = medmesh(
      'users',
      'add',
      '--region',
      EXAMPLE,
      '--site',
      'C',
      '--data',
      data,
      '--username',
      'his.interface',
      '--role',
      'integration',
    );
    assert.match(bad.stderr, /MEDMESH_PASSWORD/, 'no password on the command line');
    const added = medmesh(
      'users',
      'add',
      '--region',
      EXAMPLE,
      '--site',
      'C',
      '--data',
      data,
      '--username',
      'his.interface',
      '--role',
      'integration',
      { MEDMESH_PASSWORD: 'interface-pass-2026' },
    );
    assert.equal(added.status, 0, added.stderr);
    const port = 20000 + Math.floor(Math.random() * 20000);
    const dicomPort = port + 1;
    const site = startVerb(
      [
        'site',
        '--region',
        EXAMPLE,
        '--site',
        'C',
        '--data',
        data,
        '--port',
        String(port),
        '--dicom-port',
        String(dicomPort),
        '--dicom-peers',
        'MODALITY=127.0.0.1:104',
      ],
      /DICOM AE MEDMESH_C/,
    );
    await site.started;
    assert.equal((await fetch(`http://127.0.0.1:${port}/fhir/R4/Patient?_summary=count`)).status, 503, 'sealed: no data');
    const echo = () => dcmtk('echoscu', ['-aet', 'MODALITY', '-aec', 'MEDMESH_C', '127.0.0.1', String(dicomPort)]);
    assert.match(
      (await echo()).out,
      /Association Rejected[\s\S]*Temporary Congestion/i,
      'sealed: no DICOM either (nothing could be audited)',
    );
    const unseal = medmesh(
      'keys',
      'unseal',
      '--url',
      `http://127.0.0.1:${port}`,
      '--unseal',
      `${join(keys, 'C-share-1-ann.json')}:${join(keys, 'ann.key.pem')}`,
      '--unseal',
      `${join(keys, 'C-share-2-ben.json')}:${join(keys, 'ben.key.pem')}`,
    );
    assert.match(unseal.stdout, /^unsealed/, unseal.stderr);
    assert.equal((await fetch(`http://127.0.0.1:${port}/fhir/R4/Patient?_summary=count`)).status, 401, 'no token: no data');
    const token = await loginAt(`http://127.0.0.1:${port}`, 'his.interface', 'interface-pass-2026');
    const count = (await (
      await fetch(`http://127.0.0.1:${port}/fhir/R4/Patient?_summary=count`, { headers: { authorization: `Bearer ${token}` } })
    ).json()) as { total: number };
    assert.equal(count.total, seeded);
    assert.equal((await echo()).code, 0, 'unsealed: DICOM answers');
    const sent = await dcmtk('dcmsend', [
      '-aet',
      'MODALITY',
      '-aec',
      'MEDMESH_C',
      '127.0.0.1',
      String(dicomPort),
      join(PYDICOM, 'test_files', 'CT_small.dcm'),
    ]);
    assert.equal(sent.code, 0, sent.out);
    const blobs = await readdir(join(data, 'C-blobs'), { recursive: true });
    assert.equal(blobs.filter((b) => b.endsWith('.mmf')).length, 1, 'the file is in the blob folder, encrypted');
    assert.equal((await fetch(`http://127.0.0.1:${port}/readyz`)).status, 200);
    site.child.kill('SIGTERM');
    assert.equal(await site.exited, 0);
    // Those requests were audited; the log verifies offline with the custodians' shares.
    const unsealArgs = [
      '--unseal',
      `${join(keys, 'C-share-1-ann.json')}:${join(keys, 'ann.key.pem')}`,
      '--unseal',
      `${join(keys, 'C-share-2-ben.json')}:${join(keys, 'ben.key.pem')}`,
    ];
    // No peer of this lone site runs, so none can confirm its log: verify says so and fails, unless
    // told to check the local log alone.
    const unconfirmed = medmesh('audit', 'verify', '--region', EXAMPLE, '--site', 'C', '--data', data, ...unsealArgs);
    assert.equal(unconfirmed.status, 1);
    assert.match(unconfirmed.stderr + unconfirmed.stdout, /NOT CONFIRMED.*no peer confirmed it/s);
    const verified = medmesh('audit', 'verify', '--region', EXAMPLE, '--site', 'C', '--data', data, '--offline', ...unsealArgs);
    assert.equal(verified.status, 0, verified.stderr);
    const report = JSON.parse(verified.stdout) as { ok: boolean; entries: number };
    // The unsealing share, refused count, login, count, then DICOM: association and echo, association and store
    // (the sealed 503 and the sealed DICOM refusal could not be audited).
    assert.ok(report.ok && report.entries === 8, verified.stdout);
    // Retention: nothing is older than the online period (183 days) yet, so nothing leaves.
    const exported = medmesh(
      'audit',
      'export',
      '--region',
      EXAMPLE,
      '--site',
      'C',
      '--data',
      data,
      '--out',
      join(data, 'archive'),
      '--prune',
      ...unsealArgs,
    );
    assert.equal(exported.status, 0, exported.stderr);
    assert.match(
      exported.stdout,
      /0 segment\(s\) exported; entries younger than 183 days .* stay online[\s\S]*pruned 0 exported entries/,
    );
    const noKey = medmesh('audit', 'verify-file', '--file', join(data, 'archive', 'x.jsonl'));
    assert.match(noKey.stderr, /--signer-key is required/);
    const { openPglite } = await import('../db/index.ts');
    const db = await openPglite({ dataDir: join(data, 'C') });
    await db.transaction(async (tx) => {
      await tx.query('SET LOCAL session_replication_role = replica');
      await tx.query(
        `UPDATE audit_entry SET entry = convert_to(replace(convert_from(entry, 'UTF8'), 'success', 'failure'), 'UTF8')
          WHERE seq = 0`,
      );
    });
    await db.close();
    const tampered = medmesh('audit', 'verify', '--region', EXAMPLE, '--site', 'C', '--data', data, ...unsealArgs);
    assert.equal(tampered.status, 1);
    assert.deepEqual((JSON.parse(tampered.stdout) as { invalidMac: number[] }).invalidMac, [0]);
  });

  it('runs the demo region: the README calls work, Ctrl-C stops cleanly, data survives a restart', async () => {
    const data = await tmp();
    const offset = 20000 + Math.floor(Math.random() * 20000);
    const demo = startVerb(
      ['demo', '--data', data, '--patients', '8', '--port-offset', String(offset)],
      /Ready\. Press Ctrl-C to stop\./,
    );
    await demo.started;
    const fhirB = `http://127.0.0.1:${7101 + offset}/fhir/R4`;
    assert.match(demo.output(), new RegExp(`site B +private +${fhirB.replace(/[.]/g, '\\.')}`));
    assert.match(demo.output(), /seeded 8 patients/);
    const siteB = `http://127.0.0.1:${7101 + offset}`;
    const registrar = { authorization: `Bearer ${await loginAt(siteB, 'demo.registrar', 'medmesh-demo-2026')}` };
    const doctor = { authorization: `Bearer ${await loginAt(siteB, 'demo.doctor', 'medmesh-demo-2026')}` };
    const created = await fetch(`${fhirB}/Patient`, {
      method: 'POST',
      headers: { 'content-type': 'application/fhir+json', ...registrar },
      body: JSON.stringify({
        resourceType: 'Patient',
        name: [{ family: '陈', given: ['小明'] }],
        gender: 'male',
        birthDate: '1990-01-01',
        identifier: [{ system: 'urn:oid:2.16.156.10011.1.3', value: '440106199001011235' }],
      }),
    });
    assert.equal(created.status, 201);
    const id = ((await created.json()) as { id: string }).id;
    assert.equal((await fetch(`${fhirB}/Patient/${id}`, { headers: registrar })).status, 200);
    // Replicated to C (B's DR twin for shard guangzhou) within moments; never to the public cloud A.
    const siteC = `http://127.0.0.1:${7102 + offset}`;
    const registrarC = { authorization: `Bearer ${await loginAt(siteC, 'demo.registrar', 'medmesh-demo-2026')}` };
    let atC = 0;
    for (let i = 0; i < 100 && atC !== 200; i++) {
      atC = (await fetch(`${siteC}/fhir/R4/Patient/${id}`, { headers: registrarC })).status;
      if (atC !== 200) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(atC, 200, 'the patient written at B is readable at C');
    const siteA = `http://127.0.0.1:${7103 + offset}`;
    const registrarA = { authorization: `Bearer ${await loginAt(siteA, 'demo.registrar', 'medmesh-demo-2026')}` };
    assert.equal(
      (await fetch(`${siteA}/fhir/R4/Patient/${id}`, { headers: registrarA })).status,
      404,
      'core data never reaches the public cloud',
    );
    // ... but A can route it: the EMPI directory finds the patient's home by resident ID.
    let routed: unknown;
    for (let i = 0; i < 100; i++) {
      const r = await fetch(`${siteA}/empi/lookup`, {
        method: 'POST',
        headers: { ...registrarA, 'content-type': 'application/json' },
        body: JSON.stringify({ system: 'urn:oid:2.16.156.10011.1.3', value: '440106199001011235' }),
      });
      routed = await r.json();
      if ((routed as { patients?: unknown[] }).patients?.length) break;
      await new Promise((res) => setTimeout(res, 100));
    }
    assert.deepEqual(routed, { patients: [{ patientId: id, homeShard: 'guangzhou', activeSite: 'B' }] });
    assert.equal((await fetch(`${fhirB}/Patient/${id}`)).status, 401);
    assert.equal(
      (await fetch(`${fhirB}/Patient/${id}`, { headers: doctor })).status,
      403,
      'no care relationship with a patient just registered',
    );
    const found = (await (
      await fetch(`${fhirB}/Patient?name=${encodeURIComponent('陈小明')}`, { headers: registrar })
    ).json()) as { entry?: unknown[] };
    assert.equal(found.entry?.length, 1);
    const count = async (h: Record<string, string>) =>
      ((await (await fetch(`${fhirB}/Patient?_summary=count`, { headers: h })).json()) as { total: number }).total;
    const [all, mine] = [await count(registrar), await count(doctor)];
    assert.ok(
      mine > 0 && mine < all,
      `the cardiology doctor counts only patients with a cardiology encounter (${mine} of ${all})`,
    );
    // Images: a DICOM file sent to B's AE is found and fetched over DICOMweb.
    assert.match(demo.output(), new RegExp(`DICOM AE MEDMESH_B at 127\\.0\\.0\\.1:${11112 + offset}`));
    const sent = await dcmtk('dcmsend', [
      '-aec',
      'MEDMESH_B',
      '127.0.0.1',
      String(11112 + offset),
      join(PYDICOM, 'test_files', 'CT_small.dcm'),
    ]);
    assert.equal(sent.code, 0, sent.out);
    const his = { authorization: `Bearer ${await loginAt(siteB, 'demo.integration', 'medmesh-demo-2026')}` };
    const studiesAs = async (headers: Record<string, string>) =>
      (
        (await (await fetch(`${siteB}/dicomweb/studies?StudyDate=20040101-`, { headers })).json()) as Array<
          Record<string, { Value?: unknown[] }>
        >
      ).map((x) => x['0020000D']?.Value?.[0]);
    assert.deepEqual(
      await studiesAs(his),
      ['1.3.6.1.4.1.5962.1.2.1.20040119072730.12322'],
      'the interface account sees every study',
    );
    assert.deepEqual(await studiesAs(doctor), [], 'the doctor has no care relationship with this patient');
    // The administrator's second factor: the secret the demo kept, as an authenticator app would use it.
    assert.match(demo.output(), /demo\.administrator also needs a TOTP code/);
    const secret = JSON.parse(await readFile(join(data, 'totp', 'B.administrator.json'), 'utf8')) as {
      hex: string;
      otpauthUri: string;
    };
    assert.match(secret.otpauthUri, /^otpauth:\/\/totp\/medmesh:demo\.administrator\?secret=[A-Z2-7]+&issuer=medmesh-B$/);
    const withoutCode = await fetch(`${siteB}/auth/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'demo.administrator', password: 'medmesh-demo-2026' }),
    });
    assert.equal(withoutCode.status, 401);
    const code = hotp(Buffer.from(secret.hex, 'hex'), totpStep(Date.now()));
    const admin = { authorization: `Bearer ${await loginAt(siteB, 'demo.administrator', 'medmesh-demo-2026', code)}` };
    assert.equal(
      (await fetch(`${siteB}/replication/dead-letters`, { headers: admin })).status,
      200,
      'an operator API answers the administrator',
    );
    assert.equal((await fetch(`${siteB}/replication/dead-letters`, { headers: registrar })).status, 403);
    // The sites check and cosign each other's audit checkpoints on their own; B's log is confirmed by its peers.
    const auditorB = { authorization: `Bearer ${await loginAt(siteB, 'demo.auditor', 'medmesh-demo-2026')}` };
    for (const until = Date.now() + 90_000; ;) {
      const w = (await (await fetch(`${siteB}/audit/witness`, { headers: auditorB })).json()) as {
        peers: Array<{ state: string; heldTreeSize?: number }>;
      };
      const v = (await (await fetch(`${siteB}/audit/verify`, { headers: auditorB })).json()) as {
        report: { ok: boolean };
        confirmed: boolean;
      };
      if (
        w.peers.length === 2 &&
        w.peers.every((p) => p.state === 'ok' && (p.heldTreeSize ?? 0) > 0) &&
        v.report.ok &&
        v.confirmed
      )
        break;
      assert.ok(Date.now() < until, `the demo sites do not witness each other's audit logs: ${JSON.stringify({ w, v })}`);
      await new Promise((r) => setTimeout(r, 500));
    }
    const beforeStop = demo.errors().length;
    demo.child.kill('SIGINT');
    assert.equal(await demo.exited, 0);
    assert.match(demo.output(), /stopped cleanly/);
    assert.doesNotMatch(demo.errors().slice(beforeStop), /replication \w+ -> \w+:/, 'stopping reports no broken links');

    const again = startVerb(['demo', '--data', data, '--port-offset', String(offset)], /Ready\./);
    await again.started;
    assert.match(again.output(), /existing data kept/);
    const registrarAgain = { authorization: `Bearer ${await loginAt(siteB, 'demo.registrar', 'medmesh-demo-2026')}` };
    assert.equal(
      (await fetch(`${fhirB}/Patient/${id}`, { headers: registrarAgain })).status,
      200,
      'a patient written before the restart is still there',
    );
    again.child.kill('SIGINT');
    assert.equal(await again.exited, 0);
  });
  it('medmesh verify asks a site to check its replicas, prints what differs and repairs it', async () => {
    const [b, c] = [await startTestServer({ siteId: 'B' }), await startTestServer({ siteId: 'C' })];
    try {
      const keyOf = (s: typeof b) => s.site.kms.signingKey()!.key.publicKey;
      await b.site.identity.registerService({ id: 'C', kind: 'site', publicKey: keyOf(c) });
      await c.site.identity.registerService({ id: 'B', kind: 'site', publicKey: keyOf(b) });
      b.site.peers.set('C', c.base);
      c.site.peers.set('B', b.base);
      const org = await fetch(`${b.fhir}/Organization`, {
        method: 'POST',
        headers: { ...b.auth, 'content-type': 'application/fhir+json' },
        body: JSON.stringify({ resourceType: 'Organization', name: '口腔科' }),
      });
      const id = ((await org.json()) as { id: string }).id;
      const token = c.as(['administrator']).authorization!.replace(/^Bearer /, '');
      const run = (...args: string[]) =>
        new Promise<{ status: number | null; out: string; err: string }>((resolve) => {
          const child = spawn(process.execPath, [BIN, 'verify', '--url', c.base, '--peer', 'B', '--grace', '0', ...args], {
            env: { ...ENV, MEDMESH_TOKEN: token },
          });
          let [out, err] = ['', ''];
          child.stdout.on('data', (d: Buffer) => (out += d.toString()));
          child.stderr.on('data', (d: Buffer) => (err += d.toString()));
          child.on('exit', (status) => resolve({ status, out, err }));
        });
      const before = await run();
      assert.equal(before.status, 1, before.err);
      assert.match(
        before.out,
        new RegExp(
          'C vs B at HLC [0-9a-f]{16}: 1 resources .*accuracy 0\\.000 %\\n' +
            `  Organization/${id}: [0-9a-f]{16}-B missing-here \\(origin B\\)`,
        ),
      );
      const repaired = await run('--repair');
      assert.equal(repaired.status, 0, repaired.out + repaired.err);
      assert.match(repaired.out, /repaired: 1 divergent before; fetched 1, replaced 0, refused 0/);
      assert.match(repaired.out, /accuracy 100\.000 %\n[^]*in step/);
      const noToken = medmesh('verify', '--url', c.base);
      assert.equal(noToken.status, 2);
      assert.match(noToken.stderr, /MEDMESH_TOKEN: set it to an administrator or operator access token/);
      assert.match(medmesh('verify', '--url', 'nope', { MEDMESH_TOKEN: 'x' }).stderr, /--url: the base URL/);
    } finally {
      await c.close();
      await b.close();
    }
  });
});
