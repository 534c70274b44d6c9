import { readFile } from 'node:fs/promises';
import { openSite, type SiteOptions } from '../site/index.ts';
import { Sm2PublicKey } from '../security/crypto/index.ts';
import { helpText, intFlag, parseFlags, UsageError, type FlagSpec, type VerbSpec } from './args.ts';
import { openSiteFromFlags, portOf, SITE_DB_FLAGS } from './common.ts';
import { waitForShutdown } from './shutdown.ts';
import { join } from 'node:path';
import type { CollectionSource, RemoteAe, S3BlobStoreOptions } from '../imaging/index.ts';
import { createLogger } from '../common/index.ts';

const spec = {
  name: 'site',
  summary: 'run one site API node',
  usage:
    'medmesh site --region <file> --site <id> [--port <n>] [--database-url <url> | --data <dir>] ' +
    '[--witness-key <pem> [--witness-url <url>]... [--lease-ms <ms>]]',
  flags: {
    ...SITE_DB_FLAGS,
    port: { type: 'string', help: "port to listen on (default: the port of the site's url)", placeholder: 'n' },
    host: { type: 'string', help: 'address to bind', default: '127.0.0.1', placeholder: 'addr' },
    'no-replication': { type: 'boolean', help: "do not pull the other sites' changefeeds from this node" },
    'verify-every': {
      type: 'string',
      help: 'check consistency with every peer this often (0: never)',
      default: '15',
      placeholder: 'minutes',
    },
    blobs: {
      type: 'string',
      help:
        'where image files go, encrypted: a folder (default: <data>/<site>-blobs) or s3://bucket/prefix ' +
        '(with MEDMESH_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional AWS_REGION)',
      placeholder: 'dir|s3-url',
    },
    'dicom-port': {
      type: 'string',
      help: 'serve DICOM (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET) on this port (default: off)',
      placeholder: 'n',
    },
    'ae-title': { type: 'string', help: "this site's DICOM AE title (default: MEDMESH_<site>)", placeholder: 'AE' },
    'dicom-peers': {
      type: 'string',
      help: 'known DICOM AEs and where C-MOVE reaches them: AE=host:port,...',
      placeholder: 'list',
    },
    'accept-any-ae': { type: 'boolean', help: 'take associations from AEs not in --dicom-peers' },
    'collect-from': {
      type: 'string',
      help:
        'source PACS to collect studies from: id=AE@host:port by C-FIND/C-MOVE (needs --dicom-port), ' +
        'id=http://host:port/dicom-web by QIDO-RS/WADO-RS; comma-separated',
      placeholder: 'list',
    },
    'collect-every': { type: 'string', help: 'minutes between collection runs', default: '15', placeholder: 'minutes' },
    'collect-days': { type: 'string', help: 'study days looked at per run, ending today', default: '2', placeholder: 'n' },
    'witness-key': {
      type: 'string',
      help:
        "the witness's SM2 public key (its witness.pub.pem): the site runs under the region's witness, " +
        'writing a shard only while it holds its lease (docs/failover.md)',
      placeholder: 'pem',
    },
    'witness-url': {
      type: 'string',
      multiple: true,
      help: "where the witness is reached (repeat for several witness processes; default: the region's witness.url)",
      placeholder: 'url',
    },
    'lease-ms': {
      type: 'string',
      help: "the lease duration this site counts with (the shorter of it and the witness's is used; default 3000)",
      placeholder: 'ms',
    },
  },
  examples: [
    'medmesh site --region region.example.yaml --site B',
    'medmesh site --region region.yaml --site B --witness-key witness.pub.pem',
    'DATABASE_URL=postgres://127.0.0.1/medmesh_b medmesh site --region region.yaml --site B --port 8080',
  ],
} satisfies VerbSpec<Record<string, FlagSpec>>;

export async function siteVerb(argv: string[]): Promise<number> {
  const flags = parseFlags(spec, argv);
  if (flags === 'help') return (console.log(helpText(spec)), 0);
  if (flags.port !== undefined && !/^\d{1,5}$/.test(flags.port))
    throw new UsageError(`--port must be 0-65535 (got ${flags.port})`);
  const verifyEvery = Number(flags['verify-every']);
  if (!Number.isFinite(verifyEvery) || verifyEvery < 0 || verifyEvery > 10_080)
    throw new UsageError(`--verify-every must be 0-10080 minutes (got ${flags['verify-every']})`);
  // Every flag is checked before the database opens (an open embedded database keeps the process alive).
  const dicomSettings = dicomFlags(flags);
  const collect = collectFlags(flags);
  const blobs = blobFlags(flags.blobs, process.env);
  const witnessSettings = await witnessFlags(flags);
  const dimseSources = (collect?.sources ?? []).flatMap((s) => (s.kind === 'dicomweb' ? [] : [s]));
  if (dimseSources.length && !dicomSettings)
    throw new UsageError(
      `--collect-from ${dimseSources[0]!.id} (DIMSE) needs --dicom-port: the source PACS sends the studies to this site's AE`,
    );
  // A source sends what it is asked for from its own AE: it is a known peer.
  if (dicomSettings) for (const s of dimseSources) dicomSettings.remoteAes[s.aeTitle] ??= { host: s.host, port: s.port };
  const { region, siteId, db } = await openSiteFromFlags(flags);
  const port = flags.port !== undefined ? Number(flags.port) : portOf(region.site(siteId)!.url);
  const dicom = dicomSettings
    ? { ...dicomSettings, aeTitle: dicomSettings.aeTitle ?? `MEDMESH_${siteId}`.toUpperCase() }
    : undefined;
  const imaging = {
    ...(blobs ?? { blobRoot: join(flags.data, `${siteId}-blobs`) }),
    ...(dicom ? { dicom } : {}),
    ...(collect ? { collect } : {}),
  };
  const logging = createLogger({ base: { site: siteId } });
  const { log } = logging;
  const witness: SiteOptions['witness'] = witnessSettings && {
    ...witnessSettings,
    urls: witnessSettings.urls.length ? witnessSettings.urls : [region.config.witness.url],
  };
  const opened = await openSite({ region, siteId, db, imaging, logging, ...(witness ? { witness } : {}) });
  if (!opened.ok) {
    await db.close();
    throw new UsageError(opened.error.message);
  }
  const { site } = opened;
  await site.app.listen({ port, host: flags.host });
  log.info(
    { site: siteId, region: region.id, db: db.kind, port },
    `site ${siteId} serving FHIR R4 at http://${flags.host}:${port}/fhir/R4 and DICOMweb at /dicomweb`,
  );
  if (witness)
    log.info(
      { witness: witness.urls, leaseMs: witness.leaseMs ?? 3000 },
      `under the witness at ${witness.urls.join(', ')}: shards are written only under this site's leases`,
    );
  if (site.dimse && dicom)
    log.info({ ae: dicom.aeTitle, port: site.dimse.port }, `DICOM AE ${dicom.aeTitle} on ${flags.host}:${site.dimse.port}`);
  if (site.collection) {
    site.collection.start();
    const sources = collect?.sources
      .map((s) => `${s.id} (${s.kind === 'dicomweb' ? s.url : `${s.aeTitle}@${s.host}:${s.port}`})`)
      .join(', ');
    log.info(
      { sources: collect?.sources.map((s) => s.id) },
      `collecting from ${sources} every ${flags['collect-every']} min; reports at /imaging/collection`,
    );
  }
  if (!flags['no-replication']) {
    // Pullers wait while the site is sealed and while a peer is not trusted; the site logs why.
    site.startReplication({ verifyEveryMs: verifyEvery * 60_000 });
    log.info({ peers: [...site.peers.keys()] }, `pulling from ${[...site.peers.keys()].join(', ') || 'no peer'}`);
  }
  await waitForShutdown(async () => {
    await site.close();
    await db.close();
  });
  return 0;
}

/**
 * The witness settings from the flags, or undefined without --witness-key (no fencing). The key
 * file is read and checked here, before the database opens; the URLs default to the region's.
 */
async function witnessFlags(f: {
  'witness-key'?: string | undefined;
  'witness-url': string[];
  'lease-ms'?: string | undefined;
}): Promise<{ urls: string[]; publicKey: Sm2PublicKey; leaseMs?: number } | undefined> {
  const file = f['witness-key'];
  if (file === undefined) {
    const stray = f['witness-url'].length ? '--witness-url' : f['lease-ms'] !== undefined ? '--lease-ms' : undefined;
    if (stray) throw new UsageError(`${stray} needs --witness-key (the witness's public key: the site then runs under it)`);
    return undefined;
  }
  let pem: string;
  try {
    pem = await readFile(file, 'utf8');
  } catch (e) {
    throw new UsageError(`--witness-key ${file}: cannot read it (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  let publicKey: Sm2PublicKey;
  try {
    publicKey = Sm2PublicKey.fromPem(pem);
  } catch (e) {
    throw new UsageError(
      `--witness-key ${file}: not an SM2 public key PEM (the witness's witness.pub.pem): ` +
        (e instanceof Error ? e.message : String(e)),
    );
  }
  for (const url of f['witness-url'])
    if (!/^https?:\/\/[^\s/]+\/?$/.test(url) || !URL.canParse(url))
      throw new UsageError(`--witness-url must be http(s)://host:port (got ${url})`);
  // Below about 400 ms no renewal period leaves a safety margin (docs/failover.md, lease timing).
  const leaseMs = f['lease-ms'] === undefined ? undefined : intFlag('lease-ms', f['lease-ms'], 500, 600_000);
  return { urls: f['witness-url'].map((u) => u.replace(/\/+$/, '')), publicKey, ...(leaseMs !== undefined ? { leaseMs } : {}) };
}

/** The DIMSE settings from the flags, or undefined when --dicom-port is not given. */
function dicomFlags(f: {
  host: string;
  'dicom-port'?: string | undefined;
  'ae-title'?: string | undefined;
  'dicom-peers'?: string | undefined;
  'accept-any-ae'?: boolean | undefined;
}) {
  if (f['dicom-port'] === undefined) return undefined;
  if (!/^\d{1,5}$/.test(f['dicom-port']) || Number(f['dicom-port']) > 65535)
    throw new UsageError(`--dicom-port must be 0-65535 (got ${f['dicom-port']})`);
  const aeTitle = f['ae-title'];
  if (aeTitle !== undefined && (!/^[\x20-\x7e]{1,16}$/.test(aeTitle) || aeTitle.includes('\\')))
    throw new UsageError(`--ae-title must be 1-16 printable characters without a backslash (got ${aeTitle})`);
  const remoteAes: Record<string, RemoteAe> = {};
  for (const entry of (f['dicom-peers'] ?? '').split(',').filter(Boolean)) {
    const m = /^([^=]{1,16})=([^:]+):(\d{1,5})$/.exec(entry.trim());
    if (!m) throw new UsageError(`--dicom-peers: ${JSON.stringify(entry)} is not AE=host:port`);
    remoteAes[m[1]!] = { host: m[2]!, port: Number(m[3]) };
  }
  return {
    ...(aeTitle !== undefined ? { aeTitle } : {}),
    host: f.host,
    port: Number(f['dicom-port']),
    remoteAes,
    refuseUnknownAes: !f['accept-any-ae'],
  };
}

/** Where image files go: a folder, or an S3-compatible bucket (credentials from the environment). */
function blobFlags(
  blobs: string | undefined,
  env: NodeJS.ProcessEnv,
): { blobRoot: string } | { s3: S3BlobStoreOptions } | undefined {
  if (blobs === undefined) return undefined;
  if (!blobs.startsWith('s3://')) return { blobRoot: blobs };
  const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(blobs);
  if (!m)
    throw new UsageError(
      `--blobs ${JSON.stringify(blobs)}: an S3 location is s3://bucket or s3://bucket/prefix ` +
        '(bucket: 3-63 lower-case letters, digits, dots, hyphens)',
    );
  const need = (name: string) => {
    const v = env[name];
    if (!v) throw new UsageError(`--blobs ${blobs} needs ${name} in the environment`);
    return v;
  };
  const endpoint = need('MEDMESH_S3_ENDPOINT');
  if (!URL.canParse(endpoint))
    throw new UsageError(`MEDMESH_S3_ENDPOINT ${JSON.stringify(endpoint)} is not a URL (e.g. http://10.1.2.3:9000)`);
  return {
    s3: {
      endpoint,
      bucket: m[1]!,
      ...(m[2] ? { prefix: m[2] } : {}),
      accessKeyId: need('AWS_ACCESS_KEY_ID'),
      secretAccessKey: need('AWS_SECRET_ACCESS_KEY'),
      ...(env.AWS_REGION ? { region: env.AWS_REGION } : {}),
    },
  };
}

/** The collection settings from the flags, or undefined when --collect-from is not given. */
function collectFlags(f: { 'collect-from'?: string | undefined; 'collect-every': string; 'collect-days': string }) {
  if (f['collect-from'] === undefined) return undefined;
  const every = Number(f['collect-every']);
  if (!Number.isFinite(every) || every < 1 || every > 1440)
    throw new UsageError(`--collect-every must be 1-1440 minutes (got ${f['collect-every']})`);
  const days = Number(f['collect-days']);
  if (!Number.isInteger(days) || days < 1 || days > 31)
    throw new UsageError(`--collect-days must be a whole number 1-31 (got ${f['collect-days']})`);
  const sources: CollectionSource[] = [];
  for (const entry of f['collect-from'].split(',').filter(Boolean)) {
    const web = /^([A-Za-z0-9._-]{1,64})=(https?:\/\/\S+)$/.exec(entry.trim());
    const m = /^([A-Za-z0-9._-]{1,64})=([^@\\]{1,16})@([^:]+):(\d{1,5})$/.exec(entry.trim());
    const id = web?.[1] ?? m?.[1];
    if (id && sources.some((s) => s.id === id)) throw new UsageError(`--collect-from: source id ${id} is given twice`);
    if (web && URL.canParse(web[2]!)) sources.push({ id: web[1]!, kind: 'dicomweb', url: web[2]! });
    else if (m && Number(m[4]) <= 65535) sources.push({ id: m[1]!, aeTitle: m[2]!, host: m[3]!, port: Number(m[4]) });
    else
      throw new UsageError(`--collect-from: ${JSON.stringify(entry)} is neither id=AE@host:port nor id=http(s)://host:port/path`);
  }
  if (sources.length === 0)
    throw new UsageError('--collect-from names no source (id=AE@host:port or id=http://host:port/dicom-web, ...)');
  return { sources, everyMs: every * 60_000, days };
}
