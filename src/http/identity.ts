// One place resolves who is calling: a Bearer access token (user), a MedmeshService
// assertion (another site, a router, an edge) or nobody (anonymous). A credential that is
// present but bad is answered 401 here, before any route runs.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Region } from '../region/index.ts';
import type { IdentityError, IdentityService, Principal } from '../security/identity/index.ts';
import { sendProblem } from './outcome.ts';

export type Identity = { kind: 'anonymous' } | Principal;

export type IdentityResolver = (
  request: FastifyRequest,
) => Promise<{ ok: true; identity: Identity } | { ok: false; error: IdentityError }>;

export const anonymousResolver: IdentityResolver = () => Promise.resolve({ ok: true, identity: { kind: 'anonymous' } });

export function tokenResolver(identity: IdentityService): IdentityResolver {
  return async (request) => {
    const header = request.headers.authorization;
    if (!header) return { ok: true, identity: { kind: 'anonymous' } };
    // The scheme is case-insensitive (RFC 7235 §2.1); the credential follows one or more spaces.
    const m = /^([A-Za-z][\w.+-]*) +(\S+) *$/.exec(header);
    const scheme = m?.[1]?.toLowerCase();
    const credential = m?.[2];
    if (!credential)
      return {
        ok: false,
        error: {
          kind: 'token-invalid',
          message: 'Authorization header must be "Bearer <token>" or "MedmeshService <assertion>"',
        },
      };
    const r =
      scheme === 'bearer'
        ? await identity.authenticate(credential)
        : scheme === 'medmeshservice'
          ? await identity.authenticateService(credential)
          : undefined;
    if (!r) return { ok: false, error: { kind: 'token-invalid', message: `unsupported authorization scheme ${m?.[1] ?? ''}` } };
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
  void sendProblem(req, reply, {
    status: 403,
    fhir: 'forbidden',
    code: 'forbidden',
    message: `service ${peer} is not another site of region ${region.id}`,
  });
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
    // A public route (health, capabilities, login) answers whatever credential came along: a probe
    // or client holding an expired token, or a sealed site, must still get metadata and health.
    if (!r.ok && (request.routeOptions.config as { access?: unknown } | undefined)?.access === 'public') {
      request.identity = { kind: 'anonymous' };
      return;
    }
    if (!r.ok && r.error.kind === 'issuer-unavailable') {
      // Sealed: no token can be checked, so nothing but public routes can be served.
      return sendProblem(request, reply, {
        status: 503,
        fhir: 'transient',
        code: 'issuer-unavailable',
        message:
          `${r.error.message}: data is served only while every access can be checked and audited; ` +
          'unseal it (medmesh keys unseal)',
      });
    }
    if (!r.ok)
      return sendProblem(request, reply.header('www-authenticate', `Bearer error="${r.error.kind}"`), {
        status: 401,
        fhir: 'login',
        code: r.error.kind,
        message: r.error.message,
      });
    request.identity = r.identity;
  });
}
