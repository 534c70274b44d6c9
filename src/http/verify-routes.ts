// Consistency verification over HTTP. Peer sites (service assertions) ask for this site's
// digests, the leaves of differing buckets and, for repair, sealed copies of versions.
// Operators ask this site to check itself against its peers (POST /replication/verify),
// which is also what the scheduled check and `medmesh verify` run.
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import type { Db } from '../db/index.ts';
import type { Region } from '../region/index.ts';
import { localVerifyPeer, repairAad, sealPage, START, type LinkKeySender, type VerifyReport } from '../replication/index.ts';
import type { Sm2PrivateKey } from '../security/crypto/index.ts';
import type { IdentityService } from '../security/identity/index.ts';
import { peerSiteOf } from './identity.ts';
import { isDatabaseError } from './door.ts';

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
  peers: z.array(z.string().max(64)).max(100).default([]),
  repair: z.boolean().default(false),
  graceSeconds: z.number().min(0).max(3600).default(5),
});

const issues = (e: z.ZodError) => e.issues.map((i) => `${i.path.join('.') || '(body)'}: ${i.message}`).join('; ');

export const verifyRoutes: FastifyPluginAsync<VerifyRoutesOptions> = async (app, opts) => {
  const peerOf = (req: FastifyRequest, reply: FastifyReply) => peerSiteOf(req, reply, opts.region, opts.siteId);
  const site = { access: { services: ['site'] } } as const;

  app.post('/digests', { config: site }, async (req, reply) => {
    const peer = peerOf(req, reply);
    if (!peer) return reply;
    const body = scopeSchema.safeParse(req.body);
    if (!body.success) return reply.code(400).send({ error: 'bad-request', message: issues(body.error) });
    return localVerifyPeer({ db: opts.db, region: opts.region, site: opts.siteId, forSite: peer }).digests(body.data);
  });

  for (const [path, what] of [
    ['/digests/leaves', 'leaves'],
    ['/digests/states', 'states'],
  ] as const)
    app.post(path, { config: site }, async (req, reply) => {
      const peer = peerOf(req, reply);
      if (!peer) return reply;
      const body = leavesSchema.safeParse(req.body);
      if (!body.success) return reply.code(400).send({ error: 'bad-request', message: issues(body.error) });
      const { keys, ...scope } = body.data;
      return localVerifyPeer({ db: opts.db, region: opts.region, site: opts.siteId, forSite: peer })[what](scope, keys);
    });

  app.post('/versions', { config: site }, async (req, reply) => {
    const peer = peerOf(req, reply);
    if (!peer) return reply;
    const body = versionsSchema.safeParse(req.body);
    if (!body.success) return reply.code(400).send({ error: 'bad-request', message: issues(body.error) });
    const [receiverKey, senderKey] = [await opts.identity.servicePublicKey(peer), opts.signer()];
    if (!receiverKey) return reply.code(403).send({ error: 'forbidden', message: `no key registered for site ${peer}` });
    if (!senderKey) return reply.code(503).send({ error: 'sealed', message: `site ${opts.siteId} is sealed` });
    const changes = await localVerifyPeer({ db: opts.db, region: opts.region, site: opts.siteId, forSite: peer }).versions(
      body.data.refs,
    );
    const page = { changes, next: START, withheld: body.data.refs.length - changes.length, more: false };
    return reply.type('application/octet-stream').send(
      sealPage(page, {
        from: opts.siteId,
        to: peer,
        keys: opts.linkKeys,
        receiverKey,
        senderKey,
        aad: repairAad(opts.siteId, peer, body.data.nonce),
        // Left out of the repair page (the peer keeps reporting it as differing), never a failed page.
        onUnsendable: (c, error) =>
          req.log.warn(
            { changeId: c.changeId, resource: `${c.resourceType}/${c.resourceId}` },
            `repair page for ${peer}: version ${c.versionId} of ${c.resourceType}/${c.resourceId} cannot be sent: ${error}`,
          ),
      }),
    );
  });

  // A check (and repair) of every peer takes longer than the site's request timeout on a large site.
  app.post('/verify', { config: { access: OPERATORS, timeoutMs: 30 * 60_000 } }, async (req, reply) => {
    const body = verifySchema.safeParse(req.body ?? {});
    if (!body.success) return reply.code(400).send({ error: 'bad-request', message: issues(body.error) });
    const unknown = body.data.peers.filter((p) => !opts.region.site(p) || p === opts.siteId);
    if (unknown.length)
      return reply.code(400).send({
        error: 'bad-request',
        message: `peers: ${unknown.join(', ')} ${unknown.length > 1 ? 'are not other sites' : 'is not another site'} of region ${opts.region.id}`,
      });
    req.auditExtra = {
      action: body.data.repair ? 'replication-verify-repair' : 'replication-verify',
      resource: `site/${opts.siteId}`,
    };
    try {
      return await opts.verify({ peers: body.data.peers, repair: body.data.repair, graceMs: body.data.graceSeconds * 1000 });
    } catch (e) {
      // A peer's failure is the operator's to read; this site's database's is not (the error handler logs it).
      if (isDatabaseError(e)) throw e;
      return reply.code(502).send({ error: 'peer-unavailable', message: e instanceof Error ? e.message : String(e) });
    }
  });
  await Promise.resolve();
};
