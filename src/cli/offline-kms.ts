// Verbs that need the master key open the site's database themselves and are unsealed
// in-process by the custodian shares given on the command line (--unseal share:key).
import { readFile } from 'node:fs/promises';
import { migrate } from '../db/index.ts';
import { Sm2PrivateKey } from '../security/crypto/index.ts';
import { Kms, parseWrappedShare, unwrapShare, type ShareToken } from '../security/kms/index.ts';
import { UsageError, type FlagSpec } from './args.ts';
import { openSiteFromFlags } from './common.ts';

export const UNSEAL_FLAG = {
  unseal: {
    type: 'string',
    multiple: true,
    help: 'a custodian share and its key, as share.json:custodian-key.pem (repeat up to the threshold)',
    placeholder: 'share:key',
  },
} as const satisfies Record<string, FlagSpec>;

export async function openShares(specs: string[]): Promise<ShareToken[]> {
  const tokens: ShareToken[] = [];
  for (const s of specs) {
    const [shareFile, keyFile] = s.split(':', 2);
    if (!shareFile || !keyFile) throw new UsageError(`--unseal ${s}: expected share.json:custodian-key.pem`);
    const w = parseWrappedShare(await readFile(shareFile, 'utf8'));
    tokens.push(unwrapShare(w, Sm2PrivateKey.fromPem(await readFile(keyFile, 'utf8'))));
  }
  return tokens;
}

export async function openKms(f: {
  region?: string | undefined;
  site?: string | undefined;
  data: string;
  'database-url'?: string | undefined;
}) {
  const { region, siteId, db } = await openSiteFromFlags(f);
  const m = await migrate(db);
  if (!m.ok) {
    await db.close();
    throw new UsageError(m.error.message);
  }
  return { db, siteId, region, kms: new Kms({ db, siteId, policy: region.config.policies.crypto }) };
}

/** Opens the site's KMS and unseals it with the given shares, or explains why not. */
export async function openUnsealedKms(f: Parameters<typeof openKms>[0], unsealSpecs: string[]) {
  const tokens = await openShares(unsealSpecs);
  const opened = await openKms(f);
  for (const t of tokens) await opened.kms.submitShare(t);
  if ((await opened.kms.status()).sealed) {
    await opened.db.close();
    throw new UsageError('not enough --unseal shares to open the master key');
  }
  return opened;
}
