// KMS over HTTP: status and unsealing for operators, share deposits between sites.
// Errors are JSON problems naming the KMS error code.
import type { FastifyPluginAsync, FastifyReply } from 'fastify';
import type { Sm2PublicKey } from '../security/crypto/index.ts';
import { decodeShareToken, KmsError, parseWrappedShare, type Kms, type KmsErrorCode } from '../security/kms/index.ts';

const STATUS: Record<KmsErrorCode, number> = {
  'not-initialized': 409,
  'already-initialized': 409,
  sealed: 503,
  'bad-share': 400,
  'share-of-other-key': 400,
  'duplicate-share': 409,
  'untrusted-owner': 403,
  'unknown-key': 404,
  'key-exists': 409,
  'version-destroyed': 410,
  'version-below-minimum': 403,
  'not-exportable': 403,
  'not-approved': 403,
  'bad-request': 400,
};

export interface KmsRoutesOptions {
  kms: Kms;
  /** The service key registered here for a site (medmesh peers trust), to check its share deposits. */
  siteKey: (siteId: string) => Promise<Sm2PublicKey | undefined>;
}

export const kmsRoutes: FastifyPluginAsync<KmsRoutesOptions> = async (app, { kms, siteKey }) => {
  const problem = (reply: FastifyReply, e: unknown) => {
    if (e instanceof KmsError) return reply.code(STATUS[e.code]).send({ error: e.code, message: e.message });
    throw e;
  };

  app.get('/status', { config: { access: 'public' } }, () => kms.status());

  // Public: a sealed site cannot verify tokens; the custodian's share is the credential (checked against the CMK check value).
  app.post<{ Body: { share?: unknown } }>('/unseal', { config: { access: 'public' } }, async (req, reply) => {
    if (typeof req.body?.share !== 'string')
      return reply.code(400).send({ error: 'bad-request', message: 'body must be {"share": "mmshare1...."}' });
    try {
      return await kms.submitShare(decodeShareToken(req.body.share));
    } catch (e) {
      return problem(reply, e);
    }
  });

  // Wrapped shares are encrypted to custodians, so keeping and listing them discloses nothing;
  // both stay public so custodians can deposit and fetch while every site is sealed. A deposit
  // must be signed by its site's service key (registered here): nobody else can fill the slot.
  app.post('/shares', { config: { access: 'public' } }, async (req, reply) => {
    try {
      const share = parseWrappedShare(JSON.stringify(req.body));
      await kms.depositShare(share, await siteKey(share.site));
      return reply.code(204).send();
    } catch (e) {
      return problem(reply, e);
    }
  });

  app.get<{ Querystring: { owner?: string } }>('/shares', { config: { access: 'public' } }, async (req, reply) => {
    if (!req.query.owner)
      return reply.code(400).send({ error: 'bad-request', message: 'owner (the site whose shares to list) is required' });
    return kms.depositedShares(req.query.owner);
  });

  await Promise.resolve();
};
