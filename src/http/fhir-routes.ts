// FHIR R4 REST API as a Fastify plugin (mounted at /fhir/R4). Routes stay thin: parse
// HTTP, call the caller's access-controlled view of the record store, map its result to HTTP.
// No route here touches the record store directly.
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import type { Resource } from '@medplum/fhirtypes';
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
import { FHIR_JSON, outcomeOf, statusOf } from './outcome.ts';

export interface FhirRoutesOptions {
  access: AccessControl;
  searchParams: SearchParamTable;
  siteId: string;
  regionId: string;
  version: string;
}

type TypeParams = { type: string };
type IdParams = { type: string; id: string };
type VersionParams = { type: string; id: string; vid: string };

const RECORDS = { config: { access: 'records' } } as const;

export const fhirRoutes: FastifyPluginAsync<FhirRoutesOptions> = async (app, opts) => {
  const baseUrl = (req: FastifyRequest) => `${req.protocol}://${req.host}/fhir/R4`;
  // Who is asking and for what purpose, once per request; the record view enforces the rest.
  app.addHook('preHandler', async (req, reply) => {
    if (req.routeOptions.config.access === 'records') await resolveRequester(opts.access, req, reply);
  });
  const records = (req: FastifyRequest): RecordAccess => {
    if (!req.requester) throw new Error('records route without a requester');
    return opts.access.records(req.requester);
  };

  app.get('/metadata', { config: { access: 'public' } }, async (req, reply) =>
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

  app.post('/', RECORDS, async (req, reply) => {
    const r = await processBundle(records(req), req.body, { baseUrl: baseUrl(req), statusOf });
    return r.ok ? send(reply, 200, r.value) : sendError(reply, r.error);
  });

  app.get<{ Params: TypeParams }>('/:type', RECORDS, async (req, reply) => {
    const r = await records(req).search(req.params.type, queryPairs(req), { baseUrl: baseUrl(req) });
    return r.ok ? send(reply, 200, r.value) : sendError(reply, r.error);
  });

  app.post<{ Params: TypeParams }>('/:type/_search', RECORDS, async (req, reply) => {
    const form = typeof req.body === 'string' ? [...new URLSearchParams(req.body)] : [];
    const r = await records(req).search(req.params.type, [...queryPairs(req), ...form], { baseUrl: baseUrl(req) });
    return r.ok ? send(reply, 200, r.value) : sendError(reply, r.error);
  });

  app.post<{ Params: TypeParams }>('/:type', RECORDS, async (req, reply) => {
    const ifNoneExist = header(req, 'if-none-exist');
    const r = await records(req).create(req.params.type, req.body, ifNoneExist !== undefined ? { ifNoneExist } : {});
    return sendWrite(req, reply, r);
  });

  app.get<{ Params: TypeParams }>('/:type/_history', RECORDS, async (req, reply) => {
    const h = historyOptions(req);
    if (!h.ok) return sendError(reply, h.error);
    const r = await records(req).history(req.params.type, undefined, { ...h.value, baseUrl: baseUrl(req) });
    return r.ok ? send(reply, 200, r.value) : sendError(reply, r.error);
  });

  app.get<{ Params: IdParams }>('/:type/:id', RECORDS, async (req, reply) => {
    const r = await records(req).read(req.params.type, req.params.id);
    return r.ok ? sendResource(reply, 200, r.value) : sendError(reply, r.error);
  });

  app.put<{ Params: IdParams }>('/:type/:id', RECORDS, async (req, reply) => {
    const ifMatch = header(req, 'if-match');
    const r = await records(req).update(
      req.params.type,
      req.params.id,
      req.body,
      ifMatch !== undefined ? { ifMatch: stripEtag(ifMatch) } : {},
    );
    return sendWrite(req, reply, r);
  });

  app.delete<{ Params: IdParams }>('/:type/:id', RECORDS, async (req, reply) => {
    const r = await records(req).delete(req.params.type, req.params.id);
    return r.ok ? reply.code(204).send() : sendError(reply, r.error);
  });

  app.get<{ Params: IdParams }>('/:type/:id/_history', RECORDS, async (req, reply) => {
    const h = historyOptions(req);
    if (!h.ok) return sendError(reply, h.error);
    const r = await records(req).history(req.params.type, req.params.id, { ...h.value, baseUrl: baseUrl(req) });
    return r.ok ? send(reply, 200, r.value) : sendError(reply, r.error);
  });

  app.get<{ Params: VersionParams }>('/:type/:id/_history/:vid', RECORDS, async (req, reply) => {
    const r = await records(req).vread(req.params.type, req.params.id, req.params.vid);
    return r.ok ? sendResource(reply, 200, r.value) : sendError(reply, r.error);
  });

  await Promise.resolve();
};

function sendWrite(req: FastifyRequest, reply: FastifyReply, r: Result<WriteOutcome>): FastifyReply {
  if (!r.ok) return sendError(reply, r.error);
  const { resource, status } = r.value;
  const code = status === 'created' ? 201 : 200;
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

export function sendError(reply: FastifyReply, error: RecordError): FastifyReply {
  if (error.activeSite)
    reply.header('x-medmesh-active-site', error.activeSite.id).header('x-medmesh-active-site-url', error.activeSite.url);
  return send(reply, statusOf(error), outcomeOf(error));
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
