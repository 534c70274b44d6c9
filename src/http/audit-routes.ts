// The audit log over HTTP: the FHIR AuditEvent view (under /fhir/R4), the compliance report,
// signed checkpoints, inclusion and consistency proofs, and cosignatures from other sites.
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import type { Db } from '../db/index.ts';
import { Sm2PublicKey } from '../security/crypto/index.ts';
import {
  complianceReport,
  parseAuditQuery,
  readAuditEvent,
  renderComplianceHtml,
  searchAuditEvents,
  verifyAuditLog,
  type AuditLog,
  type Checkpoint,
} from '../security/audit/index.ts';
import type { Kms } from '../security/kms/index.ts';
import { simpleOutcome } from './outcome.ts';
import type { RouteAccess } from './route-access.ts';

const AUDITORS: RouteAccess = { roles: ['auditor', 'administrator'] };
/** Checkpoints and proofs also serve peer sites that keep and cosign our checkpoints. */
const VERIFIERS: RouteAccess = { roles: ['auditor', 'administrator'], services: ['site'] };
const FHIR_JSON = 'application/fhir+json; charset=utf-8';

export interface AuditRoutesOptions {
  db: Db;
  kms: Kms;
  siteId: string;
  audit: () => AuditLog | undefined;
}

function pairs(req: FastifyRequest): Array<[string, string]> {
  const q = req.url.indexOf('?');
  return q < 0 ? [] : [...new URLSearchParams(req.url.slice(q + 1))];
}

function nat(v: string | undefined): number | undefined {
  return v !== undefined && /^\d{1,15}$/.test(v) ? Number(v) : undefined;
}

function checkpointJson(c: Checkpoint) {
  return {
    treeSize: c.treeSize,
    root: c.root.toString('hex'),
    issuedAt: c.issuedAt,
    statement: c.statement,
    signature: c.signature.toString('base64'),
    signerSite: c.signerSite,
    signerPublicKey: c.signerPublicKey,
  };
}

/** Mounted at /fhir/R4: AuditEvent read and search for auditors. */
export const auditEventRoutes: FastifyPluginAsync<AuditRoutesOptions> = async (app, opts) => {
  const baseUrl = (req: FastifyRequest) => `${req.protocol}://${req.host}/fhir/R4`;
  app.get('/AuditEvent', { config: { access: AUDITORS } }, async (req, reply) => {
    const q = parseAuditQuery(pairs(req));
    if (!q.ok) return reply.code(400).type(FHIR_JSON).send(simpleOutcome('invalid', q.message));
    return reply.type(FHIR_JSON).send(await searchAuditEvents(opts.db, q.value, { baseUrl: baseUrl(req), query: pairs(req) }));
  });
  app.get<{ Params: { id: string } }>('/AuditEvent/:id', { config: { access: AUDITORS } }, async (req, reply) => {
    const seq = nat(req.params.id);
    const e = seq === undefined ? undefined : await readAuditEvent(opts.db, seq);
    return e
      ? reply.type(FHIR_JSON).send(e)
      : reply
          .code(404)
          .type(FHIR_JSON)
          .send(simpleOutcome('not-found', `AuditEvent/${req.params.id} not found`));
  });
  await Promise.resolve();
};

/** Mounted at /audit. */
export const auditRoutes: FastifyPluginAsync<AuditRoutesOptions> = async (app, opts) => {
  const log = (reply: FastifyReply) => {
    const l = opts.audit();
    if (!l) void reply.code(503).send({ error: 'sealed', message: 'the site is sealed' });
    return l;
  };

  app.get<{ Querystring: { from?: string; to?: string; format?: string } }>(
    '/report',
    { config: { access: AUDITORS } },
    async (req, reply) => {
      const { from, to, format = 'html' } = req.query;
      if (!from || !to || Number.isNaN(Date.parse(from)) || Number.isNaN(Date.parse(to)) || Date.parse(from) >= Date.parse(to)) {
        return reply.code(400).send({
          error: 'bad-request',
          message: 'from and to: dates or instants, from before to (e.g. ?from=2026-11-01&to=2026-12-01)',
        });
      }
      if (format !== 'html' && format !== 'json')
        return reply.code(400).send({ error: 'bad-request', message: 'format: html (printable) or json' });
      const signing = opts.kms.signingKey();
      if (!signing) return reply.code(503).send({ error: 'sealed', message: 'the site is sealed' });
      const verification = await verifyAuditLog(opts.db, {
        macKey: opts.kms.deriveSecret('audit-entry-mac'),
        signers: [signing.key.publicKey],
      });
      const report = await complianceReport(opts.db, { site: opts.siteId, from: new Date(from), to: new Date(to), verification });
      return format === 'json' ? report : reply.type('text/html; charset=utf-8').send(renderComplianceHtml(report));
    },
  );

  app.get('/checkpoint', { config: { access: VERIFIERS } }, async (_req, reply) => {
    const l = log(reply);
    if (!l) return reply;
    const c = await l.latestCheckpoint();
    return c ? checkpointJson(c) : reply.code(404).send({ error: 'not-found', message: 'no checkpoint signed yet' });
  });

  app.get<{ Querystring: { seq?: string; treeSize?: string } }>(
    '/proof/inclusion',
    { config: { access: VERIFIERS } },
    async (req, reply) => {
      const l = log(reply);
      if (!l) return reply;
      const seq = nat(req.query.seq);
      const size = nat(req.query.treeSize);
      if (seq === undefined || size === undefined || seq >= size)
        return reply.code(400).send({ error: 'bad-request', message: 'seq and treeSize: integers, seq < treeSize' });
      try {
        const p = await l.inclusionProof(seq, size);
        return { seq, treeSize: size, leafHash: p.leafHash.toString('hex'), proof: p.proof.map((b) => b.toString('hex')) };
      } catch (e) {
        if (e instanceof RangeError) return reply.code(404).send({ error: 'not-found', message: e.message });
        throw e;
      }
    },
  );

  app.get<{ Querystring: { from?: string; to?: string } }>(
    '/proof/consistency',
    { config: { access: VERIFIERS } },
    async (req, reply) => {
      const l = log(reply);
      if (!l) return reply;
      const from = nat(req.query.from);
      const to = nat(req.query.to);
      if (from === undefined || to === undefined || from < 1 || from > to)
        return reply.code(400).send({ error: 'bad-request', message: 'from and to: tree sizes, 1 <= from <= to' });
      try {
        return { from, to, proof: (await l.consistencyProof(from, to)).map((b) => b.toString('hex')) };
      } catch (e) {
        if (e instanceof RangeError) return reply.code(404).send({ error: 'not-found', message: e.message });
        throw e;
      }
    },
  );

  app.post<{ Body: { treeSize?: unknown; signature?: unknown; publicKey?: unknown } | undefined }>(
    '/cosignatures',
    { config: { access: { services: ['site'] } } },
    async (req, reply) => {
      const l = log(reply);
      if (!l) return reply;
      const { treeSize, signature, publicKey } = req.body ?? {};
      if (typeof treeSize !== 'number' || typeof signature !== 'string' || typeof publicKey !== 'string')
        return reply.code(400).send({ error: 'bad-request', message: 'body: {treeSize, signature (base64), publicKey (PEM)}' });
      let key: Sm2PublicKey;
      try {
        key = Sm2PublicKey.fromPem(publicKey);
      } catch {
        return reply.code(400).send({ error: 'bad-request', message: 'publicKey: not an SM2 public key in PEM' });
      }
      const site = req.identity.kind === 'service' ? req.identity.serviceId : 'unknown';
      const ok = await l.addCosignature(treeSize, site, Buffer.from(signature, 'base64'), key);
      return ok
        ? reply.code(201).send({ treeSize, site })
        : reply.code(400).send({
            error: 'bad-request',
            message: `the signature does not verify over checkpoint ${treeSize}, or there is no such checkpoint`,
          });
    },
  );

  await Promise.resolve();
};
