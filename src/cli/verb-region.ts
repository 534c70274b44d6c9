import { formatIssues, loadRegionFile } from '../region/index.ts';
import { helpText, parseFlags, UsageError, type FlagSpec, type VerbSpec } from './args.ts';

const spec = {
  name: 'region check',
  summary: 'validate a region file and print what it defines',
  usage: 'medmesh region check --region <file>',
  flags: { region: { type: 'string', help: 'region file', placeholder: 'file' } },
} satisfies VerbSpec<Record<string, FlagSpec>>;

export async function regionVerb(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === '--help' || sub === '-h' || sub === undefined) return (console.log(helpText(spec)), sub === undefined ? 2 : 0);
  if (sub !== 'check') throw new UsageError(`unknown region command ${sub}; use: medmesh region check --region <file>`);
  const flags = parseFlags(spec, rest);
  if (flags === 'help') return (console.log(helpText(spec)), 0);
  if (!flags.region) throw new UsageError('--region is required');
  const r = await loadRegionFile(flags.region);
  if (!r.ok) {
    console.error(`${flags.region} is not valid:\n${formatIssues(r.issues)}`);
    return 1;
  }
  const { region } = r;
  console.log(`region ${region.id}: ${region.sites.length} sites, ${region.shards.length} shards`);
  for (const s of region.sites)
    console.log(
      `  site ${s.id} (${s.kind}) ${s.url}${s.name ? ` — ${s.name}` : ''}; default shard: ${region.defaultShardFor(s.id)}`,
    );
  for (const s of region.shards)
    console.log(
      `  shard ${s.id}: residency ${s.residency.join(' -> ')}; divisions ${s.divisions.join(', ') || '-'}; ` +
        `geohash ${s.geohashes.join(', ') || '-'}`,
    );
  return 0;
}
