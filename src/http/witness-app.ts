// The witness's HTTP server (`medmesh witness`, docs/failover.md): the WitnessApi under
// /witness/v1 and /healthz. Sites call with `Authorization: Bearer <service assertion>` (signed
// with the site's service key for audience 'witness', checked against the key trusted in the
// witness's store), and the `site` a body names must be the caller. Operators' requests (manual
// failover, fence) carry the operator's own signature, which the witness checks; the chain and the
// leases are public (signed votes and lease states, no patient data). Bodies are checked by the
// same zod schemas the client uses (failover/witness-wire); errors are {code, message} (outcome.ts).
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { serializerCompiler, validatorCompiler, type FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import type { Logger, Result } from '../common/index.ts';
import {
  answerToJson,
  chainQuery,
  claimBody,
  fenceBody,
  leaseToJson,
  manualFailoverBody,
  positionOf,
  releaseBody,
  renewBody,
  reportBody,
  WITNESS_API_PREFIX,
  type Witness,
  type WitnessAnswer,
  type WitnessError,
} from '../failover/index.ts';
import { assertionIssuer, verifyServiceAssertion } from '../security/identity/index.ts';
import { doorServerOptions, MAX_JSON_DEPTH, registerDoor, registerErrorHandling } from './door.ts';
import { problem, sendProblem, type Problem } from './outcome.ts';

export interface WitnessAppOptions {
  witness: Witness;
  log: Logger;
  /** Largest request body (default 1 MiB: a renewal of every shard of a region is far smaller). */
  bodyLimit?: number;
}

/** The audience of service assertions sent to the witness. */
export const WITNESS_AUDIENCE = 'witness';

const STATUS: Record<WitnessError['code'], number> = {
  unavailable: 503,
  'not-leader': 503,
  unauthorized: 401,
  'bad-request': 400,
};

export function witnessProblem(e: WitnessError): Problem {
  return problem(STATUS[e.code], e.message, { code: e.code, ...(e.leader ? { details: { leader: e.leader } } : {}) });
}

export async function buildWitnessApp(o: WitnessAppOptions): Promise<FastifyInstance> {
  const bodyLimit = o.bodyLimit ?? 1024 * 1024;
  const loggerInstance: FastifyBaseLogger = o.log.child({ component: 'witness-http' });
  const app = Fastify({ loggerInstance, bodyLimit, routerOptions: { ignoreTrailingSlash: true }, ...doorServerOptions() });
  registerDoor(app, { bodyLimit, maxJsonDepth: MAX_JSON_DEPTH });
  registerErrorHandling(app, bodyLimit);
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  const w = o.witness;

  app.get('/healthz', async (req, reply) => {
    const h = await w.health();
    if (!h.reachable) return sendProblem(req, reply, problem(503, "the witness's coordination store does not answer"));
    return { leader: h.leader, head: h.head ?? null };
  });
  await app.register(witnessRoutes, { prefix: WITNESS_API_PREFIX, witness: w });
  return app;
}

const witnessRoutes: FastifyPluginAsyncZod<{ witness: Witness }> = (app, { witness: w }) => {
  /** The site each request was authenticated as (set before the body is read). */
  const callers = new WeakMap<FastifyRequest, string>();
  const siteCall = async (req: FastifyRequest, reply: FastifyReply) => {
    const refuse = (message: string) => sendProblem(req, reply, problem(401, message, { code: 'unauthorized' }));
    const m = /^Bearer ([A-Za-z0-9_.-]+)$/.exec(req.headers.authorization ?? '');
    if (!m) return refuse('a site calls the witness with Authorization: Bearer <service assertion>');
    const issuer = assertionIssuer(m[1]!);
    if (!issuer) return refuse('the service assertion names no site (kid)');
    const key = await w.siteKey(issuer);
    if (!key.ok) return sendProblem(req, reply, witnessProblem(key.error));
    if (!key.value) return refuse(`site ${issuer} is not trusted by the witness (medmesh witness trust --site ${issuer})`);
    const v = verifyServiceAssertion(m[1]!, key.value, { audience: 'witness' });
    if (!v.ok) return refuse(v.error.message);
    callers.set(req, issuer);
    return undefined;
  };
  /** The body's `site` must be the caller: a site speaks only for itself. */
  const asCaller = (req: FastifyRequest, reply: FastifyReply, site: string): boolean => {
    const caller = callers.get(req);
    if (caller === site) return true;
    void sendProblem(req, reply, problem(401, `site ${caller ?? '?'} may not speak for site ${site}`, { code: 'unauthorized' }));
    return false;
  };
  const answer = (req: FastifyRequest, reply: FastifyReply, r: Result<WitnessAnswer, WitnessError>) =>
    r.ok ? reply.send(answerToJson(r.value)) : sendProblem(req, reply, witnessProblem(r.error));

  app.post('/renew', { onRequest: siteCall, schema: { body: renewBody } }, async (req, reply) => {
    if (!asCaller(req, reply, req.body.site)) return reply;
    const shards = req.body.shards.map((s) => ({ shard: s.shard, position: positionOf(s.position) }));
    return answer(req, reply, await w.renew({ site: req.body.site, shards }));
  });

  app.post('/report', { onRequest: siteCall, schema: { body: reportBody } }, async (req, reply) => {
    if (!asCaller(req, reply, req.body.site)) return reply;
    const shards = req.body.shards.map((s) => ({ shard: s.shard, appliedPosition: positionOf(s.appliedPosition) }));
    return answer(req, reply, await w.report({ site: req.body.site, shards }));
  });

  app.post('/claim', { onRequest: siteCall, schema: { body: claimBody } }, async (req, reply) => {
    if (!asCaller(req, reply, req.body.site)) return reply;
    const b = req.body;
    return answer(req, reply, await w.claim({ site: b.site, shard: b.shard, appliedPosition: positionOf(b.appliedPosition) }));
  });

  app.post('/release', { onRequest: siteCall, schema: { body: releaseBody } }, async (req, reply) => {
    if (!asCaller(req, reply, req.body.site)) return reply;
    const b = req.body;
    const finalPosition = positionOf(b.finalPosition);
    return answer(req, reply, await w.release({ site: b.site, shard: b.shard, successor: b.successor, finalPosition }));
  });

  // Operators: their signature over the request is the authority (checked by the witness).
  app.post('/manual-failover', { schema: { body: manualFailoverBody } }, async (req, reply) =>
    answer(req, reply, await w.manualFailover(req.body)),
  );

  app.post('/fence', { schema: { body: fenceBody } }, async (req, reply) => answer(req, reply, await w.fence(req.body)));

  app.get('/chain', { schema: { querystring: chainQuery } }, async (req, reply) => {
    const r = await w.chain({ after: req.query.after, ...(req.query.limit !== undefined ? { limit: req.query.limit } : {}) });
    return r.ok ? reply.send(r.value) : sendProblem(req, reply, witnessProblem(r.error));
  });

  app.get('/leases', async (req, reply) => {
    const r = await w.leases();
    return r.ok
      ? reply.send({ leases: r.value.leases.map(leaseToJson), head: r.value.head, leader: r.value.leader })
      : sendProblem(req, reply, witnessProblem(r.error));
  });
  return Promise.resolve();
};
