// Login, refresh, revocation and the issuer's public key. Errors answer 400/401 with the reason.
// All public: the credential is in the body (password, refresh token, the token to revoke).
import type { FastifyPluginAsync, FastifyReply } from 'fastify';
import type { IdentityError, IdentityErrorKind, IdentityService } from '../security/identity/index.ts';

const STATUS: Record<IdentityErrorKind, number> = {
  'bad-request': 400,
  'invalid-credentials': 401,
  'second-factor-required': 401,
  'second-factor-invalid': 401,
  'second-factor-replayed': 401,
  'user-disabled': 403,
  'token-invalid': 401,
  'token-expired': 401,
  'token-revoked': 401,
  'unknown-service': 401,
  'issuer-unavailable': 503,
};

export function sendIdentityError(reply: FastifyReply, e: IdentityError): FastifyReply {
  return reply
    .code(STATUS[e.kind])
    .header('www-authenticate', `Bearer error="${e.kind}"`)
    .send({ error: e.kind, message: e.message });
}

const str = (v: unknown): string | undefined => (typeof v === 'string' && v.length > 0 && v.length <= 4096 ? v : undefined);

export const authRoutes: FastifyPluginAsync<{ identity: IdentityService }> = async (app, { identity }) => {
  app.post<{ Body: Record<string, unknown> | undefined }>('/login', { config: { access: 'public' } }, async (req, reply) => {
    const username = str(req.body?.username);
    const password = str(req.body?.password);
    if (!username || !password)
      return reply.code(400).send({ error: 'bad-request', message: 'body must be {"username", "password", "totp"?}' });
    const totp = str(req.body?.totp);
    const r = await identity.login({ username, password, ...(totp ? { totp } : {}) });
    return r.ok ? r.value : sendIdentityError(reply, r.error);
  });

  app.post<{ Body: Record<string, unknown> | undefined }>('/refresh', { config: { access: 'public' } }, async (req, reply) => {
    const token = str(req.body?.refreshToken);
    if (!token) return reply.code(400).send({ error: 'bad-request', message: 'body must be {"refreshToken"}' });
    const r = await identity.refresh(token);
    return r.ok ? r.value : sendIdentityError(reply, r.error);
  });

  app.post<{ Body: Record<string, unknown> | undefined }>('/revoke', { config: { access: 'public' } }, async (req, reply) => {
    const token = str(req.body?.token);
    if (!token)
      return reply.code(400).send({ error: 'bad-request', message: 'body must be {"token"} (an access or refresh token)' });
    const r = await identity.revoke(token);
    return r.ok ? reply.code(204).send() : sendIdentityError(reply, r.error);
  });

  app.get('/keys', { config: { access: 'public' } }, async (_req, reply) => {
    const k = identity.publicKey();
    return k
      ? { keys: [{ kid: k.kid, alg: 'SM2-SM3', publicKey: k.pem }] }
      : reply.code(503).send({ error: 'issuer-unavailable', message: 'the site is sealed' });
  });

  await Promise.resolve();
};
