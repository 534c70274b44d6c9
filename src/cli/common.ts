// Pieces several verbs share: loading the region, opening a site's database.
import { fileURLToPath } from 'node:url';
import type { Db } from '../db/index.ts';
import { openDb } from '../db/index.ts';
import { formatIssues, loadRegionFile, type Region } from '../region/index.ts';
import { UsageError } from './args.ts';

export const EXAMPLE_REGION = fileURLToPath(new URL('../../region.example.yaml', import.meta.url));

export async function loadRegionOrThrow(file: string): Promise<Region> {
  const r = await loadRegionFile(file);
  if (!r.ok) throw new UsageError(`region file ${file} is not valid:\n${formatIssues(r.issues).replace(/^/gm, '  ')}`);
  return r.region;
}

export function requireSite(region: Region, siteId: string | undefined): string {
  if (!siteId) throw new UsageError(`--site is required (one of ${region.sites.map((s) => s.id).join(', ')})`);
  if (!region.site(siteId)) throw new UsageError(`--site ${siteId} is not in region ${region.id} (sites: ${region.sites.map((s) => s.id).join(', ')})`);
  return siteId;
}

export function openSiteDb(opts: { siteId: string; dataRoot: string; databaseUrl: string | undefined; schema?: string }): Promise<Db> {
  return openDb({ siteId: opts.siteId, dataRoot: opts.dataRoot, ...(opts.databaseUrl ? { databaseUrl: opts.databaseUrl } : {}), ...(opts.schema ? { schema: opts.schema } : {}) });
}

export function portOf(url: string): number {
  const u = new URL(url);
  return u.port ? Number(u.port) : u.protocol === 'https:' ? 443 : 80;
}
