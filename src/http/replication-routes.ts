// The changefeed over HTTP, for peer sites only (service assertions): long-polled pages of
// this site's own changes, filtered to what the asking site may hold, sealed to its key. A
// change that cannot be sent is parked here (feed dead letters), logged and counted; the
// page carries the rest. Operators see and settle dead letters of both directions.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { reasonOf } from '../common/index.ts';
import { OUTBOX_CHANNEL, type Db } from '../db/index.ts';
import type { Region } from '../region/index.ts';
import {
  backlogAfter,
  feedAad,
  type LinkKeySender,
  listDeadLetters,
  listFeedDeadLetters,
  readFeed,
  recordPeerAck,
  type ReplicationMetrics,
  retryDeadLetter,
  retryFeedDeadLetter,
  sealEncoded,
  skipDeadLetter,
  skipFeedDeadLetter,
  type ApplyContext,
  type Cursor,
} from '../replication/index.ts';
import type { Sm2PrivateKey } from '../security/crypto/index.ts';
import type { RecordsContext } from '../records/index.ts';
import { actorId, peerSiteOf } from './identity.ts';
import { problem, sendProblem } from './outcome.ts';
import type { IdentityService } from '../security/identity/index.ts';

export interface ReplicationRoutesOptions {
  db: Db;
  region: Region;
  siteId: string;
  identity: IdentityService;
  /** For the operator's dead-letter API (applying parked changes). */
  records: RecordsContext;
  /** The site's SM2 key (signs feed pages); undefined while the KMS is sealed. */
  signer: () => Sm2PrivateKey | undefined;
  /** This site's current key per receiving site (shared with the repair pages). */
  linkKeys: LinkKeySender;
  /** Counts own changes parked because they could not be sent. */
  metrics?: ReplicationMetrics;
}

const OPERATORS = { roles: ['administrator', 'operator'] } as const;

const MAX_WAIT_S = 25;
/** How often the backlog gauge is recounted for a peer that is catching up. */
const BACKLOG_EVERY_MS = 5000;
/** Long polls look again this often even without a notification. */
const POLL_FALLBACK_MS = 100;

const changesQuery = z.object({
  after: z
    .string()
    .regex(/^\d{1,20}:\d{1,20}$/, 'a cursor <txid>:<pos>')
    .default('0:0')
    .describe('The cursor of the last page applied (0:0 from the start)'),
  limit: z.coerce
    .number({ error: 'an integer from 1 to 5000' })
    .int('an integer from 1 to 5000')
    .min(1, 'an integer from 1 to 5000')
    .max(5000, 'an integer from 1 to 5000')
    .default(500)
    .describe('Most changes in the page'),
  wait: z.coerce
    .number({ error: `seconds from 0 to ${MAX_WAIT_S}` })
    .min(0, `seconds from 0 to ${MAX_WAIT_S}`)
    .max(MAX_WAIT_S, `seconds from 0 to ${MAX_WAIT_S}`)
    .default(0)
    .describe('How long to wait for a change (long poll)'),
});
const listQuery = z.object({
  all: z.enum(['true', 'false']).optional().describe('true: skipped dead letters too'),
});
const changeParams = z.object({
  changeId: z.string().regex(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, 'a change id (a UUID)'),
});
const SKIP_REASON = 'say why this change is skipped (at least 10 characters)';
const skipBody = z.object(
  { reason: z.string({ error: SKIP_REASON }).trim().min(10, SKIP_REASON).max(2000) },
  { error: `send {"reason": "..."}: ${SKIP_REASON}` },
);
const TAGS = ['replication'];

export const replicationRoutes: FastifyPluginAsyncZod<ReplicationRoutesOptions> = async (app, opts) => {
  // A closing server ends its long polls at once instead of holding shutdown for their wait.
  let stopping = false;
  const waiters = new Set<() => void>();
  const wakeAll = () => {
    for (const w of [...waiters]) w();
  };
  app.addHook('preClose', (done) => {
    stopping = true;
    wakeAll();
    done();
  });
  // Commits that wrote changes wake the long polls at once (NOTIFY from the outbox trigger);
  // the timeout covers what a notification cannot tell (an older transaction ending).
  const unlisten = await opts.db
    .listen(OUTBOX_CHANNEL, wakeAll, {
      onError: (e) => app.log.warn({ err: e }, `changefeed: LISTEN connection lost, reconnecting: ${reasonOf(e)}`),
    })
    .catch((e: unknown) => {
      app.log.warn(
        { err: e },
        `changefeed: cannot LISTEN for commits (${e instanceof Error ? e.message : String(e)}); ` +
          `long polls look every ${POLL_FALLBACK_MS} ms instead`,
      );
      return undefined;
    });
  app.addHook('onClose', async () => {
    await unlisten?.();
  });
  // The backlog gauge counts up to BACKLOG_CAP rows: during a catch-up, once per peer every few
  // seconds rather than with every page.
  const counted = new Map<string, { at: number; n: number }>();
  const backlogFor = async (peer: string, next: Cursor) => {
    const last = counted.get(peer);
    if (last && Date.now() - last.at < BACKLOG_EVERY_MS) return last.n;
    const n = await backlogAfter(opts.db, next);
    counted.set(peer, { at: Date.now(), n });
    return n;
  };
  const changed = (ms: number) =>
    new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      waiters.add(done);
    });
  app.get(
    '/changes',
    {
      config: { access: { services: ['site'] } },
      schema: {
        summary: "A page of this site's changes for the asking peer site, sealed to its key (long poll)",
        description: 'Peer sites only. The answer is an application/octet-stream sealed page (replication/wire.ts).',
        tags: TAGS,
        querystring: changesQuery,
      },
    },
    async (req, reply) => {
      const peer = peerSiteOf(req, reply, opts.region, opts.siteId);
      if (!peer) return reply;
      const [txid, pos] = req.query.after.split(':') as [string, string];
      const { limit, wait } = req.query;
      const receiverKey = await opts.identity.servicePublicKey(peer);
      if (!receiverKey) return sendProblem(req, reply, problem(403, `no key registered for site ${peer}`));
      const after: Cursor = { txid, pos };
      // The cursor acknowledges every change up to it: synchronous-class writes wait on it
      // (peer-acks.ts). Without such classes nobody reads it, and no pull pays the statement.
      if (opts.region.config.policies.synchronous.length > 0)
        await recordPeerAck(opts.db, peer, after).catch((e: unknown) =>
          req.log.warn({ err: e }, `changefeed: cannot record ${peer}'s acknowledgement: ${reasonOf(e)}`),
        );
      const deadline = Date.now() + wait * 1000;
      let closed = false;
      reply.raw.once('close', () => {
        closed = true; // the peer went away (or the answer was sent)
      });
      // Long poll: answer as soon as anything moved (changes, or withheld rows the cursor passes).
      // The wake-up is armed before each read, so a commit between read and wait is not missed.
      const read = async () => {
        const page = await readFeed(opts.db, { region: opts.region, forSite: peer, after, limit });
        if (page.parked.length) {
          // A poison change: parked with its reason, counted, and the feed goes on past it.
          opts.metrics?.feedParked(page.parked.length);
          for (const p of page.parked)
            req.log.warn(
              { changeId: p.changeId, resource: p.resource, status: p.status },
              p.status === 'parked'
                ? `changefeed: change ${p.changeId} of ${p.resource} cannot be sent and is parked: ${p.error}`
                : `changefeed: change ${p.changeId} of ${p.resource} waits behind a parked change of its resource`,
            );
        }
        return page;
      };
      let wake = changed(POLL_FALLBACK_MS);
      let page = await read();
      while (
        page.changes.length === 0 &&
        page.next.txid === after.txid &&
        page.next.pos === after.pos &&
        Date.now() < deadline &&
        !closed &&
        !stopping
      ) {
        await wake;
        wake = changed(POLL_FALLBACK_MS);
        page = await read();
      }
      const senderKey = opts.signer();
      if (!senderKey)
        return sendProblem(
          req,
          reply,
          problem(503, `site ${opts.siteId} is sealed: unseal its KMS to serve the changefeed`, { code: 'sealed' }),
        );
      const backlog = page.more ? await backlogFor(peer, page.next) : 0;
      return reply
        .type('application/octet-stream')
        .header('x-medmesh-changes', String(page.changes.length))
        .header('x-medmesh-backlog', String(backlog))
        .send(
          sealEncoded(page, {
            from: opts.siteId,
            to: peer,
            keys: opts.linkKeys,
            receiverKey,
            senderKey,
            aad: feedAad(opts.siteId, peer, after),
          }),
        );
    },
  );
  const applyCtx = (): ApplyContext => ({
    db: opts.db,
    siteId: opts.siteId,
    region: opts.region,
    clock: opts.records.clock,
    records: opts.records,
  });

  const settled = (summary: string) => ({ config: { access: OPERATORS }, schema: { summary, tags: TAGS, params: changeParams } });
  const skipping = (summary: string) => ({
    config: { access: OPERATORS },
    schema: { summary, tags: TAGS, params: changeParams, body: skipBody },
  });

  app.get(
    '/dead-letters',
    {
      config: { access: OPERATORS },
      schema: { summary: 'Changes received that are parked here', tags: TAGS, querystring: listQuery },
    },
    (req) => listDeadLetters(opts.db, { includeSkipped: req.query.all === 'true' }),
  );

  app.post('/dead-letters/:changeId/retry', settled('Applies a parked change again'), async (req, reply) => {
    const r = await retryDeadLetter(applyCtx(), req.params.changeId);
    req.auditExtra = { action: 'dead-letter-retry', resource: `change/${req.params.changeId}` };
    return r.ok ? r : sendProblem(req, reply, problem(409, r.error, { code: 'not-applied' }));
  });

  app.post('/dead-letters/:changeId/skip', skipping('Gives up on a parked change, with the reason'), async (req, reply) => {
    const { reason } = req.body;
    const r = await skipDeadLetter(applyCtx(), req.params.changeId, { reason, by: actorId(req.identity) });
    req.auditExtra = {
      action: 'dead-letter-skip',
      resource: `change/${req.params.changeId}`,
      detail: `skipped: ${reason.slice(0, 500)}`,
    };
    return r.ok ? r : sendProblem(req, reply, problem(404, r.error));
  });

  // This site's own changes that could not be sent (parked at the sender, or waiting behind one).
  app.get(
    '/feed/dead-letters',
    {
      config: { access: OPERATORS },
      schema: { summary: "This site's own changes that could not be sent", tags: TAGS, querystring: listQuery },
    },
    (req) => listFeedDeadLetters(opts.db, { includeSkipped: req.query.all === 'true' }),
  );

  app.post('/feed/dead-letters/:changeId/retry', settled('Sends a parked own change again'), async (req, reply) => {
    const r = await retryFeedDeadLetter(opts.db, req.params.changeId);
    req.auditExtra = { action: 'feed-dead-letter-retry', resource: `change/${req.params.changeId}` };
    return r.ok ? r : sendProblem(req, reply, problem(409, r.error, { code: 'not-sent' }));
  });

  app.post(
    '/feed/dead-letters/:changeId/skip',
    skipping('Gives up on sending an own change, with the reason'),
    async (req, reply) => {
      const { reason } = req.body;
      const r = await skipFeedDeadLetter(opts.db, req.params.changeId, { reason, by: actorId(req.identity) });
      req.auditExtra = {
        action: 'feed-dead-letter-skip',
        resource: `change/${req.params.changeId}`,
        detail: `skipped: ${reason.slice(0, 500)}`,
      };
      return r.ok ? r : sendProblem(req, reply, problem(404, r.error));
    },
  );

  await Promise.resolve();
};
