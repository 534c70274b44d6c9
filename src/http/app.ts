// The site's HTTP server. Plugins are encapsulated (Fastify style): FHIR under /fhir/R4,
// health at the root.
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import type { Db } from '../db/index.ts';
import type { RecordStore, SearchParamTable } from '../records/index.ts';
import type { Kms } from '../security/kms/index.ts';
import type { IdentityService } from '../security/identity/index.ts';
import type { AuditLog } from '../security/audit/index.ts';
import { registerAudit } from './audit-hook.ts';
import { authRoutes } from './auth-routes.ts';
import { kmsRoutes } from './kms-routes.ts';
import { fhirRoutes, registerFhirErrorHandling } from './fhir-routes.ts';
import { anonymousResolver, registerIdentity, type IdentityResolver } from './identity.ts';

export const DEFAULT_BODY_LIMIT = 16 * 1024 * 1024;

export interface AppOptions {
  store: RecordStore;
  db: Db;
  kms: Kms;
  identity?: IdentityService;
  /** The audit log while the site can write one; without it, FHIR routes answer 503. */
  audit?: () => AuditLog | undefined;
  searchParams: SearchParamTable;
  siteId: string;
  regionId: string;
  version: string;
  bodyLimit?: number;
  logger?: FastifyServerOptions['logger'];
  resolveIdentity?: IdentityResolver;
}

export async function buildApp(opts: AppOptions): Promise<FastifyInstance> {
  const app = Fastify({
    logger: opts.logger ?? false,
    bodyLimit: opts.bodyLimit ?? DEFAULT_BODY_LIMIT,
    requestIdHeader: 'x-request-id',
    // FHIR ids and search values are case-sensitive.
    routerOptions: { caseSensitive: true, ignoreTrailingSlash: true },
  });
  // Only JSON is spoken; anything else (text/plain included) is answered with 415.
  app.removeContentTypeParser('text/plain');
  const json = app.getDefaultJsonParser('error', 'error');
  app.addContentTypeParser(['application/fhir+json'], { parseAs: 'string' }, json);
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => done(null, body));
  registerIdentity(app, opts.resolveIdentity ?? anonymousResolver);
  registerFhirErrorHandling(app);
  if (opts.audit) registerAudit(app, { siteId: opts.siteId, audit: opts.audit });

  app.get('/healthz', async () => {
    const kms = await opts.kms.status();
    return { status: 'ok', site: opts.siteId, region: opts.regionId, kms: { initialized: kms.initialized, sealed: kms.sealed, unsealProgress: kms.threshold ? `${kms.progress}/${kms.threshold}` : null } };
  });
  app.get('/readyz', async (_req, reply) => {
    try {
      await opts.db.query('SELECT 1');
      return { status: 'ready', site: opts.siteId };
    } catch (e) {
      return reply.code(503).send({ status: 'not-ready', site: opts.siteId, reason: e instanceof Error ? e.message : String(e) });
    }
  });
  await app.register(kmsRoutes, { prefix: '/kms', kms: opts.kms });
  if (opts.identity) await app.register(authRoutes, { prefix: '/auth', identity: opts.identity });
  await app.register(fhirRoutes, { prefix: '/fhir/R4', store: opts.store, searchParams: opts.searchParams, siteId: opts.siteId, regionId: opts.regionId, version: opts.version });
  return app;
}
