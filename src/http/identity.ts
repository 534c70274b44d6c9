// One place resolves who is calling: a Bearer access token (user), a MedmeshService
// assertion (another site, a router, an edge) or nobody (anonymous). A credential that is
// present but bad is answered 401 here, before any route runs.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Region } from '../region/index.ts';
import type { IdentityError, IdentityService, Principal } from '../security/identity/index.ts';

export type Identity = { kind: 'anonymous' } | Principal;

export type IdentityResolver = (
  request: FastifyRequest,
) => Promise<{ ok: true; identity: Identity } | { ok: false; error: IdentityError }>;

export const anonymousResolver: IdentityResolver = () => Promise.resolve({ ok: true, identity: { kind: 'anonymous' } });

export function tokenResolver(identity: IdentityService): IdentityResolver {
  return async (request) => {
    const header = request.headers.authorization;
    if (!header) return { ok: true, identity: { kind: 'anonymous' } };
    const [scheme, credential] = header.split(' ', 2);
    if (!credential)
      return {
        ok: false,
        error: {
          kind: 'token-invalid',
          message: 'Authorization header must be "Bearer <token>" or "MedmeshService <assertion>"',
        },
      };
    const r =
      scheme === 'Bearer'
        ? await identity.authenticate(credential)
        : scheme === 'MedmeshService'
          ? await identity.authenticateService(credential)
          : undefined;
    if (!r) return { ok: false, error: { kind: 'token-invalid', message: `unsupported authorization scheme ${scheme ?? ''}` } };
    return r.ok ? { ok: true, identity: r.value } : r;
  };
}

/** The id an audit entry or a document's author field records for a caller. */
export function actorId(identity: Identity): string {
  switch (identity.kind) {
    case 'anonymous':
      return 'anonymous';
    case 'service':
      return `service:${identity.serviceId}`;
    case 'user':
      return identity.userId;
  }
}

/**
 * The asking site, when the caller is another site of the region (changefeed, digests,
 * repair pages); otherwise answers 403 and returns undefined.
 */
export function peerSiteOf(req: FastifyRequest, reply: FastifyReply, region: Region, siteId: string): string | undefined {
  const peer = req.identity.kind === 'service' ? req.identity.serviceId : '';
  if (region.site(peer) && peer !== siteId) return peer;
  void reply.code(403).send({ error: 'forbidden', message: `service ${peer} is not another site of region ${region.id}` });
  return undefined;
}

declare module 'fastify' {
  interface FastifyRequest {
    identity: Identity;
  }
}

export function registerIdentity(app: FastifyInstance, resolve: IdentityResolver): void {
  app.decorateRequest('identity', null as never);
  app.addHook('onRequest', async (request, reply) => {
    const r = await resolve(request);
    if (!r.ok && r.error.kind === 'issuer-unavailable') {
      // Sealed: no token can be checked, so nothing but public routes can be served.
      return reply.code(503).send({
        resourceType: 'OperationOutcome',
        issue: [
          {
            severity: 'error',
            code: 'transient',
            diagnostics: `${r.error.message}: data is served only while every access can be checked and audited; unseal it (medmesh keys unseal)`,
          },
        ],
      });
    }
    if (!r.ok)
      return reply
        .code(401)
        .header('www-authenticate', `Bearer error="${r.error.kind}"`)
        .send({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login', diagnostics: r.error.message }] });
    request.identity = r.identity;
  });
}
