// Demo only: the custodians' keys and shares are kept beside the demo data so the demo
// region can unseal itself at start. A real region keeps each custodian's key offline
// with that person (docs/keys.md).
import { randomBytes } from 'node:crypto';
import { EMPI_BLIND_INDEX_KEY } from '../records/index.ts';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Sm2PrivateKey } from '../security/crypto/index.ts';
import { parseWrappedShare, unwrapShare, type Kms } from '../security/kms/index.ts';

const CUSTODIANS = ['custodian-1', 'custodian-2', 'custodian-3'];

export async function unsealDemoSite(kms: Kms, opts: { dataRoot: string; siteId: string }): Promise<'initialized' | 'unsealed'> {
  const keysDir = join(opts.dataRoot, 'custodians');
  const sharesDir = join(opts.dataRoot, 'shares', opts.siteId);
  await mkdir(keysDir, { recursive: true });
  const keys = new Map<string, Sm2PrivateKey>();
  for (const name of CUSTODIANS) {
    const file = join(keysDir, `${name}.key.pem`);
    const pem = await readFile(file, 'utf8').catch(() => undefined);
    const key = pem ? Sm2PrivateKey.fromPem(pem) : Sm2PrivateKey.generate();
    if (!pem) await writeFile(file, key.toPem(), { mode: 0o600 });
    keys.set(name, key);
  }
  if (!(await kms.status()).initialized) {
    const { shares } = await kms.init({
      custodians: CUSTODIANS.map((name) => ({ name, publicKey: keys.get(name)!.publicKey })),
      threshold: 2,
    });
    await mkdir(sharesDir, { recursive: true });
    for (const s of shares) await writeFile(join(sharesDir, `${s.custodian}.json`), JSON.stringify(s, null, 2));
    return 'initialized';
  }
  const files = (await readdir(sharesDir)).filter((f) => f.endsWith('.json')).sort();
  for (const f of files.slice(0, 2)) {
    const w = parseWrappedShare(await readFile(join(sharesDir, f), 'utf8'));
    await kms.submitShare(unwrapShare(w, keys.get(w.custodian)!));
  }
  return 'unsealed';
}

/** Demo only: the region-wide EMPI key, made once and kept beside the custodian keys, installed at a site. */
export async function installDemoEmpiKey(kms: Kms, opts: { dataRoot: string }): Promise<void> {
  if ((await kms.listKeys()).includes(EMPI_BLIND_INDEX_KEY)) return;
  const file = join(opts.dataRoot, 'custodians', `${EMPI_BLIND_INDEX_KEY}.hex`);
  const hex = (await readFile(file, 'utf8').catch(() => undefined))?.trim() ?? randomBytes(16).toString('hex');
  await writeFile(file, `${hex}\n`, { mode: 0o600 });
  await kms.createKey(EMPI_BLIND_INDEX_KEY, { material: Buffer.from(hex, 'hex') });
}
