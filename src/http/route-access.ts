// Every route declares who may call it (`config.access`); a route that declares nothing
// stops the server from starting. The declaration is enforced here, before any schema or handler:
//   public   - anyone (health, capabilities, login, unsealing with custodian shares)
//   records  - a signed-in caller; the records access layer decides per record and field
//   roles    - users holding one of the roles
//   services - other sites, routers or edges with a service assertion
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Identity } from './identity.ts';
import { problem, sendProblem } from './outcome.ts';

/** `roles` and `services` may be combined: a user with one of the roles or a service of one of the kinds. */
export type RouteAccess = 'public' | 'records' | { roles?: readonly string[]; services?: readonly string[] };

export interface RouteEntry {
  method: string;
  url: string;
  access: RouteAccess;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    access?: RouteAccess;
  }
  interface FastifyInstance {
    /** Every route with its declared access (tests walk it to prove each is enforced). */
    routeAccess: RouteEntry[];
  }
}

export function registerRouteAccess(app: FastifyInstance): void {
  const table: RouteEntry[] = [];
  app.decorate('routeAccess', table);
  app.addHook('onRoute', (route) => {
    const access = route.config?.access;
    if (!access)
      throw new Error(
        `route ${String(route.method)} ${route.url} declares no access (config.access): every route must say who may call it`,
      );
    for (const method of [route.method].flat()) table.push({ method, url: route.url, access });
  });
  // Before the route schemas validate: a caller who may not call the route learns that (401/403),
  // not what its request should have looked like.
  app.addHook('preValidation', async (request, reply) => {
    if (request.is404) return;
    const access = request.routeOptions.config.access;
    if (!access) return refuse(request, reply, 403, 'route without an access declaration');
    const verdict = check(access, request.identity);
    if (verdict) return refuse(request, reply, verdict.status, verdict.message);
  });
}

function check(access: RouteAccess, who: Identity): { status: 401 | 403; message: string } | undefined {
  if (access === 'public') return undefined;
  if (who.kind === 'anonymous')
    return {
      status: 401,
      message: 'sign in first: this route needs a Bearer access token (POST /auth/login) or a service assertion',
    };
  if (access === 'records') return undefined;
  if (who.kind === 'user' && who.roles.some((r) => access.roles?.includes(r))) return undefined;
  if (who.kind === 'service' && access.services?.includes(who.serviceKind)) return undefined;
  const allowed = [
    access.roles?.length ? `role(s) ${access.roles.join(', ')}` : '',
    access.services?.length ? `service accounts of kind ${access.services.join(', ')}` : '',
  ]
    .filter(Boolean)
    .join(' or ');
  return { status: 403, message: `this route is for ${allowed}` };
}

function refuse(req: FastifyRequest, reply: FastifyReply, status: 401 | 403, message: string): FastifyReply {
  if (status === 401) reply.header('www-authenticate', 'Bearer');
  return sendProblem(req, reply, problem(status, message));
}
