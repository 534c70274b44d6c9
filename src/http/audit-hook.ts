// Every request to a data or admin route is appended to the audit log before the answer
// leaves the server: one entry per access decision (a Bundle yields one per entry), with
// the purpose, the masked fields and the break-glass reason. A site that cannot audit
// (KMS sealed) does not serve clinical data.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { AuditEvent, AuditLog } from '../security/audit/index.ts';
import type { Requester } from '../security/access/index.ts';
import type { Identity } from './identity.ts';
import { problemBody, sendProblem } from './outcome.ts';
import { internal } from './door.ts';

export interface AuditHookOptions {
  siteId: string;
  /** The site's audit log while it can write one (unsealed), else undefined. */
  audit: () => AuditLog | undefined;
}

/** Routes that serve nothing sensitive and are polled often: health, capabilities, public keys, seal state. */
const NOT_AUDITED = /^\/(healthz|readyz|metrics|fhir\/R4\/metadata|auth\/keys|kms\/status)(\?|$|\/)/;
/** Routes refused while sealed: they need the audit log to answer. */
const NEEDS_AUDIT = /^\/(fhir\/R4(?!\/metadata)|auth\/login|access|audit|replication|conflicts|dicomweb)/;

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by the records routes: the caller's purpose and the decisions taken. */
    requester: Requester | null;
    /** Set by admin routes: what the audit entry should say beyond method and path. */
    auditExtra: Partial<AuditEvent> | null;
  }
}

export function registerAudit(app: FastifyInstance, opts: AuditHookOptions): void {
  // Before validation (and before route access, registered after): a sealed site says so first.
  app.addHook('preValidation', async (request, reply) => {
    if (!NEEDS_AUDIT.test(request.url) || opts.audit()) return;
    return sendProblem(request, reply, {
      status: 503,
      fhir: 'transient',
      code: 'sealed',
      message:
        `site ${opts.siteId} is sealed: data is served only while every access can be audited; ` +
        'unseal it (medmesh keys unseal)',
    });
  });
  app.addHook('onSend', async (request, reply, payload) => {
    const log = opts.audit();
    if (!log || NOT_AUDITED.test(request.url)) return payload;
    try {
      const results = await Promise.all(eventsOf(request, reply.statusCode, opts.siteId).map((e) => log.append(e)));
      for (const r of results) if (!r.ok) request.log.error({ issues: r.error.issues }, 'audit event rejected');
      return payload;
    } catch (err) {
      // Nothing leaves unaudited, and the log's failure is not the client's to read.
      const { contentType, body } = problemBody(request.url, {
        ...internal(request, err, 'the access could not be audited: error'),
        status: 503,
        fhir: 'transient',
        code: 'audit-unavailable',
      });
      // reply.code is closed once an answer is on its way (deadline.ts): this one replaces it.
      reply.raw.statusCode = 503;
      reply.header('content-type', contentType).removeHeader('etag').removeHeader('location');
      return body;
    }
  });
}

function eventsOf(request: FastifyRequest, status: number, site: string): AuditEvent[] {
  const base = eventOf(request, status, site);
  const requester = request.requester;
  if (!requester || requester.decisions.length === 0) {
    return [
      {
        ...base,
        ...(requester ? { purpose: requester.purpose } : {}),
        ...(request.auditExtra ?? {}),
      },
    ];
  }
  return requester.decisions.map((d) => ({
    ...base,
    action: d.action,
    resource: d.resource,
    outcome: d.outcome,
    purpose: requester.purpose,
    ...(d.fields?.length ? { fields: d.fields } : {}),
    // Only the accesses break-glass opened carry its reason, not everything done under the emergency purpose.
    ...(d.breakGlass && requester.breakGlass ? { breakGlass: { reason: requester.breakGlass } } : {}),
    detail: d.reason ? `${base.detail ?? ''}: ${d.reason}`.slice(0, 2000) : base.detail,
  }));
}

function eventOf(request: FastifyRequest, status: number, site: string): AuditEvent {
  const path = request.url.split('?')[0]!;
  const header = (name: string) => {
    const v = request.headers[name];
    return typeof v === 'string' && v.length > 0 && v.length < 200 ? v : undefined;
  };
  const target = targetOf(request.method, path);
  return {
    time: new Date().toISOString(),
    site,
    actor: actorOf(request.identity),
    action: target.action,
    outcome: status < 400 ? 'success' : status === 401 || status === 403 ? 'deny' : 'failure',
    ...(target.resource ? { resource: target.resource } : {}),
    sourceIp: request.ip,
    requestId: String(request.id),
    ...(header('x-medmesh-terminal') ? { terminal: header('x-medmesh-terminal') } : {}),
    ...(header('x-client-mac') ? { macAddress: header('x-client-mac') } : {}),
    ...(header('x-medmesh-purpose') ? { purpose: header('x-medmesh-purpose') } : {}),
    detail: `${request.method} ${path.slice(0, 300)} -> ${status}`,
  };
}

function actorOf(identity: Identity | undefined | null): AuditEvent['actor'] {
  if (!identity || identity.kind === 'anonymous') return { kind: 'anonymous', id: 'anonymous' };
  if (identity.kind === 'service') return { kind: 'service', id: identity.serviceId, role: identity.serviceKind };
  return { kind: 'user', id: identity.userId, ...(identity.roles[0] ? { role: identity.roles.join(',') } : {}) };
}

function targetOf(method: string, path: string): { action: string; resource?: string } {
  if (path === '/auth/login') return { action: 'login' };
  if (!path.startsWith('/fhir/R4'))
    return { action: method === 'GET' ? 'admin-read' : 'admin-change', resource: path.slice(0, 200) };
  const parts = path
    .replace(/^\/fhir\/R4\/?/, '')
    .split('/')
    .filter(Boolean)
    .map((p) => safeDecode(p).slice(0, 100));
  const [type, id, sub] = parts;
  if (!type) return { action: method === 'POST' ? 'bundle' : 'system' };
  if (id === '_history' || sub === '_history')
    return { action: parts.length === 4 ? 'vread' : 'history', resource: id && id !== '_history' ? `${type}/${id}` : type };
  if (id === '_search') return { action: 'search', resource: type };
  switch (method) {
    case 'GET':
      return id ? { action: 'read', resource: `${type}/${id}` } : { action: 'search', resource: type };
    case 'POST':
      return { action: 'create', resource: type };
    case 'PUT':
      return { action: 'update', resource: `${type}/${id ?? ''}` };
    case 'DELETE':
      return { action: 'delete', resource: `${type}/${id ?? ''}` };
    default:
      return { action: method.toLowerCase(), resource: type };
  }
}

/** A path segment as the audit entry names it: decoded, control characters (NUL included) replaced. */
function safeDecode(s: string): string {
  let decoded = s;
  try {
    decoded = decodeURIComponent(s);
  } catch {
    // kept as sent
  }
  // eslint-disable-next-line no-control-regex
  return decoded.replace(/[\u0000-\u001f\u007f]/g, '\ufffd');
}
