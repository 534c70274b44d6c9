import { join } from 'node:path';
import type { Db } from './db.ts';
import { openPglite } from './pglite.ts';
import { openPostgres } from './postgres.ts';

export interface OpenDbOptions {
  /** A PostgreSQL server (production). When absent, embedded PGlite under dataRoot/<site>. */
  databaseUrl?: string;
  /** Schema on the server (several sites may share one server in tests and benchmarks). */
  schema?: string;
  dataRoot?: string;
  siteId: string;
  /** Embedded only: keep the database in memory. */
  inMemory?: boolean;
}

export function openDb(opts: OpenDbOptions): Promise<Db> {
  if (opts.databaseUrl)
    return openPostgres({
      connectionString: opts.databaseUrl,
      applicationName: `medmesh site ${opts.siteId}`,
      ...(opts.schema ? { schema: opts.schema } : {}),
    });
  if (opts.inMemory) return openPglite();
  return openPglite({ dataDir: join(opts.dataRoot ?? 'data', opts.siteId) });
}

export type SiteIdentityError = { kind: 'site-mismatch'; message: string };

/** Binds a database to one site of one region on first use, and checks it on every start after. */
export async function claimSiteIdentity(
  db: Db,
  regionId: string,
  siteId: string,
): Promise<{ ok: true } | { ok: false; error: SiteIdentityError }> {
  await db.query('INSERT INTO site_identity (region_id, site_id) VALUES ($1, $2) ON CONFLICT DO NOTHING', [regionId, siteId]);
  const { rows } = await db.query<{ region_id: string; site_id: string }>('SELECT region_id, site_id FROM site_identity');
  const row = rows[0];
  if (row && (row.region_id !== regionId || row.site_id !== siteId)) {
    return {
      ok: false,
      error: {
        kind: 'site-mismatch',
        message:
          `this database belongs to site ${row.site_id} of region ${row.region_id}, ` +
          `not site ${siteId} of region ${regionId}`,
      },
    };
  }
  return { ok: true };
}
