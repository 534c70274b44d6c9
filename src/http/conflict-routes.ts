// Concurrent versions for clinical review: list the open ones the caller may read, and
// resolve one by writing the reviewed content as a new version (access-controlled like any
// update; the resolution replicates and closes the conflict at the other sites too).
// Requests are validated by the route schemas; refusals are Problems (outcome.ts).
import type { FastifyRequest } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { Db } from '../db/index.ts';
import { listConflicts, listFencedOut, markResolved } from '../records/index.ts';
import { PURPOSES, type AccessControl, type RecordAccess } from '../security/access/index.ts';
import { resolveRequester } from './requester.ts';
import { actorId } from './identity.ts';
import { problem, recordProblem, sendProblem } from './outcome.ts';

const resourceType = z.string().regex(/^[A-Z][A-Za-z]{1,63}$/, 'a FHIR resource type');
const id = z.string().regex(/^[A-Za-z0-9\-.]{1,64}$/, 'a FHIR id');
/** Read by the access layer (resolveRequester) before validation; declared for the API document. */
const purposeHeader = z.object({
  'x-medmesh-purpose': z.enum(PURPOSES).optional().describe('why the caller asks (default: the one of their role)'),
});

const listQuery = z.object({
  resolved: z.enum(['true', 'false']).optional().describe('true: the resolved ones (default: the open ones)'),
  resourceType: resourceType.optional(),
  id: id.optional(),
});
const fencedOutQuery = z.object({
  shard: z
    .string()
    .regex(/^[a-z0-9][a-z0-9-]{0,63}$/, 'a shard id')
    .optional()
    .describe('only this shard'),
});
const resolveBody = z.strictObject({
  resourceType,
  id,
  // The reviewed content is a FHIR resource: the record store validates it.
  resource: z.record(z.string(), z.unknown()),
});

export const conflictRoutes: FastifyPluginAsyncZod<{ db: Db; access: AccessControl }> = async (app, { db, access }) => {
  // Who is asking and for what purpose, before the request's shape: a caller who may read no
  // records is refused as such, whatever they sent.
  app.addHook('preValidation', async (req, reply) => {
    await resolveRequester(access, req, reply);
  });
  const records = (req: FastifyRequest): RecordAccess => {
    if (!req.requester) throw new Error('conflict route without a requester');
    return access.records(req.requester);
  };

  app.get(
    '/',
    {
      config: { access: 'records' },
      schema: {
        summary: 'Concurrent versions awaiting review, of records the caller may read',
        tags: ['replication'],
        querystring: listQuery,
        headers: purposeHeader,
      },
    },
    async (req) => {
      const view = records(req);
      const all = await listConflicts(db, {
        open: req.query.resolved !== 'true',
        ...(req.query.resourceType ? { resourceType: req.query.resourceType } : {}),
        ...(req.query.id ? { id: req.query.id } : {}),
      });
      // Only conflicts of records the caller may read (each check is a decision, and audited).
      const visible = [];
      // A deleted record's conflicts count too: its deletion may be what needs review.
      for (const c of all) {
        const r = await view.read(c.resourceType, c.id);
        if (r.ok || r.error.kind === 'gone') visible.push(c);
      }
      return visible;
    },
  );

  app.get(
    '/fenced-out',
    {
      config: { access: 'records' },
      schema: {
        summary: "Versions of an ended write epoch's unreplicated tail, kept for review (never current)",
        tags: ['replication'],
        querystring: fencedOutQuery,
        headers: purposeHeader,
      },
    },
    async (req) => {
      const view = records(req);
      const all = await listFencedOut(db, req.query.shard ? { shard: req.query.shard } : {});
      // Each version is checked as a vread of itself: a tail may hold a record that has no current version.
      const visible = [];
      for (const v of all) if ((await view.vread(v.resourceType, v.id, v.versionId)).ok) visible.push(v);
      return visible;
    },
  );

  app.post(
    '/resolve',
    {
      config: { access: 'records' },
      schema: {
        summary: 'Resolves a conflict by writing the reviewed content as a new version',
        tags: ['replication'],
        body: resolveBody,
        headers: purposeHeader,
      },
    },
    async (req, reply) => {
      const { resourceType, id, resource } = req.body;
      const view = records(req);
      // The access check comes first: whether a record has open conflicts is not for those who may not see it.
      const seen = await view.read(resourceType, id);
      if (!seen.ok && seen.error.kind === 'forbidden') return sendProblem(req, reply, recordProblem(seen.error));
      const open = await listConflicts(db, { open: true, resourceType, id });
      if (open.length === 0) return sendProblem(req, reply, problem(404, `no open conflict on ${resourceType}/${id}`));
      const written = await view.update(resourceType, id, { ...resource, resourceType, id });
      if (!written.ok) return sendProblem(req, reply, recordProblem(written.error));
      const version = written.value.resource.meta?.versionId ?? '';
      const resolved = await markResolved(db, { resourceType, id, version, by: actorId(req.identity) });
      return { resolved, version, resource: written.value.resource };
    },
  );

  await Promise.resolve();
};
