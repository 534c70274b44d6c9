import { claimSiteIdentity, migrate } from '../db/index.ts';
import { helpText, parseFlags, UsageError, type FlagSpec, type VerbSpec } from './args.ts';
import { openSiteFromFlags, SITE_DB_FLAGS } from './common.ts';

const spec = {
  name: 'migrate',
  summary: 'apply pending database migrations for a site (sites also do this at start)',
  usage: 'medmesh migrate --region <file> --site <id> [--database-url <url> | --data <dir>]',
  flags: SITE_DB_FLAGS,
} satisfies VerbSpec<Record<string, FlagSpec>>;

export async function migrateVerb(argv: string[]): Promise<number> {
  const flags = parseFlags(spec, argv);
  if (flags === 'help') return (console.log(helpText(spec)), 0);
  const { region, siteId, db } = await openSiteFromFlags(flags);
  try {
    const r = await migrate(db, { onApply: (m) => console.log(`applying ${String(m.version).padStart(4, '0')} ${m.name}`) });
    if (!r.ok) throw new UsageError(r.error.message);
    const claimed = await claimSiteIdentity(db, region.id, siteId);
    if (!claimed.ok) throw new UsageError(claimed.error.message);
    console.log(
      r.applied.length ? `site ${siteId}: applied ${r.applied.length} migration(s)` : `site ${siteId}: database is up to date`,
    );
    return 0;
  } finally {
    await db.close();
  }
}
