// medmesh peers: which other sites this site trusts on its replication links. A site's
// public service key comes from `medmesh keys init` (<site>.service.pub.pem) and travels to
// the other sites' operators out of band; `trust` registers it after the operator compared
// the SM3 fingerprint. Runs against the site's database, like migrate.
import { readFile } from 'node:fs/promises';
import { migrate } from '../db/index.ts';
import { Sm2PublicKey, sm3 } from '../security/crypto/index.ts';
import { helpText, parseFlags, UsageError, type FlagSpec, type VerbSpec } from './args.ts';
import { openSiteFromFlags, SITE_DB_FLAGS } from './common.ts';

const trustSpec = {
  name: 'peers trust',
  summary: "register another site's public service key (its pulls and pages are then accepted)",
  usage: 'medmesh peers trust --region <file> --site <id> --peer <id> --public-key <peer.service.pub.pem> [--fingerprint <hex>]',
  flags: {
    ...SITE_DB_FLAGS,
    peer: { type: 'string', help: 'the other site', placeholder: 'id' },
    'public-key': { type: 'string', help: "the other site's service key (from its keys init)", placeholder: 'pem' },
    fingerprint: { type: 'string', help: 'expected SM3 fingerprint, as its operator read it out', placeholder: 'hex' },
  },
} satisfies VerbSpec<Record<string, FlagSpec>>;

const listSpec = {
  name: 'peers list',
  summary: 'list the sites this site trusts',
  usage: 'medmesh peers list --region <file> --site <id>',
  flags: { ...SITE_DB_FLAGS },
} satisfies VerbSpec<Record<string, FlagSpec>>;

/** SM3 over the key's DER form, in groups of four hex digits (read out over the phone). */
export function keyFingerprint(key: Sm2PublicKey): string {
  return sm3(key.toDer())
    .toString('hex')
    .replace(/(.{4})(?!$)/g, '$1:');
}

export async function peersVerb(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'trust') return trust(rest);
  if (sub === 'list') return list(rest);
  console.log([helpText(trustSpec), '', helpText(listSpec)].join('\n'));
  return sub === '--help' || sub === '-h' ? 0 : 2;
}

async function trust(argv: string[]): Promise<number> {
  const f = parseFlags(trustSpec, argv);
  if (f === 'help') return (console.log(helpText(trustSpec)), 0);
  if (!f.peer) throw new UsageError('--peer is required');
  if (!f['public-key']) throw new UsageError("--public-key is required (the peer's <site>.service.pub.pem)");
  let key: Sm2PublicKey;
  try {
    key = Sm2PublicKey.fromPem(await readFile(f['public-key'], 'utf8'));
  } catch (e) {
    throw new UsageError(
      `--public-key ${f['public-key']}: not an SM2 public key PEM (${e instanceof Error ? e.message : String(e)})`,
    );
  }
  const fingerprint = keyFingerprint(key);
  if (f.fingerprint && f.fingerprint.replace(/:/g, '').toLowerCase() !== fingerprint.replace(/:/g, '')) {
    throw new UsageError(`--fingerprint does not match the key's (${fingerprint}): do not trust this file`);
  }
  const { region, siteId, db } = await openSiteFromFlags(f);
  try {
    if (!region.site(f.peer) || f.peer === siteId)
      throw new UsageError(`--peer ${f.peer} is not another site of region ${region.id}`);
    const m = await migrate(db);
    if (!m.ok) throw new UsageError(m.error.message);
    await db.query(
      `INSERT INTO iam_service (id, kind, public_key) VALUES ($1, 'site', $2)
       ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, public_key = excluded.public_key`,
      [f.peer, key.toPem()],
    );
    console.log(`site ${siteId} now trusts site ${f.peer}, key fingerprint ${fingerprint}`);
    return 0;
  } finally {
    await db.close();
  }
}

async function list(argv: string[]): Promise<number> {
  const f = parseFlags(listSpec, argv);
  if (f === 'help') return (console.log(helpText(listSpec)), 0);
  const { siteId, db } = await openSiteFromFlags(f);
  try {
    const { rows } = await db.query<{ id: string; public_key: string }>(
      "SELECT id, public_key FROM iam_service WHERE kind = 'site' ORDER BY id",
    );
    if (rows.length === 0) console.log(`site ${siteId} trusts no other site yet (medmesh peers trust)`);
    for (const r of rows) console.log(`${r.id.padEnd(8)} ${keyFingerprint(Sm2PublicKey.fromPem(r.public_key))}`);
    return 0;
  } finally {
    await db.close();
  }
}
