import { openSite } from '../http/index.ts';
import { helpText, parseFlags, UsageError, type FlagSpec, type VerbSpec } from './args.ts';
import { loadRegionOrThrow, openSiteDb, portOf, requireSite } from './common.ts';
import { waitForShutdown } from './shutdown.ts';

const spec = {
  name: 'site',
  summary: 'run one site API node',
  usage: 'medmesh site --region <file> --site <id> [--port <n>] [--database-url <url> | --data <dir>]',
  flags: {
    region: { type: 'string', help: 'region file', placeholder: 'file' },
    site: { type: 'string', help: 'site id from the region file', placeholder: 'id' },
    port: { type: 'string', help: "port to listen on (default: the port of the site's url)", placeholder: 'n' },
    host: { type: 'string', help: 'address to bind', default: '127.0.0.1', placeholder: 'addr' },
    'database-url': { type: 'string', help: 'PostgreSQL server (default: $DATABASE_URL, else embedded PGlite)', placeholder: 'url' },
    data: { type: 'string', help: 'data root for embedded PGlite (one folder per site)', default: 'data', placeholder: 'dir' },
  },
  examples: ['medmesh site --region region.example.yaml --site B', 'DATABASE_URL=postgres://127.0.0.1/medmesh_b medmesh site --region region.yaml --site B --port 8080'],
} satisfies VerbSpec<Record<string, FlagSpec>>;

export async function siteVerb(argv: string[]): Promise<number> {
  const flags = parseFlags(spec, argv);
  if (flags === 'help') return (console.log(helpText(spec)), 0);
  if (!flags.region) throw new UsageError('--region is required');
  const region = await loadRegionOrThrow(flags.region);
  const siteId = requireSite(region, flags.site);
  const port = flags.port !== undefined ? Number(flags.port) : portOf(region.site(siteId)!.url);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--port must be 0-65535 (got ${flags.port ?? ''})`);
  const db = await openSiteDb({ siteId, dataRoot: flags.data, databaseUrl: flags['database-url'] ?? process.env.DATABASE_URL });
  const opened = await openSite({ region, siteId, db, logger: { level: process.env.LOG_LEVEL ?? 'info' } });
  if (!opened.ok) {
    await db.close();
    throw new UsageError(opened.error.message);
  }
  const { site } = opened;
  await site.app.listen({ port, host: flags.host });
  site.app.log.info({ site: siteId, region: region.id, db: db.kind, port }, `site ${siteId} serving FHIR R4 at http://${flags.host}:${port}/fhir/R4`);
  await waitForShutdown(async () => {
    await site.close();
    await db.close();
  });
  return 0;
}
