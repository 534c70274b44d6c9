// Login, refresh, revocation and the issuer's public key. Requests are validated by the route
// schemas; refusals are Problems (outcome.ts) with the identity error's kind as their code.
// All public: the credential is in the body (password, refresh token, the token to revoke).
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { IdentityError, IdentityService } from '../security/identity/index.ts';
import { identityProblem, problem, sendProblem } from './outcome.ts';

/** Longest credential accepted (a password, a token). */
const MAX_CREDENTIAL = 4096;
const credential = z.string().min(1).max(MAX_CREDENTIAL);

const loginBody = z.object({
  username: credential,
  password: credential,
  totp: z.string().max(MAX_CREDENTIAL).optional().describe('the current TOTP code, for users with a second factor'),
});
const refreshBody = z.object({ refreshToken: credential });
const revokeBody = z.object({ token: credential.describe('an access or refresh token') });

function identityRefused(req: FastifyRequest, reply: FastifyReply, e: IdentityError): FastifyReply {
  return sendProblem(req, reply.header('www-authenticate', `Bearer error="${e.kind}"`), identityProblem(e));
}

export const authRoutes: FastifyPluginAsyncZod<{ identity: IdentityService }> = async (app, { identity }) => {
  app.post(
    '/login',
    {
      config: { access: 'public' },
      schema: { summary: 'Signs a user in: access and refresh tokens', tags: ['auth'], body: loginBody },
    },
    async (req, reply) => {
      const { username, password, totp } = req.body;
      const r = await identity.login({ username, password, ...(totp ? { totp } : {}) });
      return r.ok ? r.value : identityRefused(req, reply, r.error);
    },
  );

  app.post(
    '/refresh',
    {
      config: { access: 'public' },
      schema: { summary: 'Trades a refresh token (single use) for new tokens', tags: ['auth'], body: refreshBody },
    },
    async (req, reply) => {
      const r = await identity.refresh(req.body.refreshToken);
      return r.ok ? r.value : identityRefused(req, reply, r.error);
    },
  );

  app.post(
    '/revoke',
    { config: { access: 'public' }, schema: { summary: 'Revokes an access or refresh token', tags: ['auth'], body: revokeBody } },
    async (req, reply) => {
      const r = await identity.revoke(req.body.token);
      return r.ok ? reply.code(204).send() : identityRefused(req, reply, r.error);
    },
  );

  app.get(
    '/keys',
    { config: { access: 'public' }, schema: { summary: "The token issuer's public key (SM2)", tags: ['auth'] } },
    async (req, reply) => {
      const k = identity.publicKey();
      return k
        ? { keys: [{ kid: k.kid, alg: 'SM2-SM3', publicKey: k.pem }] }
        : sendProblem(req, reply, problem(503, 'the site is sealed', { code: 'issuer-unavailable' }));
    },
  );

  await Promise.resolve();
};
