// medmesh keys: the KMS for operators. Verbs that need the master key (init, create, rotate,
// rewrap, destroy) open the site's database directly and are unsealed in-process by the
// custodian shares given with --unseal; unseal and status talk to a running site over HTTP.
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Sm2PrivateKey, Sm2PublicKey } from '../security/crypto/index.ts';
import { encodeShareToken, parseWrappedShare, type Custodian } from '../security/kms/index.ts';
import { helpText, intFlag, parseFlags, UsageError, type FlagSpec, type VerbSpec } from './args.ts';
import { SITE_DB_FLAGS } from './common.ts';
import { keyFingerprint } from './verb-peers.ts';
import { openKms, openShares, openUnsealedKms, UNSEAL_FLAG } from './offline-kms.ts';
import { approve, destroy, DESTROY_SUBCOMMANDS, destroyRequest, verifyCertificateVerb } from './verb-keys-destroy.ts';

const SUBCOMMANDS = {
  'custodian-keygen': 'make an SM2 key pair for a custodian (private key file mode 0600)',
  init: "create the site's master key and write one wrapped share per custodian",
  status: 'show whether a running site is sealed',
  unseal: 'open your share and submit it to a running site',
  create: 'create a named key',
  rotate: 'add a new version to a named key',
  rewrap: 're-encrypt an envelope file to the newest key version',
  ...DESTROY_SUBCOMMANDS,
  shares: 'list own shares, deposit a share at another site, fetch deposited shares',
} as const;

export async function keysVerb(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === '--help' || sub === '-h') {
    console.log(
      [
        'medmesh keys — key management service',
        '',
        'Usage: medmesh keys <command> [options]',
        '',
        ...Object.entries(SUBCOMMANDS).map(([k, v]) => `  ${k.padEnd(18)} ${v}`),
        '',
        "Run 'medmesh keys <command> --help' for its options.",
      ].join('\n'),
    );
    return sub === undefined ? 2 : 0;
  }
  switch (sub) {
    case 'custodian-keygen':
      return custodianKeygen(rest);
    case 'init':
      return init(rest);
    case 'status':
      return status(rest);
    case 'unseal':
      return unseal(rest);
    case 'create':
    case 'rotate':
    case 'rewrap':
      return manage(sub, rest);
    case 'destroy-request':
      return destroyRequest(rest);
    case 'approve':
      return approve(rest);
    case 'destroy':
      return destroy(rest);
    case 'verify-certificate':
      return verifyCertificateVerb(rest);
    case 'shares':
      return shares(rest);
    default:
      throw new UsageError(`unknown keys command ${sub} (one of ${Object.keys(SUBCOMMANDS).join(', ')})`);
  }
}

async function custodianKeygen(argv: string[]): Promise<number> {
  const spec = {
    name: 'keys custodian-keygen',
    summary: SUBCOMMANDS['custodian-keygen'],
    usage: 'medmesh keys custodian-keygen --name <custodian> --out <dir>',
    flags: {
      name: { type: 'string', help: 'custodian name', placeholder: 'name' },
      out: { type: 'string', help: 'directory for <name>.key.pem and <name>.pub.pem', default: '.', placeholder: 'dir' },
    },
  } satisfies VerbSpec<Record<string, FlagSpec>>;
  const f = parseFlags(spec, argv);
  if (f === 'help') return (console.log(helpText(spec)), 0);
  if (!f.name || !/^[A-Za-z][A-Za-z0-9_-]{0,31}$/.test(f.name))
    throw new UsageError('--name is required: letters, digits, _ or -');
  const key = Sm2PrivateKey.generate();
  await mkdir(f.out, { recursive: true });
  const priv = join(f.out, `${f.name}.key.pem`);
  await writeFile(priv, key.toPem(), { mode: 0o600, flag: 'wx' }).catch((e: NodeJS.ErrnoException) => {
    throw new UsageError(
      e.code === 'EEXIST' ? `${priv} exists; not overwriting a custodian key` : `cannot write ${priv}: ${e.message}`,
    );
  });
  await chmod(priv, 0o600);
  await writeFile(join(f.out, `${f.name}.pub.pem`), key.publicKey.toPem());
  console.log(`custodian ${f.name}: private key ${priv} (keep it offline), public key ${join(f.out, `${f.name}.pub.pem`)}`);
  return 0;
}

async function init(argv: string[]): Promise<number> {
  const spec = {
    name: 'keys init',
    summary: SUBCOMMANDS.init,
    usage: 'medmesh keys init --region <file> --site <id> --custodian <name=pub.pem> ... [--threshold 3] --out <dir>',
    flags: {
      ...SITE_DB_FLAGS,
      custodian: {
        type: 'string',
        multiple: true,
        help: "custodian name and SM2 public key file (or a site's key)",
        placeholder: 'name=pub.pem',
      },
      threshold: { type: 'string', help: 'shares needed to unseal', default: '3', placeholder: 'k' },
      out: { type: 'string', help: 'directory for the wrapped share files', default: '.', placeholder: 'dir' },
    },
  } satisfies VerbSpec<Record<string, FlagSpec>>;
  const f = parseFlags(spec, argv);
  if (f === 'help') return (console.log(helpText(spec)), 0);
  const custodians: Custodian[] = [];
  for (const c of f.custodian) {
    const [name, file] = c.split('=', 2);
    if (!name || !file) throw new UsageError(`--custodian ${c}: expected name=public-key.pem`);
    custodians.push({
      name,
      publicKey: Sm2PublicKey.fromPem(
        await readFile(file, 'utf8').catch(() => {
          throw new UsageError(`--custodian ${c}: cannot read ${file}`);
        }),
      ),
    });
  }
  if (custodians.length < 2) throw new UsageError('at least two --custodian are required (default threshold 3 of 5)');
  const threshold = intFlag('threshold', f.threshold, 2, custodians.length);
  const { db, siteId, kms } = await openKms(f);
  try {
    const r = await kms.init({ custodians, threshold });
    await mkdir(f.out, { recursive: true });
    for (const s of r.shares) {
      const file = join(f.out, `${siteId}-share-${s.index}-${s.custodian}.json`);
      await writeFile(file, `${JSON.stringify(s, null, 2)}\n`);
      console.log(`share ${s.index} for ${s.custodian}: ${file}`);
    }
    console.log(
      `site ${siteId}: master key ${r.cmkId} created; ${threshold} of ${custodians.length} shares unseal it. ` +
        'Hand each file to its custodian; deposit copies at two other sites (medmesh keys shares deposit).',
    );
    const service = await kms.signingPublicKey();
    if (service) {
      const file = join(f.out, `${siteId}.service.pub.pem`);
      await writeFile(file, service.toPem());
      console.log(
        `site ${siteId}'s service key: ${file}, fingerprint ${keyFingerprint(service)}; ` +
          'the other sites trust it with medmesh peers trust',
      );
    }
    return 0;
  } finally {
    await db.close();
  }
}

async function status(argv: string[]): Promise<number> {
  const spec = {
    name: 'keys status',
    summary: SUBCOMMANDS.status,
    usage: 'medmesh keys status --url <site base url>',
    flags: { url: { type: 'string', help: 'site base URL', placeholder: 'url' } },
  } satisfies VerbSpec<Record<string, FlagSpec>>;
  const f = parseFlags(spec, argv);
  if (f === 'help') return (console.log(helpText(spec)), 0);
  if (!f.url) throw new UsageError('--url is required');
  console.log(JSON.stringify(await siteJson(`${f.url}/kms/status`), null, 2));
  return 0;
}

async function unseal(argv: string[]): Promise<number> {
  const spec = {
    name: 'keys unseal',
    summary: SUBCOMMANDS.unseal,
    usage: 'medmesh keys unseal --url <site base url> --unseal <share.json:key.pem> ...',
    flags: { url: { type: 'string', help: 'site base URL', placeholder: 'url' }, ...UNSEAL_FLAG },
  } satisfies VerbSpec<Record<string, FlagSpec>>;
  const f = parseFlags(spec, argv);
  if (f === 'help') return (console.log(helpText(spec)), 0);
  if (!f.url || f.unseal.length === 0) throw new UsageError('--url and at least one --unseal are required');
  let last: unknown;
  for (const token of await openShares(f.unseal))
    last = await siteJson(`${f.url}/kms/unseal`, { share: encodeShareToken(token) });
  const s = last as { sealed: boolean; progress: number; threshold: number };
  console.log(s.sealed ? `still sealed: ${s.progress} of ${s.threshold} shares submitted` : 'unsealed');
  return 0;
}

async function manage(sub: 'create' | 'rotate' | 'rewrap', argv: string[]): Promise<number> {
  const spec = {
    name: `keys ${sub}`,
    summary: SUBCOMMANDS[sub],
    usage:
      `medmesh keys ${sub} --region <file> --site <id> --unseal <share:key> ... ` +
      `${sub === 'rewrap' ? '--in <file> --out <file>' : '--name <key>'}`,
    flags: {
      ...SITE_DB_FLAGS,
      ...UNSEAL_FLAG,
      name: { type: 'string', help: 'key name', placeholder: 'key' },
      'rotation-days': { type: 'string', help: 'create: rotate automatically after this many days', placeholder: 'n' },
      exportable: { type: 'boolean', help: 'create: allow exporting key material', default: false },
      material: {
        type: 'string',
        help: 'create: import the key from this file (hex) instead of generating it: a region-wide key, e.g. empi-blind-index',
        placeholder: 'file',
      },
      in: { type: 'string', help: 'rewrap: envelope file', placeholder: 'file' },
      out: { type: 'string', help: 'rewrap: output file', placeholder: 'file' },
    },
  } satisfies VerbSpec<Record<string, FlagSpec>>;
  const f = parseFlags(spec, argv);
  if (f === 'help') return (console.log(helpText(spec)), 0);
  if (sub !== 'rewrap' && !f.name) throw new UsageError('--name is required');
  const { db, kms } = await openUnsealedKms(f, f.unseal);
  try {
    switch (sub) {
      case 'create': {
        const days = f['rotation-days'] !== undefined ? intFlag('rotation-days', f['rotation-days'], 1, 3650) : undefined;
        let material: Buffer | undefined;
        if (f.material) {
          const hex = (
            await readFile(f.material, 'utf8').catch(() => {
              throw new UsageError(`--material: cannot read ${f.material}`);
            })
          ).trim();
          if (!/^([0-9a-fA-F]{2})+$/.test(hex))
            throw new UsageError(`--material ${f.material}: expected the key in hex (e.g. openssl rand -hex 16)`);
          material = Buffer.from(hex, 'hex');
        }
        console.log(
          JSON.stringify(
            await kms.createKey(f.name!, {
              exportable: f.exportable,
              ...(days ? { rotationPeriodSeconds: days * 86_400 } : {}),
              ...(material ? { material } : {}),
            }),
            null,
            2,
          ),
        );
        break;
      }
      case 'rotate':
        console.log(JSON.stringify(await kms.rotate(f.name!), null, 2));
        break;
      case 'rewrap': {
        if (!f.in || !f.out) throw new UsageError('--in and --out are required');
        await writeFile(f.out, await kms.rewrap(await readFile(f.in)));
        console.log(`rewrapped ${f.in} -> ${f.out}`);
        break;
      }
    }
    return 0;
  } finally {
    await db.close();
  }
}

async function shares(argv: string[]): Promise<number> {
  const [action, ...rest] = argv;
  const spec = {
    name: 'keys shares',
    summary: SUBCOMMANDS.shares,
    usage:
      'medmesh keys shares list --region <file> --site <id> | deposit --url <other site> --share <file> | ' +
      'fetch --url <other site> --owner <site> --out <dir>',
    flags: {
      ...SITE_DB_FLAGS,
      url: { type: 'string', help: 'the other site', placeholder: 'url' },
      share: { type: 'string', help: 'wrapped share file', placeholder: 'file' },
      owner: { type: 'string', help: 'site whose shares to fetch', placeholder: 'site' },
      out: { type: 'string', help: 'directory', default: '.', placeholder: 'dir' },
    },
  } satisfies VerbSpec<Record<string, FlagSpec>>;
  const f = parseFlags(spec, rest);
  if (f === 'help' || action === undefined) return (console.log(helpText(spec)), action === undefined ? 2 : 0);
  switch (action) {
    case 'list': {
      const { db, kms } = await openKms(f);
      try {
        for (const s of await kms.ownShares())
          console.log(`share ${s.index} of ${s.threshold}: custodian ${s.custodian}, master key ${s.cmkId}`);
      } finally {
        await db.close();
      }
      return 0;
    }
    case 'deposit': {
      if (!f.url || !f.share) throw new UsageError('--url and --share are required');
      await siteJson(`${f.url}/kms/shares`, parseWrappedShare(await readFile(f.share, 'utf8')));
      console.log(`deposited ${f.share} at ${f.url}`);
      return 0;
    }
    case 'fetch': {
      if (!f.url || !f.owner) throw new UsageError('--url and --owner are required');
      const list = (await siteJson(`${f.url}/kms/shares?owner=${encodeURIComponent(f.owner)}`)) as Array<{
        index: number;
        custodian: string;
      }>;
      await mkdir(f.out, { recursive: true });
      for (const s of list)
        await writeFile(join(f.out, `${f.owner}-share-${s.index}-${s.custodian}.json`), `${JSON.stringify(s, null, 2)}\n`);
      console.log(`fetched ${list.length} share(s) of site ${f.owner} into ${f.out}`);
      return 0;
    }
    default:
      throw new UsageError(`unknown shares action ${action} (list, deposit, fetch)`);
  }
}

async function siteJson(url: string, body?: unknown): Promise<unknown> {
  let res: Response;
  try {
    res = await fetch(
      url,
      body === undefined ? {} : { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) },
    );
  } catch (e) {
    throw new UsageError(`cannot reach ${url}: ${e instanceof Error ? e.message : String(e)}`);
  }
  const text = await res.text();
  if (!res.ok) {
    const msg = (() => {
      try {
        return (JSON.parse(text) as { message?: string }).message ?? text;
      } catch {
        return text;
      }
    })();
    throw new UsageError(`${url} answered ${res.status}: ${msg}`);
  }
  return text ? (JSON.parse(text) as unknown) : undefined;
}
