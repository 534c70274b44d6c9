// Consistency verification over HTTP. Peer sites (service assertions) ask for this site's
// digests, the leaves of differing buckets and, for repair, sealed copies of versions.
// Operators ask this site to check itself against its peers (POST /replication/verify),
// which is also what the scheduled check and `medmesh verify` run.
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { Db } from '../db/index.ts';
import type { Region } from '../region/index.ts';
import { localVerifyPeer, repairAad, sealPage, START, type LinkKeySender, type VerifyReport } from '../replication/index.ts';
import type { Sm2PrivateKey } from '../security/crypto/index.ts';
import type { IdentityService } from '../security/identity/index.ts';
import { peerSiteOf } from './identity.ts';
import { isDatabaseError } from './door.ts';
import { problem, sendProblem } from './outcome.ts';

export interface VerifyRoutesOptions {
  db: Db;
  region: Region;
  siteId: string;
  identity: IdentityService;
  signer: () => Sm2PrivateKey | undefined;
  linkKeys: LinkKeySender;
  /** Runs this site's check against the named peers (all peers when empty). */
  verify: (opts: { peers: string[]; repair: boolean; graceMs: number }) => Promise<VerifyReport[]>;
}

const OPERATORS = { roles: ['administrator', 'operator'] } as const;
const hex64 = z
  .string()
  .regex(/^[0-9a-f]{1,16}$/, 'a 64-bit HLC in hex')
  .transform((s) => BigInt(`0x${s}`));
const scopeSchema = z.strictObject({
  watermark: z.union([
    hex64,
    z
      .string()
      .regex(/^\d{1,20}$/)
      .transform((s) => BigInt(s)),
  ]),
  buckets: z.number().int().min(1).max(256),
});
const leavesSchema = scopeSchema.extend({ keys: z.array(z.string().max(200)).min(1).max(5000) });
const versionsSchema = z.strictObject({
  nonce: z.string().regex(/^[0-9a-f]{32}$/),
  refs: z
    .array(
      z.strictObject({
        resourceType: z.string().regex(/^[A-Z][A-Za-z]+$/),
        id: z.string().max(64),
        versionId: z.string().max(80),
      }),
    )
    .max(500),
});
const verifySchema = z.strictObject({
  peers: z.array(z.string().max(64)).max(100).default([]).describe('Peer sites to check (all when empty)'),
  repair: z.boolean().default(false).describe('Fetch and apply what differs'),
  graceSeconds: z.number().min(0).max(3600).default(5).describe('Changes younger than this are not compared yet'),
});
/** A POST /verify without a body checks every peer with the defaults. */
const VERIFY_DEFAULTS = verifySchema.parse({});
const TAGS = ['replication'];

export const verifyRoutes: FastifyPluginAsyncZod<VerifyRoutesOptions> = async (app, opts) => {
  const peerOf = (req: FastifyRequest, reply: FastifyReply) => peerSiteOf(req, reply, opts.region, opts.siteId);
  const site = { access: { services: ['site'] } } as const;

  app.post(
    '/digests',
    {
      config: site,
      schema: { summary: "This site's bucket digests at a watermark, for a peer site", tags: TAGS, body: scopeSchema },
    },
    async (req, reply) => {
      const peer = peerOf(req, reply);
      if (!peer) return reply;
      return localVerifyPeer({ db: opts.db, region: opts.region, site: opts.siteId, forSite: peer }).digests(req.body);
    },
  );

  for (const [path, what, summary] of [
    ['/digests/leaves', 'leaves', 'The version leaves of differing buckets, for a peer site'],
    ['/digests/states', 'states', 'The derived-state leaves of differing buckets, for a peer site'],
  ] as const)
    app.post(path, { config: site, schema: { summary, tags: TAGS, body: leavesSchema } }, async (req, reply) => {
      const peer = peerOf(req, reply);
      if (!peer) return reply;
      const { keys, ...scope } = req.body;
      return localVerifyPeer({ db: opts.db, region: opts.region, site: opts.siteId, forSite: peer })[what](scope, keys);
    });

  app.post(
    '/versions',
    {
      config: site,
      schema: {
        summary: 'Sealed copies of versions, for a peer site repairing its own',
        description: 'Peer sites only. The answer is an application/octet-stream sealed page (replication/wire.ts).',
        tags: TAGS,
        body: versionsSchema,
      },
    },
    async (req, reply) => {
      const peer = peerOf(req, reply);
      if (!peer) return reply;
      const [receiverKey, senderKey] = [await opts.identity.servicePublicKey(peer), opts.signer()];
      if (!receiverKey) return sendProblem(req, reply, problem(403, `no key registered for site ${peer}`));
      if (!senderKey) return sendProblem(req, reply, problem(503, `site ${opts.siteId} is sealed`, { code: 'sealed' }));
      const changes = await localVerifyPeer({ db: opts.db, region: opts.region, site: opts.siteId, forSite: peer }).versions(
        req.body.refs,
      );
      const page = { changes, next: START, withheld: req.body.refs.length - changes.length, more: false };
      return reply.type('application/octet-stream').send(
        sealPage(page, {
          from: opts.siteId,
          to: peer,
          keys: opts.linkKeys,
          receiverKey,
          senderKey,
          aad: repairAad(opts.siteId, peer, req.body.nonce),
          // Left out of the repair page (the peer keeps reporting it as differing), never a failed page.
          onUnsendable: (c, error) =>
            req.log.warn(
              { changeId: c.changeId, resource: `${c.resourceType}/${c.resourceId}` },
              `repair page for ${peer}: version ${c.versionId} of ${c.resourceType}/${c.resourceId} cannot be sent: ${error}`,
            ),
        }),
      );
    },
  );

  // A check (and repair) of every peer takes longer than the site's request timeout on a large site.
  app.post(
    '/verify',
    {
      config: { access: OPERATORS, timeoutMs: 30 * 60_000 },
      schema: {
        summary: 'Checks this site against its peers (and repairs on request)',
        tags: TAGS,
        body: verifySchema.nullable(),
      },
    },
    async (req, reply) => {
      const body = req.body ?? VERIFY_DEFAULTS;
      const unknown = body.peers.filter((p) => !opts.region.site(p) || p === opts.siteId);
      if (unknown.length)
        return sendProblem(
          req,
          reply,
          problem(
            400,
            `peers: ${unknown.join(', ')} ` +
              `${unknown.length > 1 ? 'are not other sites' : 'is not another site'} of region ${opts.region.id}`,
          ),
        );
      req.auditExtra = {
        action: body.repair ? 'replication-verify-repair' : 'replication-verify',
        resource: `site/${opts.siteId}`,
      };
      try {
        return await opts.verify({ peers: body.peers, repair: body.repair, graceMs: body.graceSeconds * 1000 });
      } catch (e) {
        // A peer's failure is the operator's to read; this site's database's is not (the error handler logs it).
        if (isDatabaseError(e)) throw e;
        return sendProblem(req, reply, problem(502, e instanceof Error ? e.message : String(e), { code: 'peer-unavailable' }));
      }
    },
  );
  await Promise.resolve();
};
