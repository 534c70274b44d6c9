import { createLogger } from '../common/index.ts';
import { openSite } from '../site/index.ts';
import { helpText, intFlag, parseFlags, UsageError, type FlagSpec, type VerbSpec } from './args.ts';
import { openSiteFromFlags, SITE_DB_FLAGS } from './common.ts';
import { seedRegion } from './seeding.ts';

const spec = {
  name: 'seed',
  summary: 'write synthetic patients whose home shard is active at this site',
  usage: 'medmesh seed --region <file> --site <id> [--patients <n>] [--database-url <url> | --data <dir>]',
  flags: {
    ...SITE_DB_FLAGS,
    patients: {
      type: 'string',
      help: 'patients to generate (those homed elsewhere are skipped)',
      default: '20',
      placeholder: 'n',
    },
    seed: { type: 'string', help: 'random seed (same seed, same patients)', default: '1', placeholder: 'n' },
  },
} satisfies VerbSpec<Record<string, FlagSpec>>;

export async function seedVerb(argv: string[]): Promise<number> {
  const flags = parseFlags(spec, argv);
  if (flags === 'help') return (console.log(helpText(spec)), 0);
  const patients = intFlag('patients', flags.patients, 1, 100_000);
  const seed = intFlag('seed', flags.seed, 0, 2 ** 31);
  const { region, siteId, db } = await openSiteFromFlags(flags);
  try {
    const opened = await openSite({
      region,
      siteId,
      db,
      logging: createLogger({ level: process.env.LOG_LEVEL ?? 'warn', base: { site: siteId } }),
    });
    if (!opened.ok) throw new UsageError(opened.error.message);
    const report = await seedRegion({ region, stores: new Map([[siteId, opened.site.store]]), patients, seed });
    console.log(
      `site ${siteId}: seeded ${report.patients} patients (${report.resources} resources); ` +
        `${report.skipped} homed at other sites were skipped`,
    );
    await opened.site.close();
    return 0;
  } finally {
    await db.close();
  }
}
