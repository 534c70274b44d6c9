import { claimSiteIdentity, migrate } from '../db/index.ts';
import { helpText, parseFlags, UsageError, type FlagSpec, type VerbSpec } from './args.ts';
import { loadRegionOrThrow, openSiteDb, requireSite } from './common.ts';

const spec = {
  name: 'migrate',
  summary: "apply pending database migrations for a site (sites also do this at start)",
  usage: 'medmesh migrate --region <file> --site <id> [--database-url <url> | --data <dir>]',
  flags: {
    region: { type: 'string', help: 'region file', placeholder: 'file' },
    site: { type: 'string', help: 'site id', placeholder: 'id' },
    'database-url': { type: 'string', help: 'PostgreSQL server (default: $DATABASE_URL, else embedded PGlite)', placeholder: 'url' },
    data: { type: 'string', help: 'data root for embedded PGlite', default: 'data', placeholder: 'dir' },
  },
} satisfies VerbSpec<Record<string, FlagSpec>>;

export async function migrateVerb(argv: string[]): Promise<number> {
  const flags = parseFlags(spec, argv);
  if (flags === 'help') return (console.log(helpText(spec)), 0);
  if (!flags.region) throw new UsageError('--region is required');
  const region = await loadRegionOrThrow(flags.region);
  const siteId = requireSite(region, flags.site);
  const db = await openSiteDb({ siteId, dataRoot: flags.data, databaseUrl: flags['database-url'] ?? process.env.DATABASE_URL });
  try {
    const r = await migrate(db, { onApply: (m) => console.log(`applying ${String(m.version).padStart(4, '0')} ${m.name}`) });
    if (!r.ok) throw new UsageError(r.error.message);
    const claimed = await claimSiteIdentity(db, region.id, siteId);
    if (!claimed.ok) throw new UsageError(claimed.error.message);
    console.log(r.applied.length ? `site ${siteId}: applied ${r.applied.length} migration(s)` : `site ${siteId}: database is up to date`);
    return 0;
  } finally {
    await db.close();
  }
}
