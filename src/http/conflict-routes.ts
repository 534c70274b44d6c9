// Concurrent versions for clinical review: list the open ones the caller may read, and
// resolve one by writing the reviewed content as a new version (access-controlled like any
// update; the resolution replicates and closes the conflict at the other sites too).
import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import type { Db } from '../db/index.ts';
import { listConflicts, markResolved } from '../records/index.ts';
import type { AccessControl } from '../security/access/index.ts';
import { resolveRequester } from './requester.ts';
import { actorId } from './identity.ts';
import { outcomeOf, statusOf } from './outcome.ts';

const resolveBody = z.strictObject({
  resourceType: z.string().regex(/^[A-Z][A-Za-z]+$/),
  id: z.string().regex(/^[A-Za-z0-9\-.]{1,64}$/),
  resource: z.record(z.string(), z.unknown()),
});

export const conflictRoutes: FastifyPluginAsync<{ db: Db; access: AccessControl }> = async (app, { db, access }) => {
  app.get<{ Querystring: { resolved?: string; resourceType?: string; id?: string } }>(
    '/',
    { config: { access: 'records' } },
    async (req, reply) => {
      const requester = await resolveRequester(access, req, reply);
      if (!requester) return reply;
      const records = access.records(requester);
      const all = await listConflicts(db, {
        open: req.query.resolved !== 'true',
        ...(req.query.resourceType ? { resourceType: req.query.resourceType } : {}),
        ...(req.query.id ? { id: req.query.id } : {}),
      });
      // Only conflicts of records the caller may read (each check is a decision, and audited).
      const visible = [];
      // A deleted record's conflicts count too: its deletion may be what needs review.
      for (const c of all) {
        const r = await records.read(c.resourceType, c.id);
        if (r.ok || r.error.kind === 'gone') visible.push(c);
      }
      return visible;
    },
  );

  app.post('/resolve', { config: { access: 'records' } }, async (req, reply) => {
    const requester = await resolveRequester(access, req, reply);
    if (!requester) return reply;
    const b = resolveBody.safeParse(req.body);
    if (!b.success)
      return reply
        .code(400)
        .send({ error: 'bad-request', message: b.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ') });
    // The access check comes first: whether a record has open conflicts is not for those who may not see it.
    const seen = await access.records(requester).read(b.data.resourceType, b.data.id);
    if (!seen.ok && seen.error.kind === 'forbidden') return reply.code(403).send(outcomeOf(seen.error));
    const open = await listConflicts(db, { open: true, resourceType: b.data.resourceType, id: b.data.id });
    if (open.length === 0)
      return reply.code(404).send({ error: 'not-found', message: `no open conflict on ${b.data.resourceType}/${b.data.id}` });
    const written = await access
      .records(requester)
      .update(b.data.resourceType, b.data.id, { ...b.data.resource, resourceType: b.data.resourceType, id: b.data.id });
    if (!written.ok) return reply.code(statusOf(written.error)).send(outcomeOf(written.error));
    const version = written.value.resource.meta?.versionId ?? '';
    const resolved = await markResolved(db, {
      resourceType: b.data.resourceType,
      id: b.data.id,
      version,
      by: actorId(req.identity),
    });
    return { resolved, version, resource: written.value.resource };
  });

  await Promise.resolve();
};
