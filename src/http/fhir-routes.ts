// FHIR R4 REST API as a Fastify plugin (mounted at /fhir/R4). Routes stay thin: parse
// HTTP, call the caller's access-controlled view of the record store, map its result to HTTP.
// No route here touches the record store directly.
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import type { Resource } from '@medplum/fhirtypes';
import { z } from 'zod';
import {
  processBundle,
  stripEtag,
  type RecordError,
  type Result,
  type SearchParamTable,
  type WriteOutcome,
} from '../records/index.ts';
import type { AccessControl, RecordAccess } from '../security/access/index.ts';
import { resolveRequester } from './requester.ts';
import { buildCapabilityStatement } from './capability.ts';
import { MAX_PATH_SEGMENT } from './door.ts';
import { FHIR_JSON, problem, recordProblem, sendProblem, statusOf } from './outcome.ts';
import type { SyncGate } from '../replication/index.ts';

export interface FhirRoutesOptions {
  access: AccessControl;
  /** Holds back answers to writes of synchronous classes until the twin applied them (absent: none). */
  sync?: SyncGate;
  searchParams: SearchParamTable;
  siteId: string;
  regionId: string;
  version: string;
}

// ---- request schemas: what the HTTP layer bounds; the record store validates the rest ----------
// (resource types, ids, search parameters and resources, each refusal an OperationOutcome).
const segment = z.string().min(1).max(MAX_PATH_SEGMENT);
const typeParams = z.object({ type: segment.describe('A FHIR resource type (Patient, Observation, ...)') });
const idParams = typeParams.extend({ id: segment.describe('A FHIR id') });
const versionParams = idParams.extend({ vid: segment.describe('A version id') });
/** Most values of one repeated search parameter, and most parameters in one query. */
const MAX_REPEATS = 100;
const MAX_PARAMETERS = 100;
const searchValue = z.union([z.string().max(8192), z.array(z.string().max(8192)).max(MAX_REPEATS)], {
  error: `at most ${MAX_REPEATS} values of one parameter, each at most 8192 characters`,
});
/**
 * FHIR search parameters are open-ended (every indexed parameter of the type, with modifiers):
 * the store parses them (from the URL, in order) and words its refusals. The named ones are
 * here for the API document; all are bounded alike.
 */
const parameters = (named: Record<string, string>) =>
  z
    .object(Object.fromEntries(Object.entries(named).map(([k, d]) => [k, searchValue.optional().describe(d)])))
    .catchall(searchValue)
    .refine((q) => Object.keys(q).length <= MAX_PARAMETERS, `at most ${MAX_PARAMETERS} parameters`);
const searchQuery = parameters({
  _id: 'Resource ids (comma-separated)',
  _lastUpdated: 'Last update (prefixed date, e.g. ge2024-01-01)',
  _count: 'Page size',
  _offset: 'Page offset',
  _sort: 'Sort order (comma-separated, - for descending)',
  _summary: 'count: the total only',
  _total: 'none, estimate or accurate',
}).describe('FHIR search parameters of the type (name[:modifier]=value)');
const historyQuery = parameters({
  _count: 'Page size (1-1000)',
  _offset: 'Page offset',
  _since: 'Versions since this instant',
}).describe('History parameters');
const purposeHeader = z.object({
  'x-medmesh-purpose': z.string().max(200).optional().describe('Purpose of use (treatment, emergency, research, ...)'),
});
const createHeaders = purposeHeader.extend({
  'if-none-exist': z.string().max(8192).optional().describe('Conditional create: a search that must find nothing'),
  prefer: z.string().max(200).optional().describe('return=minimal: no resource in the answer'),
});
const updateHeaders = purposeHeader.extend({
  'if-match': z.string().max(200).optional().describe('The version the update is based on (W/"n")'),
  prefer: z.string().max(200).optional().describe('return=minimal: no resource in the answer'),
});
/** A resource or a Bundle: validated by the record store (R4 rules, OperationOutcome with expressions). */
const resourceBody = z.unknown().meta({ type: 'object', description: 'A FHIR R4 resource (JSON)' });

const RECORDS = { access: 'records' } as const;
const TAGS = ['fhir'];

export const fhirRoutes: FastifyPluginAsyncZod<FhirRoutesOptions> = async (app, opts) => {
  const baseUrl = (req: FastifyRequest) => `${req.protocol}://${req.host}/fhir/R4`;
  // Who is asking and for what purpose, once per request (before the route's schemas: a caller
  // refused here learns only that); the record view enforces the rest.
  app.addHook('preValidation', async (req, reply) => {
    if (req.routeOptions.config.access === 'records') await resolveRequester(opts.access, req, reply);
  });
  const records = (req: FastifyRequest): RecordAccess => {
    if (!req.requester) throw new Error('records route without a requester');
    return opts.access.records(req.requester);
  };

  app.get(
    '/metadata',
    { config: { access: 'public' }, schema: { summary: 'The CapabilityStatement of this site', tags: TAGS } },
    async (req, reply) =>
      send(
        reply,
        200,
        buildCapabilityStatement({
          searchParams: opts.searchParams,
          siteId: opts.siteId,
          regionId: opts.regionId,
          baseUrl: baseUrl(req),
          version: opts.version,
        }),
      ),
  );

  app.post(
    '/',
    {
      config: RECORDS,
      schema: {
        summary: 'A batch or transaction Bundle',
        tags: TAGS,
        headers: purposeHeader,
        body: resourceBody,
        consumes: ['application/fhir+json'],
      },
    },
    async (req, reply) => {
      const r = await processBundle(records(req), req.body, { baseUrl: baseUrl(req), statusOf });
      return r.ok ? send(reply, 200, r.value) : sendError(req, reply, r.error);
    },
  );

  app.get(
    '/:type',
    {
      config: RECORDS,
      schema: {
        summary: 'Searches a resource type',
        tags: TAGS,
        params: typeParams,
        querystring: searchQuery,
        headers: purposeHeader,
      },
    },
    async (req, reply) => {
      const r = await records(req).search(req.params.type, queryPairs(req), { baseUrl: baseUrl(req) });
      return r.ok ? send(reply, 200, r.value) : sendError(req, reply, r.error);
    },
  );

  app.post(
    '/:type/_search',
    {
      config: RECORDS,
      schema: {
        summary: 'Searches a resource type, the parameters in a form body (and the URL)',
        tags: TAGS,
        params: typeParams,
        querystring: searchQuery,
        headers: purposeHeader,
        // The form is read as text and parsed with the URL's parameters, in order.
        body: z.unknown().meta({ type: 'string', description: 'Search parameters (application/x-www-form-urlencoded)' }),
        consumes: ['application/x-www-form-urlencoded'],
      },
    },
    async (req, reply) => {
      const form = typeof req.body === 'string' ? [...new URLSearchParams(req.body)] : [];
      const r = await records(req).search(req.params.type, [...queryPairs(req), ...form], { baseUrl: baseUrl(req) });
      return r.ok ? send(reply, 200, r.value) : sendError(req, reply, r.error);
    },
  );

  app.post(
    '/:type',
    {
      config: RECORDS,
      schema: {
        summary: 'Creates a resource (If-None-Exist: conditionally)',
        tags: TAGS,
        params: typeParams,
        headers: createHeaders,
        body: resourceBody,
        consumes: ['application/fhir+json'],
      },
    },
    async (req, reply) => {
      const ifNoneExist = req.headers['if-none-exist'];
      const sync = await syncMark(opts.sync);
      const r = await records(req).create(req.params.type, req.body, ifNoneExist !== undefined ? { ifNoneExist } : {});
      return sendWrite(req, reply, r, sync);
    },
  );

  app.get(
    '/:type/_history',
    {
      config: RECORDS,
      schema: {
        summary: 'The history of a resource type',
        tags: TAGS,
        params: typeParams,
        querystring: historyQuery,
        headers: purposeHeader,
      },
    },
    async (req, reply) => {
      const h = historyOptions(req);
      if (!h.ok) return sendError(req, reply, h.error);
      const r = await records(req).history(req.params.type, undefined, { ...h.value, baseUrl: baseUrl(req) });
      return r.ok ? send(reply, 200, r.value) : sendError(req, reply, r.error);
    },
  );

  app.get(
    '/:type/:id',
    { config: RECORDS, schema: { summary: 'Reads a resource', tags: TAGS, params: idParams, headers: purposeHeader } },
    async (req, reply) => {
      const r = await records(req).read(req.params.type, req.params.id);
      return r.ok ? sendResource(reply, 200, r.value) : sendError(req, reply, r.error);
    },
  );

  app.put(
    '/:type/:id',
    {
      config: RECORDS,
      schema: {
        summary: 'Updates (or creates) a resource (If-Match: only at that version)',
        tags: TAGS,
        params: idParams,
        headers: updateHeaders,
        body: resourceBody,
        consumes: ['application/fhir+json'],
      },
    },
    async (req, reply) => {
      const ifMatch = req.headers['if-match'];
      const sync = await syncMark(opts.sync);
      const r = await records(req).update(
        req.params.type,
        req.params.id,
        req.body,
        ifMatch !== undefined ? { ifMatch: stripEtag(ifMatch) } : {},
      );
      return sendWrite(req, reply, r, sync);
    },
  );

  app.delete(
    '/:type/:id',
    { config: RECORDS, schema: { summary: 'Deletes a resource', tags: TAGS, params: idParams, headers: purposeHeader } },
    async (req, reply) => {
      const r = await records(req).delete(req.params.type, req.params.id);
      return r.ok ? reply.code(204).send() : sendError(req, reply, r.error);
    },
  );

  app.get(
    '/:type/:id/_history',
    {
      config: RECORDS,
      schema: {
        summary: 'The history of a resource',
        tags: TAGS,
        params: idParams,
        querystring: historyQuery,
        headers: purposeHeader,
      },
    },
    async (req, reply) => {
      const h = historyOptions(req);
      if (!h.ok) return sendError(req, reply, h.error);
      const r = await records(req).history(req.params.type, req.params.id, { ...h.value, baseUrl: baseUrl(req) });
      return r.ok ? send(reply, 200, r.value) : sendError(req, reply, r.error);
    },
  );

  app.get(
    '/:type/:id/_history/:vid',
    {
      config: RECORDS,
      schema: { summary: 'Reads a version of a resource', tags: TAGS, params: versionParams, headers: purposeHeader },
    },
    async (req, reply) => {
      const r = await records(req).vread(req.params.type, req.params.id, req.params.vid);
      return r.ok ? sendResource(reply, 200, r.value) : sendError(req, reply, r.error);
    },
  );

  await Promise.resolve();
};

async function sendWrite(
  req: FastifyRequest,
  reply: FastifyReply,
  r: Result<WriteOutcome>,
  sync: { gate: SyncGate; mark: string } | undefined,
): Promise<FastifyReply> {
  if (!r.ok) return sendError(req, reply, r.error);
  const { resource, status } = r.value;
  const code = status === 'created' ? 201 : 200;
  // A synchronous class: answered once the twin applied it (or as its class says on timeout).
  const synced = status === 'existing' || !sync ? undefined : await sync.gate.confirm(resource, sync.mark);
  if (synced?.status === 'confirmed') reply.header('x-medmesh-sync', `confirmed; site=${synced.twin}`);
  else if (synced?.status === 'timeout') {
    if (synced.policy === 'refuse')
      return sendProblem(
        req,
        reply,
        problem(
          503,
          `${resource.resourceType}/${resource.id} (version ${resource.meta?.versionId}) is written at this site, but its ` +
            `DR twin ${synced.twin} did not confirm it within the ${synced.className} class's time: the write is not ` +
            'known to survive the loss of this site. Treat the outcome as unknown: read it back, or retry with ' +
            'If-None-Exist / If-Match.',
          { code: 'sync-timeout', fhir: 'transient' },
        ),
      );
    reply.header('x-medmesh-sync', `degraded; site=${synced.twin}`);
  }
  reply.header(
    'location',
    `${req.protocol}://${req.host}/fhir/R4/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`,
  );
  if (header(req, 'prefer') === 'return=minimal') {
    setVersionHeaders(reply, resource);
    return reply.code(code).send();
  }
  return sendResource(reply, code, resource);
}

/** Before a write, when synchronous classes exist: where its outbox row will be found (SyncGate.mark). */
async function syncMark(gate: SyncGate | undefined): Promise<{ gate: SyncGate; mark: string } | undefined> {
  return gate?.active ? { gate, mark: await gate.mark() } : undefined;
}

/** How the FHIR API answers with one resource: ETag and Last-Modified from its meta, FHIR JSON. */
export function sendResource(reply: FastifyReply, code: number, resource: Resource): FastifyReply {
  setVersionHeaders(reply, resource);
  return send(reply, code, resource);
}

function setVersionHeaders(reply: FastifyReply, resource: Resource): void {
  if (resource.meta?.versionId) reply.header('etag', `W/"${resource.meta.versionId}"`);
  if (resource.meta?.lastUpdated) reply.header('last-modified', new Date(resource.meta.lastUpdated).toUTCString());
}

export function send(reply: FastifyReply, code: number, body: unknown): FastifyReply {
  return reply.code(code).type(FHIR_JSON).send(body);
}

/** A record store's refusal as its OperationOutcome; a misdirected write names the site that takes it. */
function sendError(req: FastifyRequest, reply: FastifyReply, error: RecordError): FastifyReply {
  if (error.activeSite)
    reply.header('x-medmesh-active-site', error.activeSite.id).header('x-medmesh-active-site-url', error.activeSite.url);
  return sendProblem(req, reply, recordProblem(error));
}

function header(req: FastifyRequest, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function queryPairs(req: FastifyRequest): Array<[string, string]> {
  const q = req.url.indexOf('?');
  return q < 0 ? [] : [...new URLSearchParams(req.url.slice(q + 1))];
}

function historyOptions(req: FastifyRequest): Result<{ count: number; offset: number; since?: Date }> {
  const out: { count: number; offset: number; since?: Date } = { count: 20, offset: 0 };
  for (const [k, v] of queryPairs(req)) {
    if (k === '_count' && /^\d+$/.test(v) && Number(v) >= 1 && Number(v) <= 1000) out.count = Number(v);
    else if (k === '_offset' && /^\d+$/.test(v) && Number(v) <= 10_000) out.offset = Number(v);
    else if (k === '_since' && !Number.isNaN(Date.parse(v))) out.since = new Date(v);
    else if (k !== '_format' && k !== '_pretty')
      return {
        ok: false,
        error: {
          kind: 'bad-request',
          issues: [
            {
              message: `history parameter ${k}=${v} is not supported or malformed (_count 1-1000, _offset, _since instant)`,
              code: 'invalid',
            },
          ],
        },
      };
  }
  return { ok: true, value: out };
}
