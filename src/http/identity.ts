// One place resolves who is calling. Today every caller is anonymous; access control
// (issue 4) replaces the resolver without touching any route.
import type { FastifyInstance, FastifyRequest } from 'fastify';

export type Identity =
  | { kind: 'anonymous' }
  | { kind: 'user'; userId: string; roles: string[] }
  | { kind: 'service'; serviceId: string };

export type IdentityResolver = (request: FastifyRequest) => Promise<Identity>;

export const anonymousResolver: IdentityResolver = () => Promise.resolve({ kind: 'anonymous' });

declare module 'fastify' {
  interface FastifyRequest {
    identity: Identity;
  }
}

export function registerIdentity(app: FastifyInstance, resolve: IdentityResolver): void {
  app.decorateRequest('identity', null as never);
  app.addHook('onRequest', async (request) => {
    request.identity = await resolve(request);
  });
}
