import { openSite } from '../http/index.ts';
import { helpText, parseFlags, UsageError, type FlagSpec, type VerbSpec } from './args.ts';
import { openSiteFromFlags, portOf, SITE_DB_FLAGS } from './common.ts';
import { waitForShutdown } from './shutdown.ts';

const spec = {
  name: 'site',
  summary: 'run one site API node',
  usage: 'medmesh site --region <file> --site <id> [--port <n>] [--database-url <url> | --data <dir>]',
  flags: {
    ...SITE_DB_FLAGS,
    port: { type: 'string', help: "port to listen on (default: the port of the site's url)", placeholder: 'n' },
    host: { type: 'string', help: 'address to bind', default: '127.0.0.1', placeholder: 'addr' },
    'no-replication': { type: 'boolean', help: "do not pull the other sites' changefeeds from this node" },
    'verify-every': { type: 'string', help: 'check consistency with every peer this often (0: never)', default: '15', placeholder: 'minutes' },
  },
  examples: ['medmesh site --region region.example.yaml --site B', 'DATABASE_URL=postgres://127.0.0.1/medmesh_b medmesh site --region region.yaml --site B --port 8080'],
} satisfies VerbSpec<Record<string, FlagSpec>>;

export async function siteVerb(argv: string[]): Promise<number> {
  const flags = parseFlags(spec, argv);
  if (flags === 'help') return (console.log(helpText(spec)), 0);
  if (flags.port !== undefined && !/^\d{1,5}$/.test(flags.port)) throw new UsageError(`--port must be 0-65535 (got ${flags.port})`);
  const verifyEvery = Number(flags['verify-every']);
  if (!Number.isFinite(verifyEvery) || verifyEvery < 0 || verifyEvery > 10_080) throw new UsageError(`--verify-every must be 0-10080 minutes (got ${flags['verify-every']})`);
  const { region, siteId, db } = await openSiteFromFlags(flags);
  const port = flags.port !== undefined ? Number(flags.port) : portOf(region.site(siteId)!.url);
  const opened = await openSite({ region, siteId, db, logger: { level: process.env.LOG_LEVEL ?? 'info' } });
  if (!opened.ok) {
    await db.close();
    throw new UsageError(opened.error.message);
  }
  const { site } = opened;
  await site.app.listen({ port, host: flags.host });
  site.app.log.info({ site: siteId, region: region.id, db: db.kind, port }, `site ${siteId} serving FHIR R4 at http://${flags.host}:${port}/fhir/R4`);
  if (!flags['no-replication']) {
    // Pullers wait while the site is sealed and while a peer is not trusted; they log why.
    site.startReplication({ verifyEveryMs: verifyEvery * 60_000, onError: (peer, message) => site.app.log.warn({ peer }, `replication from ${peer}: ${message}`) });
    site.app.log.info({ peers: [...site.peers.keys()] }, `pulling from ${[...site.peers.keys()].join(', ') || 'no peer'}`);
  }
  await waitForShutdown(async () => {
    await site.close();
    await db.close();
  });
  return 0;
}
