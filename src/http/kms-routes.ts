// KMS over HTTP: status and unsealing for operators, share deposits between sites. Requests are
// validated by the route schemas; KMS refusals are Problems naming the KMS error code (kmsProblem).
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { Sm2PublicKey } from '../security/crypto/index.ts';
import { decodeShareToken, parseWrappedShare, type Kms } from '../security/kms/index.ts';
import { kmsProblem, sendProblem } from './outcome.ts';

export interface KmsRoutesOptions {
  kms: Kms;
  /** The service key registered here for a site (medmesh peers trust), to check its share deposits. */
  siteKey: (siteId: string) => Promise<Sm2PublicKey | undefined>;
}

// A share token is mmshare1.<key id>.<index>.<hex> (about 120 characters); its form is the KMS's to check.
const unsealBody = z.object({
  share: z.string({ error: 'a master key share, "mmshare1...."' }).min(1).max(1000).describe('a custodian share, mmshare1....'),
});
const sharesQuery = z.object({
  owner: z.string({ error: 'the site whose shares to list, required' }).min(1).max(64),
});

export const kmsRoutes: FastifyPluginAsyncZod<KmsRoutesOptions> = async (app, { kms, siteKey }) => {
  /** A KMS refusal answered; anything else is not a refusal and fails the request. */
  const refused = (req: FastifyRequest, reply: FastifyReply, e: unknown): FastifyReply => {
    const p = kmsProblem(e);
    if (!p) throw e;
    return sendProblem(req, reply, p);
  };

  app.get(
    '/status',
    { config: { access: 'public' }, schema: { summary: 'Initialized, sealed, unseal progress', tags: ['kms'] } },
    () => kms.status(),
  );

  // Public: a sealed site cannot verify tokens; the custodian's share is the credential (checked against the CMK check value).
  app.post(
    '/unseal',
    {
      config: { access: 'public' },
      schema: { summary: "Submits one custodian's share of the master key", tags: ['kms'], body: unsealBody },
    },
    async (req, reply) => {
      try {
        return await kms.submitShare(decodeShareToken(req.body.share));
      } catch (e) {
        return refused(req, reply, e);
      }
    },
  );

  // Wrapped shares are encrypted to custodians, so keeping and listing them discloses nothing;
  // both stay public so custodians can deposit and fetch while every site is sealed. A deposit
  // must be signed by its site's service key (registered here): nobody else can fill the slot.
  app.post(
    '/shares',
    {
      config: { access: 'public' },
      // The body is a wrapped share file, checked (and its errors worded) by the KMS.
      schema: { summary: "Deposits another site's wrapped share (signed by that site)", tags: ['kms'], body: z.unknown() },
    },
    async (req, reply) => {
      try {
        const share = parseWrappedShare(JSON.stringify(req.body));
        await kms.depositShare(share, await siteKey(share.site));
        return reply.code(204).send();
      } catch (e) {
        return refused(req, reply, e);
      }
    },
  );

  app.get(
    '/shares',
    {
      config: { access: 'public' },
      schema: { summary: 'The wrapped shares of a site deposited here', tags: ['kms'], querystring: sharesQuery },
    },
    (req) => kms.depositedShares(req.query.owner),
  );

  await Promise.resolve();
};
