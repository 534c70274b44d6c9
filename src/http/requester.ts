// Who is asking and for what purpose (X-Medmesh-Purpose), resolved once per request for the
// routes that reach records through the access layer. A refusal is answered here.
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { AccessControl, Requester } from '../security/access/index.ts';
import { accessProblem, sendProblem } from './outcome.ts';

/** Sets `req.requester` and returns it, or answers the refusal and returns undefined. */
export async function resolveRequester(
  access: AccessControl,
  req: FastifyRequest,
  reply: FastifyReply,
): Promise<Requester | undefined> {
  const purpose = req.headers['x-medmesh-purpose'];
  const r = await access.requester(req.identity, typeof purpose === 'string' ? purpose : undefined);
  if (!r.ok) {
    await sendProblem(req, reply, accessProblem(r.error));
    return undefined;
  }
  req.requester = r.value;
  return r.value;
}
