// Who is asking and for what purpose (X-Medmesh-Purpose), resolved once per request for the
// routes that reach records through the access layer. A refusal is answered here.
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { AccessControl, AccessErrorKind, Requester } from '../security/access/index.ts';
import { sendProblem } from './outcome.ts';

const ACCESS_STATUS: Record<AccessErrorKind, [number, 'login' | 'forbidden' | 'invalid' | 'not-found']> = {
  unauthenticated: [401, 'login'],
  forbidden: [403, 'forbidden'],
  'bad-request': [400, 'invalid'],
  'not-found': [404, 'not-found'],
};

/** Sets `req.requester` and returns it, or answers the refusal and returns undefined. */
export async function resolveRequester(
  access: AccessControl,
  req: FastifyRequest,
  reply: FastifyReply,
): Promise<Requester | undefined> {
  const purpose = req.headers['x-medmesh-purpose'];
  const r = await access.requester(req.identity, typeof purpose === 'string' ? purpose : undefined);
  if (!r.ok) {
    const [status, code] = ACCESS_STATUS[r.error.kind];
    await sendProblem(req, reply, { status, code, error: r.error.kind, message: r.error.message });
    return undefined;
  }
  req.requester = r.value;
  return r.value;
}
