// `medmesh witness` as a process: trust a site's key, serve on a free port with an embedded
// PGlite store under a temporary directory (its key made on first start), a renewal through the
// client, and SIGTERM stops it cleanly.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, it } from 'node:test';
import { packHlc } from '../clock/index.ts';
import { WitnessClient } from '../failover/index.ts';
import { eventually, freePort } from '../failover/testing.ts';
import { Sm2PrivateKey } from '../security/crypto/index.ts';
import { EXAMPLE, killChildren, medmesh, startVerb } from './testing.ts';

const dirs: string[] = [];
after(async () => {
  killChildren();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

it('medmesh witness: trust a site, serve, a renewal is granted, SIGTERM stops it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'medmesh-witness-'));
  dirs.push(dir);
  const data = join(dir, 'witness');
  const siteKey = Sm2PrivateKey.generate();
  await writeFile(join(dir, 'B.service.pub.pem'), siteKey.publicKey.toPem());

  const missing = medmesh('witness', 'trust', '--region', EXAMPLE, '--site', 'B', '--data', data);
  assert.equal(missing.status, 2);
  assert.match(missing.stderr, /--public-key is required/);
  const trusted = medmesh(
    'witness',
    'trust',
    '--region',
    EXAMPLE,
    '--site',
    'B',
    '--public-key',
    join(dir, 'B.service.pub.pem'),
    '--data',
    data,
  );
  assert.equal(trusted.status, 0, trusted.stderr);
  assert.match(trusted.stdout, /now trusts site B/);

  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const w = startVerb(
    ['witness', '--region', EXAMPLE, '--data', data, '--listen', `127.0.0.1:${port}`, '--url', url],
    /serving at/,
  );
  await w.started;
  assert.match(w.output(), /made the witness's key/);
  const client = new WitnessClient({ urls: [url], siteId: 'B', key: siteKey });
  let epoch = 0;
  await eventually('a renewal to be granted', async () => {
    const r = await client.renew({ site: 'B', shards: [{ shard: 'guangzhou', position: packHlc(Date.now(), 0) }] });
    const a = r.ok ? r.value.answers[0] : undefined;
    if (a?.ok) epoch = a.lease.epoch;
    return a?.ok === true;
  });
  assert.equal(epoch, 1);
  w.child.kill('SIGTERM');
  assert.equal(await w.exited, 0, w.errors());
});
