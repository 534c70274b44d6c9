// medmesh witness: the arbitration node (docs/failover.md). Serves the witness's HTTP API over
// its coordination store (the region file's witness.store: embedded on PGlite under --data or on
// PostgreSQL, or etcd); `trust` registers a site's service key or an operator's key in that store;
// `keys init` writes the witness's SM2 key pair. Several witness processes may share one etcd (or
// one PostgreSQL): one acts, the others answer not-leader and take over when it is gone.
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createLogger, silentLogger, type Logger } from '../common/index.ts';
import { openPglite, openPostgres, type Db } from '../db/index.ts';
import {
  DEFAULT_LEASE_MS,
  DEFAULT_MAX_LAG_MS,
  DEFAULT_SUMMARY_EVERY_MS,
  openEmbeddedStore,
  openEtcdStore,
  trustOperator,
  trustSite,
  Witness,
  witnessKeyId,
  type CoordinationStore,
} from '../failover/index.ts';
import { buildWitnessApp } from '../http/index.ts';
import type { Region } from '../region/index.ts';
import { Sm2PrivateKey, Sm2PublicKey } from '../security/crypto/index.ts';
import { helpText, intFlag, parseFlags, UsageError, type FlagSpec, type VerbSpec } from './args.ts';
import { loadRegionOrThrow } from './common.ts';
import { keyFingerprint } from './verb-peers.ts';
import { waitForShutdown } from './shutdown.ts';

const STORE_FLAGS = {
  region: { type: 'string', help: 'region file (its witness.store says where the state lives)', placeholder: 'file' },
  data: {
    type: 'string',
    help: "the witness's directory: its key, and its embedded PGlite store (one process at a time)",
    default: 'data/witness',
    placeholder: 'dir',
  },
  'database-url': {
    type: 'string',
    help: 'embedded store on a PostgreSQL server instead of PGlite (default: $DATABASE_URL)',
    placeholder: 'url',
  },
} as const satisfies Record<string, FlagSpec>;

const serveSpec = {
  name: 'witness',
  summary: 'run the witness (per-shard write leases, epochs, the signed vote chain)',
  usage: 'medmesh witness --region <file> [--data <dir> | --database-url <url>] [--listen host:port] [--key <pem>]',
  flags: {
    ...STORE_FLAGS,
    listen: {
      type: 'string',
      help: "address to serve on (default: host and port of the region's witness.url)",
      placeholder: 'host:port',
    },
    url: {
      type: 'string',
      help: 'URL sites reach this process at (default: witness.url; one per process on etcd)',
      placeholder: 'url',
    },
    key: {
      type: 'string',
      help: "the witness's SM2 key (default: <data>/witness.key.pem, made on first start)",
      placeholder: 'pem',
    },
    'lease-ms': { type: 'string', help: 'lease duration', default: String(DEFAULT_LEASE_MS), placeholder: 'ms' },
    'max-lag-ms': {
      type: 'string',
      help: 'largest replica lag a claim may have',
      default: String(DEFAULT_MAX_LAG_MS),
      placeholder: 'ms',
    },
    'summary-every-ms': {
      type: 'string',
      help: 'one renewal summary vote per shard at most this often',
      default: String(DEFAULT_SUMMARY_EVERY_MS),
      placeholder: 'ms',
    },
  },
  examples: [
    'medmesh witness keys init --data data/witness',
    'medmesh witness trust --region region.yaml --site B --public-key B.service.pub.pem',
    'medmesh witness --region region.yaml --data data/witness',
  ],
} satisfies VerbSpec<Record<string, FlagSpec>>;

const trustSpec = {
  name: 'witness trust',
  summary: "trust a site's service key (its calls are accepted) or an operator's key (failover approvals)",
  usage:
    'medmesh witness trust --region <file> (--site <id> | --operator <id>) --public-key <pem> ' +
    '[--data <dir> | --database-url <url>]',
  flags: {
    ...STORE_FLAGS,
    site: { type: 'string', help: 'a site of the region (its <site>.service.pub.pem from medmesh keys init)', placeholder: 'id' },
    operator: { type: 'string', help: 'an operator id (their own SM2 public key)', placeholder: 'id' },
    'public-key': { type: 'string', help: 'the SM2 public key, PEM', placeholder: 'pem' },
  },
} satisfies VerbSpec<Record<string, FlagSpec>>;

const keysSpec = {
  name: 'witness keys init',
  summary: "write the witness's SM2 key pair (witness.key.pem, witness.pub.pem)",
  usage: 'medmesh witness keys init [--data <dir>]',
  flags: { data: STORE_FLAGS.data },
} satisfies VerbSpec<Record<string, FlagSpec>>;

export async function witnessVerb(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'trust') return trust(rest);
  if (sub === 'keys') {
    if (rest[0] !== 'init') throw new UsageError(`'witness keys' has one subcommand: init\n\n${helpText(keysSpec)}`);
    return keysInit(rest.slice(1));
  }
  return serve(argv);
}

/** The witness's coordination store, as the region file says; `close` closes what was opened for it. */
async function openStore(
  region: Region,
  f: { data: string; 'database-url'?: string | undefined },
  log: Logger,
): Promise<{ store: CoordinationStore; describe: string; close(): Promise<void> }> {
  const config = region.config.witness.store;
  if (config !== 'embedded') {
    const namespace = config.etcd.namespace ?? `medmesh/${region.id}/`;
    const store = openEtcdStore({ endpoints: config.etcd.endpoints, namespace, log });
    return { store, describe: `etcd ${config.etcd.endpoints.join(',')} (${namespace})`, close: () => store.close() };
  }
  const url = f['database-url'] ?? process.env.DATABASE_URL;
  let db: Db;
  if (url) db = await openPostgres({ connectionString: url, applicationName: 'medmesh witness' });
  else {
    await mkdir(f.data, { recursive: true });
    db = await openPglite({ dataDir: join(f.data, 'store') });
  }
  try {
    const store = await openEmbeddedStore({ db, log });
    return {
      store,
      describe: url ? 'embedded on PostgreSQL' : `embedded PGlite in ${join(f.data, 'store')}`,
      async close() {
        await store.close();
        await db.close();
      },
    };
  } catch (e) {
    await db.close();
    throw e;
  }
}

async function readPublicKey(file: string | undefined): Promise<Sm2PublicKey> {
  if (!file) throw new UsageError('--public-key is required (an SM2 public key PEM)');
  try {
    return Sm2PublicKey.fromPem(await readFile(file, 'utf8'));
  } catch (e) {
    throw new UsageError(`--public-key ${file}: not an SM2 public key PEM (${e instanceof Error ? e.message : String(e)})`);
  }
}

async function trust(argv: string[]): Promise<number> {
  const f = parseFlags(trustSpec, argv);
  if (f === 'help') return (console.log(helpText(trustSpec)), 0);
  if (!f.region) throw new UsageError('--region is required');
  if ((f.site === undefined) === (f.operator === undefined)) throw new UsageError('give one of --site or --operator');
  const key = await readPublicKey(f['public-key']);
  const region = await loadRegionOrThrow(f.region);
  if (f.site !== undefined && !region.site(f.site))
    throw new UsageError(`--site ${f.site} is not in region ${region.id} (sites: ${region.sites.map((s) => s.id).join(', ')})`);
  const opened = await openStore(region, f, silentLogger());
  try {
    if (f.site !== undefined) await trustSite(opened.store, f.site, key);
    else await trustOperator(opened.store, f.operator!, key);
  } finally {
    await opened.close();
  }
  const who = f.site !== undefined ? `site ${f.site}` : `operator ${f.operator}`;
  console.log(`the witness of region ${region.id} now trusts ${who}, key fingerprint ${keyFingerprint(key)}`);
  return 0;
}

async function writeKeyPair(dir: string): Promise<{ priv: string; pub: string; key: Sm2PrivateKey }> {
  await mkdir(dir, { recursive: true });
  const key = Sm2PrivateKey.generate();
  const priv = join(dir, 'witness.key.pem');
  const pub = join(dir, 'witness.pub.pem');
  await writeFile(priv, key.toPem(), { mode: 0o600, flag: 'wx' }).catch((e: NodeJS.ErrnoException) => {
    throw e.code === 'EEXIST' ? new UsageError(`${priv} exists already: the witness has a key (votes name it)`) : e;
  });
  await writeFile(pub, key.publicKey.toPem());
  return { priv, pub, key };
}

async function keysInit(argv: string[]): Promise<number> {
  const f = parseFlags(keysSpec, argv);
  if (f === 'help') return (console.log(helpText(keysSpec)), 0);
  const k = await writeKeyPair(f.data);
  console.log(
    `witness key ${witnessKeyId(k.key.publicKey)}: ${k.priv} (keep it private), public key ${k.pub}, ` +
      `fingerprint ${keyFingerprint(k.key.publicKey)} (every site verifies the votes with it)`,
  );
  return 0;
}

function listenOf(flag: string | undefined, url: string): { host: string; port: number } {
  if (flag === undefined) {
    const u = new URL(url);
    return { host: u.hostname.replace(/^\[|\]$/g, ''), port: u.port ? Number(u.port) : u.protocol === 'https:' ? 443 : 80 };
  }
  const m = /^(.+):(\d{1,5})$/.exec(flag);
  if (!m || Number(m[2]) > 65535) throw new UsageError(`--listen must be host:port (got ${flag})`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}

async function serve(argv: string[]): Promise<number> {
  const f = parseFlags(serveSpec, argv);
  if (f === 'help') return (console.log(helpText(serveSpec)), 0);
  if (!f.region) throw new UsageError('--region is required');
  const leaseMs = intFlag('lease-ms', f['lease-ms'], 100, 600_000);
  const maxLagMs = intFlag('max-lag-ms', f['max-lag-ms'], 0, 86_400_000);
  const summaryEveryMs = intFlag('summary-every-ms', f['summary-every-ms'], 0, 86_400_000);
  const region = await loadRegionOrThrow(f.region);
  const url = f.url ?? region.config.witness.url;
  if (!/^https?:\/\/[^\s/]+\/?$/.test(url)) throw new UsageError(`--url must be http(s)://host:port (got ${url})`);
  const listen = listenOf(f.listen, url);
  // Every flag is checked before the store opens (an open embedded database keeps the process alive).
  const keyFile = f.key ?? join(f.data, 'witness.key.pem');
  let key: Sm2PrivateKey;
  if (existsSync(keyFile)) {
    try {
      key = Sm2PrivateKey.fromPem(await readFile(keyFile, 'utf8'));
    } catch (e) {
      throw new UsageError(`--key ${keyFile}: not an SM2 private key PEM (${e instanceof Error ? e.message : String(e)})`);
    }
  } else if (f.key !== undefined) throw new UsageError(`--key ${f.key} does not exist (medmesh witness keys init writes one)`);
  else {
    const k = await writeKeyPair(f.data);
    key = k.key;
    console.log(
      `made the witness's key: ${k.priv}; sites verify its votes with ${k.pub} (fingerprint ${keyFingerprint(key.publicKey)})`,
    );
  }
  const { log } = createLogger({ base: { role: 'witness', region: region.id } });
  const opened = await openStore(region, f, log);
  const witness = new Witness({
    store: opened.store,
    url: url.replace(/\/+$/, ''),
    key,
    shards: region.shards,
    leaseMs,
    maxLagMs,
    summaryEveryMs,
    log,
  });
  const app = await buildWitnessApp({ witness, log });
  try {
    await app.listen({ port: listen.port, host: listen.host });
  } catch (e) {
    await app.close();
    await opened.close();
    throw new UsageError(`cannot listen on ${listen.host}:${listen.port}: ${e instanceof Error ? e.message : String(e)}`);
  }
  witness.start();
  log.info(
    { url, listen: `${listen.host}:${listen.port}`, store: opened.describe, keyId: witness.keyId },
    `witness of region ${region.id} serving at http://${listen.host}:${listen.port}/witness/v1 (store: ${opened.describe})`,
  );
  await waitForShutdown(async () => {
    await app.close();
    await witness.close();
    await opened.close();
  });
  return 0;
}
