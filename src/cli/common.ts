// Pieces several verbs share: loading the region, opening a site's database.
import { fileURLToPath } from 'node:url';
import type { Db } from '../db/index.ts';
import { openDb } from '../db/index.ts';
import { formatIssues, loadRegionFile, type Region } from '../region/index.ts';
import { UsageError, type FlagSpec } from './args.ts';

export const EXAMPLE_REGION = fileURLToPath(new URL('../../region.example.yaml', import.meta.url));

export async function loadRegionOrThrow(file: string): Promise<Region> {
  const r = await loadRegionFile(file);
  if (!r.ok) throw new UsageError(`region file ${file} is not valid:\n${formatIssues(r.issues).replace(/^/gm, '  ')}`);
  return r.region;
}

export function requireSite(region: Region, siteId: string | undefined): string {
  if (!siteId) throw new UsageError(`--site is required (one of ${region.sites.map((s) => s.id).join(', ')})`);
  if (!region.site(siteId))
    throw new UsageError(`--site ${siteId} is not in region ${region.id} (sites: ${region.sites.map((s) => s.id).join(', ')})`);
  return siteId;
}

export function openSiteDb(opts: {
  siteId: string;
  dataRoot: string;
  databaseUrl: string | undefined;
  schema?: string;
}): Promise<Db> {
  return openDb({
    siteId: opts.siteId,
    dataRoot: opts.dataRoot,
    ...(opts.databaseUrl ? { databaseUrl: opts.databaseUrl } : {}),
    ...(opts.schema ? { schema: opts.schema } : {}),
  });
}

export function portOf(url: string): number {
  const u = new URL(url);
  return u.port ? Number(u.port) : u.protocol === 'https:' ? 443 : 80;
}

/** The flags every verb that opens a site's database takes. */
export const SITE_DB_FLAGS = {
  region: { type: 'string', help: 'region file', placeholder: 'file' },
  site: { type: 'string', help: 'site id from the region file', placeholder: 'id' },
  'database-url': {
    type: 'string',
    help: 'PostgreSQL server (default: $DATABASE_URL, else embedded PGlite)',
    placeholder: 'url',
  },
  data: {
    type: 'string',
    help: 'data root for embedded PGlite (one folder per site; one process at a time)',
    default: 'data',
    placeholder: 'dir',
  },
} as const satisfies Record<string, FlagSpec>;

/** Loads the region, checks --site and opens that site's database. */
export async function openSiteFromFlags(f: {
  region?: string | undefined;
  site?: string | undefined;
  data: string;
  'database-url'?: string | undefined;
}): Promise<{ region: Region; siteId: string; db: Db }> {
  if (!f.region) throw new UsageError('--region is required');
  const region = await loadRegionOrThrow(f.region);
  const siteId = requireSite(region, f.site);
  const db = await openSiteDb({ siteId, dataRoot: f.data, databaseUrl: f['database-url'] ?? process.env.DATABASE_URL });
  return { region, siteId, db };
}
