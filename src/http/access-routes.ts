// The access-control admin API: policies and masking rules (versioned documents), grants,
// break-glass and the decision endpoint. Requests are validated by the route schemas; errors
// are Problems (outcome.ts), the offending path named.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { ACTIONS, PURPOSES, defaultPurpose, MASKING_NAME, type AccessControl } from '../security/access/index.ts';
import type { IdentityService } from '../security/identity/index.ts';
import { actorId } from './identity.ts';
import { accessProblem, problem, sendProblem } from './outcome.ts';
import type { RouteAccess } from './route-access.ts';

const ADMIN: RouteAccess = { roles: ['administrator'] };
const OVERSIGHT: RouteAccess = { roles: ['administrator', 'auditor'] };

const grantBody = z.strictObject({
  user: z.string().min(1).max(200),
  patient: z.string().regex(/^[A-Za-z0-9\-.]{1,64}$/, 'a Patient id'),
  reason: z.string().min(10).max(1000),
  validFrom: z.iso.datetime({ offset: true }).optional(),
  validUntil: z.iso.datetime({ offset: true }),
});
const breakGlassBody = z.strictObject({
  patient: z.string().regex(/^[A-Za-z0-9\-.]{1,64}$/, 'a Patient id'),
  reason: z.string().min(10, 'say why, in at least 10 characters').max(1000),
  minutes: z.number().int().positive().optional(),
});
const decideBody = z.strictObject({
  user: z.string().min(1).max(200),
  purpose: z.enum(PURPOSES).optional(),
  action: z.enum(ACTIONS).optional(),
  resourceType: z.string().regex(/^[A-Z][A-Za-z]+$/),
  field: z
    .string()
    .regex(/^[a-z][A-Za-z0-9]*$/)
    .optional(),
  id: z
    .string()
    .regex(/^[A-Za-z0-9\-.]{1,64}$/)
    .optional(),
});

const name = z.object({ name: z.string().min(1).max(100) });
const grantId = z.object({ id: z.string().min(1).max(100) });
const grantQuery = z.object({
  user: z.string().min(1).max(200).optional(),
  patient: z
    .string()
    .regex(/^[A-Za-z0-9\-.]{1,64}$/, 'a Patient id')
    .optional(),
  active: z.enum(['true', 'false']).optional(),
});

export const accessRoutes: FastifyPluginAsyncZod<{ access: AccessControl; identity: IdentityService }> = async (
  app,
  { access, identity },
) => {
  const documentRefused = (e: { kind: 'invalid'; issues: string[] } | { kind: 'not-found'; message: string }) =>
    e.kind === 'invalid' ? problem(400, e.issues.join('; '), { details: { issues: e.issues } }) : problem(404, e.message);

  app.get(
    '/policies',
    { config: { access: OVERSIGHT }, schema: { summary: 'Access policies in force, by role', tags: ['access'] } },
    () => access.documents.list('policy'),
  );

  app.get(
    '/policies/:name/_history',
    { config: { access: OVERSIGHT }, schema: { summary: 'Every version of a policy', tags: ['access'], params: name } },
    async (req, reply) => {
      const versions = await access.documents.history('policy', req.params.name);
      return versions.length ? versions : sendProblem(req, reply, problem(404, `no policy named ${req.params.name}`));
    },
  );

  app.put(
    '/policies/:name',
    {
      config: { access: ADMIN },
      // The body is an access policy, validated (and its errors worded) by the documents' own schema.
      schema: { summary: 'Writes a new version of a policy', tags: ['access'], params: name, body: z.unknown() },
    },
    async (req, reply) => {
      const r = await access.documents.put('policy', req.params.name, req.body, actorId(req.identity));
      if (!r.ok) return sendProblem(req, reply, documentRefused(r.error));
      req.auditExtra = { action: 'policy-change', resource: `AccessPolicy/${r.value.name}/_history/${r.value.version}` };
      return reply.code(r.value.version === 1 ? 201 : 200).send(r.value);
    },
  );

  app.get(
    '/masking-rules',
    { config: { access: OVERSIGHT }, schema: { summary: 'Every version of the masking rules', tags: ['access'] } },
    () => access.documents.history('masking', MASKING_NAME),
  );

  app.put(
    '/masking-rules',
    {
      config: { access: ADMIN },
      schema: { summary: 'Writes a new version of the masking rules', tags: ['access'], body: z.unknown() },
    },
    async (req, reply) => {
      const r = await access.documents.put('masking', MASKING_NAME, req.body, actorId(req.identity));
      if (!r.ok) return sendProblem(req, reply, documentRefused(r.error));
      req.auditExtra = { action: 'policy-change', resource: `MaskingRules/${MASKING_NAME}/_history/${r.value.version}` };
      return r.value;
    },
  );

  app.get(
    '/grants',
    {
      config: { access: OVERSIGHT },
      schema: { summary: 'Grants and break-glass accesses', tags: ['access'], querystring: grantQuery },
    },
    async (req, reply) => {
      let userId: string | undefined;
      if (req.query.user) {
        const u = await identity.findUser(req.query.user);
        if (!u) return sendProblem(req, reply, problem(404, `no user ${req.query.user}`));
        userId = u.userId;
      }
      return access.grants.list({
        ...(userId ? { userId } : {}),
        ...(req.query.patient ? { patientId: req.query.patient } : {}),
        ...(req.query.active === 'true' ? { activeAt: new Date() } : {}),
      });
    },
  );

  app.post(
    '/grants',
    {
      config: { access: ADMIN },
      schema: { summary: 'Grants a user access to a patient for a while', tags: ['access'], body: grantBody },
    },
    async (req, reply) => {
      const u = await identity.findUser(req.body.user);
      if (!u) return sendProblem(req, reply, problem(404, `user: no user ${req.body.user}`));
      const r = await access.grants.create({
        kind: 'grant',
        userId: u.userId,
        patientId: req.body.patient,
        reason: req.body.reason,
        validFrom: req.body.validFrom ? new Date(req.body.validFrom) : new Date(),
        validUntil: new Date(req.body.validUntil),
        grantedBy: actorId(req.identity),
      });
      if (!r.ok) return sendProblem(req, reply, problem(400, r.message));
      req.auditExtra = {
        action: 'grant',
        resource: `Patient/${req.body.patient}`,
        detail: `grant ${r.value.id} to ${req.body.user} until ${r.value.validUntil}: ${r.value.reason}`,
      };
      return reply.code(201).send(r.value);
    },
  );

  app.delete(
    '/grants/:id',
    { config: { access: ADMIN }, schema: { summary: 'Revokes a grant', tags: ['access'], params: grantId } },
    async (req, reply) => {
      const done = await access.grants.revoke(req.params.id, actorId(req.identity));
      req.auditExtra = { action: 'grant-revoke', resource: `Grant/${req.params.id}` };
      return done ? reply.code(204).send() : sendProblem(req, reply, problem(404, `no active grant ${req.params.id}`));
    },
  );

  app.post(
    '/break-glass',
    {
      config: { access: 'records' },
      // Who may break the glass at all is decided before the body is validated: a caller who may
      // not learns only that (403), as route access answers for the other routes.
      preValidation: async (req, reply) => {
        const may = access.mayBreakGlass(req.identity);
        return may.ok ? undefined : sendProblem(req, reply, accessProblem(may.error));
      },
      schema: { summary: 'Opens one patient for an emergency, with a reason (audited)', tags: ['access'], body: breakGlassBody },
    },
    async (req, reply) => {
      const r = await access.breakGlass(req.identity, req.body);
      if (!r.ok) return sendProblem(req, reply, accessProblem(r.error));
      req.auditExtra = {
        action: 'break-glass',
        resource: `Patient/${req.body.patient}`,
        purpose: 'emergency',
        breakGlass: { reason: r.value.reason },
        detail: `break-glass ${r.value.id} until ${r.value.validUntil}`,
      };
      return reply.code(201).send(r.value);
    },
  );

  app.post(
    '/decide',
    {
      config: { access: OVERSIGHT },
      schema: { summary: 'Explains the decision for a user, purpose and resource', tags: ['access'], body: decideBody },
    },
    async (req, reply) => {
      const u = await identity.findUser(req.body.user);
      if (!u) return sendProblem(req, reply, problem(404, `user: no user ${req.body.user}`));
      const caller = { userId: u.userId, roles: u.roles, attributes: u.attributes };
      const purpose = req.body.purpose ?? defaultPurpose(caller, access.documents.policies()) ?? 'treatment';
      const r = await access.explain({
        caller,
        purpose,
        resourceType: req.body.resourceType,
        ...(req.body.action ? { action: req.body.action } : {}),
        ...(req.body.field ? { field: req.body.field } : {}),
        ...(req.body.id ? { id: req.body.id } : {}),
      });
      return r.ok ? r.value : sendProblem(req, reply, accessProblem(r.error));
    },
  );

  await Promise.resolve();
};
