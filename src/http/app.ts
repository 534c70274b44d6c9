// The site's HTTP server. Plugins are encapsulated (Fastify style): FHIR under /fhir/R4,
// health at the root.
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import type { Db } from '../db/index.ts';
import type { RecordsContext, SearchParamTable } from '../records/index.ts';
import type { AccessControl } from '../security/access/index.ts';
import type { Kms } from '../security/kms/index.ts';
import type { IdentityService } from '../security/identity/index.ts';
import type { AuditLog } from '../security/audit/index.ts';
import { registerAudit } from './audit-hook.ts';
import { accessRoutes } from './access-routes.ts';
import { auditEventRoutes, auditRoutes } from './audit-routes.ts';
import { replicationRoutes } from './replication-routes.ts';
import { verifyRoutes, type VerifyRoutesOptions } from './verify-routes.ts';
import { conflictRoutes } from './conflict-routes.ts';
import { empiRoutes, type EmpiRoutesOptions } from './empi-routes.ts';
import type { Region } from '../region/index.ts';
import { LinkKeySender, type ReplicationMetrics } from '../replication/index.ts';
import { registerRouteAccess } from './route-access.ts';
import { authRoutes } from './auth-routes.ts';
import { kmsRoutes } from './kms-routes.ts';
import { fhirRoutes, registerFhirErrorHandling } from './fhir-routes.ts';
import { dicomwebRoutes } from './dicomweb-routes.ts';
import { collectionRoutes } from './collection-routes.ts';
import type { ImagingStore } from '../imaging/index.ts';
import { anonymousResolver, registerIdentity, type IdentityResolver } from './identity.ts';

export const DEFAULT_BODY_LIMIT = 16 * 1024 * 1024;

export interface AppOptions {
  access: AccessControl;
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
  /** The region and the record store's context, to serve the changefeed and its operator API. */
  region?: Region;
  records?: RecordsContext;
  replication?: ReplicationMetrics;
  /** Blind indexes for the EMPI directory (absent: no /empi API). */
  blindIndex?: EmpiRoutesOptions['blindIndex'];
  /** Runs this site's consistency check against peers (operator API); absent: no verify API. */
  verify?: VerifyRoutesOptions['verify'];
  /** The imaging store (absent: no /dicomweb). */
  imaging?: ImagingStore;
  /** Source PACS this site collects from (their reports at /imaging/collection). */
  collectionSources?: readonly string[];
  /** More /metrics text (Prometheus), per site: the DIMSE provider's counters. */
  metrics?: ReadonlyArray<(siteId: string) => string>;
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
  app.decorateRequest('requester', null);
  app.decorateRequest('auditExtra', null);
  registerIdentity(app, opts.resolveIdentity ?? anonymousResolver);
  registerFhirErrorHandling(app);
  if (opts.audit) registerAudit(app, { siteId: opts.siteId, audit: opts.audit });
  registerRouteAccess(app);

  app.get('/healthz', { config: { access: 'public' } }, async () => {
    const kms = await opts.kms.status();
    return {
      status: 'ok',
      site: opts.siteId,
      region: opts.regionId,
      kms: {
        initialized: kms.initialized,
        sealed: kms.sealed,
        unsealProgress: kms.threshold ? `${kms.progress}/${kms.threshold}` : null,
      },
      ...(opts.replication
        ? {
            replication: opts.replication.links().map((l) => ({
              peer: l.peer,
              up: l.up,
              lagMs: l.lagMs,
              lastPullAt: l.lastPullAt ?? null,
              lastError: l.lastError ?? null,
            })),
          }
        : {}),
    };
  });
  // Public like health: numbers about links and queues, no data. Prometheus text format.
  app.get('/metrics', { config: { access: 'public' } }, async (_req, reply) => {
    const parked = await opts.db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM replication_dead_letter WHERE status <> 'skipped'",
    );
    const body = `${opts.replication?.prometheus(opts.siteId) ?? ''}${(opts.metrics ?? []).map((m) => m(opts.siteId)).join('')}# HELP medmesh_replication_dead_letters Changes parked or waiting behind a parked one.\n# TYPE medmesh_replication_dead_letters gauge\nmedmesh_replication_dead_letters{site="${opts.siteId}"} ${parked.rows[0]?.n ?? 0}\n`;
    return reply.type('text/plain; version=0.0.4; charset=utf-8').send(body);
  });
  app.get('/readyz', { config: { access: 'public' } }, async (_req, reply) => {
    try {
      await opts.db.query('SELECT 1');
      return { status: 'ready', site: opts.siteId };
    } catch (e) {
      return reply.code(503).send({ status: 'not-ready', site: opts.siteId, reason: e instanceof Error ? e.message : String(e) });
    }
  });
  const identity = opts.identity;
  await app.register(kmsRoutes, {
    prefix: '/kms',
    kms: opts.kms,
    siteKey: (id) => (identity ? identity.servicePublicKey(id) : Promise.resolve(undefined)),
  });
  if (opts.identity) {
    await app.register(authRoutes, { prefix: '/auth', identity: opts.identity });
    await app.register(accessRoutes, { prefix: '/access', access: opts.access, identity: opts.identity });
    await app.register(conflictRoutes, { prefix: '/conflicts', db: opts.db, access: opts.access });
    if (opts.region && opts.blindIndex)
      await app.register(empiRoutes, { prefix: '/empi', db: opts.db, region: opts.region, blindIndex: opts.blindIndex });
    const signer = () => opts.kms.signingKey()?.key;
    const linkKeys = new LinkKeySender();
    if (opts.region && opts.records)
      await app.register(replicationRoutes, {
        prefix: '/replication',
        db: opts.db,
        region: opts.region,
        siteId: opts.siteId,
        identity: opts.identity,
        records: opts.records,
        signer,
        linkKeys,
      });
    if (opts.region && opts.verify)
      await app.register(verifyRoutes, {
        prefix: '/replication',
        db: opts.db,
        region: opts.region,
        siteId: opts.siteId,
        identity: opts.identity,
        signer,
        linkKeys,
        verify: opts.verify,
      });
  }
  if (opts.audit) {
    const auditOpts = { db: opts.db, kms: opts.kms, siteId: opts.siteId, audit: opts.audit };
    await app.register(auditRoutes, { prefix: '/audit', ...auditOpts });
    await app.register(auditEventRoutes, { prefix: '/fhir/R4', ...auditOpts });
  }
  if (opts.imaging) {
    await app.register(dicomwebRoutes, { prefix: '/dicomweb', imaging: opts.imaging, access: opts.access });
    await app.register(collectionRoutes, {
      prefix: '/imaging/collection',
      db: opts.db,
      sources: opts.collectionSources ?? [],
      imaging: opts.imaging,
    });
  }
  await app.register(fhirRoutes, {
    prefix: '/fhir/R4',
    access: opts.access,
    searchParams: opts.searchParams,
    siteId: opts.siteId,
    regionId: opts.regionId,
    version: opts.version,
  });
  return app;
}
