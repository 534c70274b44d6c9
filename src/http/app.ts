// The site's HTTP server. Plugins are encapsulated (Fastify style): FHIR under /fhir/R4,
// health at the root.
import swagger from '@fastify/swagger';
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { jsonSchemaTransform, serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import type { Logger } from '../common/index.ts';
import type { Db } from '../db/index.ts';
import type { RecordsContext, SearchParamTable } from '../records/index.ts';
import type { AccessControl } from '../security/access/index.ts';
import type { Kms } from '../security/kms/index.ts';
import type { IdentityService } from '../security/identity/index.ts';
import type { AuditLog } from '../security/audit/index.ts';
import { registerAudit } from './audit-hook.ts';
import { accessRoutes } from './access-routes.ts';
import { auditEventRoutes, auditRoutes, type AuditRoutesOptions } from './audit-routes.ts';
import { replicationRoutes } from './replication-routes.ts';
import { verifyRoutes, type VerifyRoutesOptions } from './verify-routes.ts';
import { conflictRoutes } from './conflict-routes.ts';
import { empiRoutes, type EmpiRoutesOptions } from './empi-routes.ts';
import type { Region } from '../region/index.ts';
import { LinkKeySender, replicationHealth, type ReplicationMetrics, type SyncGate } from '../replication/index.ts';
import { registerRouteAccess } from './route-access.ts';
import { authRoutes } from './auth-routes.ts';
import { kmsRoutes } from './kms-routes.ts';
import { fhirRoutes } from './fhir-routes.ts';
import { doorServerOptions, MAX_JSON_DEPTH, registerDoor, registerErrorHandling } from './door.ts';
import { DEFAULT_REQUEST_TIMEOUT_MS, registerDeadlines } from './deadline.ts';
import { dicomwebRoutes } from './dicomweb-routes.ts';
import { collectionRoutes } from './collection-routes.ts';
import type { ImagingStore } from '../imaging/index.ts';
import { anonymousResolver, registerIdentity, type IdentityResolver } from './identity.ts';
import { problem, sendProblem } from './outcome.ts';

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
  /** Largest request body in bytes (default DEFAULT_BODY_LIMIT). */
  bodyLimit?: number;
  /** Deepest nesting of objects and arrays in a JSON body (default MAX_JSON_DEPTH). */
  maxJsonDepth?: number;
  /** A request not answered after this many ms is stopped and answered 503 (default DEFAULT_REQUEST_TIMEOUT_MS). */
  requestTimeoutMs?: number;
  /** The site's logger (common/log.ts); requests log under component http. */
  log: Logger;
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
  /** The peers' audit logs checked and cosigned here, and this log verified with what they hold. */
  auditPeers?: {
    verify: NonNullable<AuditRoutesOptions['verify']>;
    states: NonNullable<AuditRoutesOptions['witness']>;
    prometheus: () => string;
  };
  /** Synchronous classes: answers to their writes wait for the DR twin (absent: none). */
  sync?: SyncGate;
  /** More /metrics text (Prometheus), per site: the DIMSE provider's counters. */
  metrics?: ReadonlyArray<(siteId: string) => string>;
}

export async function buildApp(opts: AppOptions): Promise<FastifyInstance> {
  const bodyLimit = opts.bodyLimit ?? DEFAULT_BODY_LIMIT;
  const loggerInstance: FastifyBaseLogger = opts.log.child({ component: 'http' });
  const app = Fastify({
    loggerInstance,
    bodyLimit,
    requestIdHeader: 'x-request-id',
    // FHIR ids and search values are case-sensitive.
    routerOptions: { caseSensitive: true, ignoreTrailingSlash: true },
    ...doorServerOptions(),
  });
  // First: every request is work with a deadline, and closing drains it (deadline.ts).
  registerDeadlines(app, { db: opts.db, timeoutMs: opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS });
  registerDoor(app, { bodyLimit, maxJsonDepth: opts.maxJsonDepth ?? MAX_JSON_DEPTH });
  app.decorateRequest('requester', null);
  app.decorateRequest('auditExtra', null);
  registerIdentity(app, opts.resolveIdentity ?? anonymousResolver);
  registerErrorHandling(app, bodyLimit);
  if (opts.audit) registerAudit(app, { siteId: opts.siteId, audit: opts.audit });
  registerRouteAccess(app);
  // Route schemas are zod schemas (Fastify's type provider): they validate at the door, type the
  // handlers and make the OpenAPI document (/openapi.json, docs/api-reference.md).
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'medmesh site API',
        version: opts.version,
        description:
          'One site of a medmesh region: FHIR R4, DICOMweb, access control, keys, audit, replication. ' +
          'Errors: an OperationOutcome under /fhir, {code, message} elsewhere.',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
    transform: jsonSchemaTransform,
  });
  app.get('/openapi.json', { config: { access: 'public' }, schema: { hide: true } }, () => app.swagger());

  // 200 while the process serves HTTP; `status` says "degraded" (with what) when a replication
  // link is down or changes wait in dead letters: monitoring alerts on it, while load balancers
  // keep sending local requests (docs/operations.md, Health).
  const health = (summary: string) => ({ config: { access: 'public' as const }, schema: { summary, tags: ['health'] } });
  app.get('/healthz', health('Serving, and whether degraded (replication links, dead letters), with the KMS state'), async () => {
    const kms = await opts.kms.status();
    const replication = await replicationHealth({ db: opts.db, ...(opts.replication ? { metrics: opts.replication } : {}) });
    return {
      status: replication.status,
      site: opts.siteId,
      region: opts.regionId,
      kms: {
        initialized: kms.initialized,
        sealed: kms.sealed,
        unsealProgress: kms.threshold ? `${kms.progress}/${kms.threshold}` : null,
      },
      degraded: replication.degraded,
      replication: replication.replication,
      deadLetters: replication.deadLetters,
    };
  });
  // Public like health: numbers about links and queues, no data. Prometheus text format.
  app.get('/metrics', health('Counters and gauges in the Prometheus text format'), async (_req, reply) => {
    const parked = await opts.db.query<{ received: number; sent: number }>(
      `SELECT (SELECT count(*)::int FROM replication_dead_letter WHERE status <> 'skipped') AS received,
              (SELECT count(*)::int FROM replication_feed_dead_letter WHERE status <> 'skipped') AS sent`,
    );
    const site = `{site="${opts.siteId}"}`;
    const extra = [
      opts.replication?.prometheus(opts.siteId) ?? '',
      opts.auditPeers?.prometheus() ?? '',
      ...(opts.metrics ?? []).map((m) => m(opts.siteId)),
    ].join('');
    const body = `${extra}# HELP medmesh_replication_dead_letters Changes received that are parked or waiting behind a parked one.
# TYPE medmesh_replication_dead_letters gauge
medmesh_replication_dead_letters${site} ${parked.rows[0]?.received ?? 0}
# HELP medmesh_replication_feed_dead_letters Own changes that could not be sent, parked or waiting behind one (alarm).
# TYPE medmesh_replication_feed_dead_letters gauge
medmesh_replication_feed_dead_letters${site} ${parked.rows[0]?.sent ?? 0}
`;
    return reply.type('text/plain; version=0.0.4; charset=utf-8').send(body);
  });
  app.get('/readyz', health('Ready while the database answers (503 not-ready otherwise)'), async (req, reply) => {
    try {
      await opts.db.query('SELECT 1');
      return { status: 'ready', site: opts.siteId };
    } catch (e) {
      // The database's own message stays in the log: this route is public.
      req.log.warn({ err: e }, 'readiness: the database does not answer');
      return sendProblem(
        req,
        reply,
        problem(503, 'the database does not answer', { code: 'not-ready', details: { status: 'not-ready', site: opts.siteId } }),
      );
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
      await app.register(empiRoutes, {
        prefix: '/empi',
        db: opts.db,
        region: opts.region,
        access: opts.access,
        blindIndex: opts.blindIndex,
      });
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
        ...(opts.replication ? { metrics: opts.replication } : {}),
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
    const peers = opts.auditPeers;
    await app.register(auditRoutes, {
      prefix: '/audit',
      ...auditOpts,
      ...(identity ? { serviceKey: (id: string) => identity.servicePublicKey(id) } : {}),
      ...(peers ? { verify: peers.verify, witness: peers.states } : {}),
    });
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
    ...(opts.sync ? { sync: opts.sync } : {}),
  });
  return app;
}
