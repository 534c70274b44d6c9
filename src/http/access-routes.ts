// The access-control admin API: policies and masking rules (versioned documents), grants,
// break-glass and the decision endpoint. Bodies are validated with schemas; errors are
// {error, message} with the offending path named.
import type { FastifyPluginAsync, FastifyReply } from 'fastify';
import { z } from 'zod';
import {
  ACTIONS,
  PURPOSES,
  defaultPurpose,
  describeIssues,
  MASKING_NAME,
  type AccessControl,
  type AccessError,
  type AccessErrorKind,
} from '../security/access/index.ts';
import type { IdentityService } from '../security/identity/index.ts';
import { actorId } from './identity.ts';
import type { RouteAccess } from './route-access.ts';

const ADMIN: RouteAccess = { roles: ['administrator'] };
const OVERSIGHT: RouteAccess = { roles: ['administrator', 'auditor'] };
const STATUS: Record<AccessErrorKind, number> = { unauthenticated: 401, forbidden: 403, 'bad-request': 400, 'not-found': 404 };

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

function invalid(reply: FastifyReply, error: z.ZodError): FastifyReply {
  const issues = describeIssues(error);
  return reply.code(400).send({ error: 'bad-request', message: issues.join('; '), issues });
}

function refused(reply: FastifyReply, e: AccessError): FastifyReply {
  return reply.code(STATUS[e.kind]).send({ error: e.kind, message: e.message });
}

export const accessRoutes: FastifyPluginAsync<{ access: AccessControl; identity: IdentityService }> = async (
  app,
  { access, identity },
) => {
  app.get('/policies', { config: { access: OVERSIGHT } }, () => access.documents.list('policy'));

  app.get<{ Params: { name: string } }>('/policies/:name/_history', { config: { access: OVERSIGHT } }, async (req, reply) => {
    const versions = await access.documents.history('policy', req.params.name);
    return versions.length
      ? versions
      : reply.code(404).send({ error: 'not-found', message: `no policy named ${req.params.name}` });
  });

  app.put<{ Params: { name: string } }>('/policies/:name', { config: { access: ADMIN } }, async (req, reply) => {
    const r = await access.documents.put('policy', req.params.name, req.body, actorId(req.identity));
    if (!r.ok)
      return r.error.kind === 'invalid'
        ? reply.code(400).send({ error: 'bad-request', message: r.error.issues.join('; '), issues: r.error.issues })
        : reply.code(404).send({ error: 'not-found', message: r.error.message });
    req.auditExtra = { action: 'policy-change', resource: `AccessPolicy/${r.value.name}/_history/${r.value.version}` };
    return reply.code(r.value.version === 1 ? 201 : 200).send(r.value);
  });

  app.get('/masking-rules', { config: { access: OVERSIGHT } }, () => access.documents.history('masking', MASKING_NAME));

  app.put('/masking-rules', { config: { access: ADMIN } }, async (req, reply) => {
    const r = await access.documents.put('masking', MASKING_NAME, req.body, actorId(req.identity));
    if (!r.ok)
      return r.error.kind === 'invalid'
        ? reply.code(400).send({ error: 'bad-request', message: r.error.issues.join('; '), issues: r.error.issues })
        : reply.code(404).send({ error: 'not-found', message: r.error.message });
    req.auditExtra = { action: 'policy-change', resource: `MaskingRules/${MASKING_NAME}/_history/${r.value.version}` };
    return r.value;
  });

  app.get<{ Querystring: { user?: string; patient?: string; active?: string } }>(
    '/grants',
    { config: { access: OVERSIGHT } },
    async (req, reply) => {
      let userId: string | undefined;
      if (req.query.user) {
        const u = await identity.findUser(req.query.user);
        if (!u) return reply.code(404).send({ error: 'not-found', message: `no user ${req.query.user}` });
        userId = u.userId;
      }
      return access.grants.list({
        ...(userId ? { userId } : {}),
        ...(req.query.patient ? { patientId: req.query.patient } : {}),
        ...(req.query.active === 'true' ? { activeAt: new Date() } : {}),
      });
    },
  );

  app.post('/grants', { config: { access: ADMIN } }, async (req, reply) => {
    const b = grantBody.safeParse(req.body);
    if (!b.success) return invalid(reply, b.error);
    const u = await identity.findUser(b.data.user);
    if (!u) return reply.code(404).send({ error: 'not-found', message: `user: no user ${b.data.user}` });
    const r = await access.grants.create({
      kind: 'grant',
      userId: u.userId,
      patientId: b.data.patient,
      reason: b.data.reason,
      validFrom: b.data.validFrom ? new Date(b.data.validFrom) : new Date(),
      validUntil: new Date(b.data.validUntil),
      grantedBy: actorId(req.identity),
    });
    if (!r.ok) return reply.code(400).send({ error: 'bad-request', message: r.message });
    req.auditExtra = {
      action: 'grant',
      resource: `Patient/${b.data.patient}`,
      detail: `grant ${r.value.id} to ${b.data.user} until ${r.value.validUntil}: ${r.value.reason}`,
    };
    return reply.code(201).send(r.value);
  });

  app.delete<{ Params: { id: string } }>('/grants/:id', { config: { access: ADMIN } }, async (req, reply) => {
    const done = await access.grants.revoke(req.params.id, actorId(req.identity));
    req.auditExtra = { action: 'grant-revoke', resource: `Grant/${req.params.id}` };
    return done
      ? reply.code(204).send()
      : reply.code(404).send({ error: 'not-found', message: `no active grant ${req.params.id}` });
  });

  app.post('/break-glass', { config: { access: 'records' } }, async (req, reply) => {
    const may = access.mayBreakGlass(req.identity);
    if (!may.ok) return refused(reply, may.error);
    const b = breakGlassBody.safeParse(req.body);
    if (!b.success) return invalid(reply, b.error);
    const r = await access.breakGlass(req.identity, b.data);
    if (!r.ok) return refused(reply, r.error);
    req.auditExtra = {
      action: 'break-glass',
      resource: `Patient/${b.data.patient}`,
      purpose: 'emergency',
      breakGlass: { reason: r.value.reason },
      detail: `break-glass ${r.value.id} until ${r.value.validUntil}`,
    };
    return reply.code(201).send(r.value);
  });

  app.post('/decide', { config: { access: OVERSIGHT } }, async (req, reply) => {
    const b = decideBody.safeParse(req.body);
    if (!b.success) return invalid(reply, b.error);
    const u = await identity.findUser(b.data.user);
    if (!u) return reply.code(404).send({ error: 'not-found', message: `user: no user ${b.data.user}` });
    const caller = { userId: u.userId, roles: u.roles, attributes: u.attributes };
    const purpose = b.data.purpose ?? defaultPurpose(caller, access.documents.policies()) ?? 'treatment';
    const r = await access.explain({
      caller,
      purpose,
      resourceType: b.data.resourceType,
      ...(b.data.action ? { action: b.data.action } : {}),
      ...(b.data.field ? { field: b.data.field } : {}),
      ...(b.data.id ? { id: b.data.id } : {}),
    });
    return r.ok ? r.value : refused(reply, r.error);
  });

  await Promise.resolve();
};
