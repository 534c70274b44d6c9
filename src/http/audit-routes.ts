// The audit log over HTTP: the FHIR AuditEvent view (under /fhir/R4), the compliance report,
// signed checkpoints, inclusion and consistency proofs, and cosignatures from other sites.
// Requests are validated by the route schemas; refusals are Problems (outcome.ts), answered as
// an OperationOutcome under /fhir.
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { Db } from '../db/index.ts';
import { sm2Sign, Sm2PublicKey } from '../security/crypto/index.ts';
import {
  checkpointJson,
  complianceReport,
  latestHeld,
  parseAuditQuery,
  readAuditEvent,
  renderComplianceHtml,
  searchAuditEvents,
  verifyAuditLog,
  witnessStatement,
  type AuditLog,
  type AuditReport,
  type WitnessPeerState,
} from '../security/audit/index.ts';
import type { Kms } from '../security/kms/index.ts';
import { FHIR_JSON, problem, sendProblem } from './outcome.ts';
import type { RouteAccess } from './route-access.ts';

const AUDITORS: RouteAccess = { roles: ['auditor', 'administrator'] };
/** Checkpoints and proofs also serve peer sites that keep and cosign our checkpoints. */
const VERIFIERS: RouteAccess = { roles: ['auditor', 'administrator'], services: ['site'] };

export interface AuditRoutesOptions {
  db: Db;
  kms: Kms;
  siteId: string;
  audit: () => AuditLog | undefined;
  /** The key registered here for a site (medmesh peers trust): a cosignature must verify with the caller's own. */
  serviceKey?: (serviceId: string) => Promise<Sm2PublicKey | undefined>;
  /** Verifies the log with what the peers hold of it (the site's composition); absent: the local log alone. */
  verify?: () => Promise<{ report: AuditReport; peers: unknown[]; confirmed: boolean }>;
  /** What this site's witness knows of its peers' logs. */
  witness?: () => WitnessPeerState[];
}

function pairs(req: FastifyRequest): Array<[string, string]> {
  const q = req.url.indexOf('?');
  return q < 0 ? [] : [...new URLSearchParams(req.url.slice(q + 1))];
}

/** A FHIR search value, or several when the parameter repeats (date=ge...&date=lt...). */
const searchValue = z.union([z.string().max(256), z.array(z.string().max(256)).max(10)]);
// The search is parsed by the audit view from the query's pairs (its own messages, unknown
// parameters refused there); the schema bounds and documents the parameters.
const auditSearch = z.object({
  date: searchValue.optional().describe('ge|gt|le|lt followed by a date or an instant; twice for a range'),
  agent: searchValue.optional().describe('the user (or service:<id>) that acted'),
  entity: searchValue.optional().describe('the resource, e.g. Patient/123'),
  action: searchValue.optional(),
  outcome: searchValue.optional().describe('allow, deny, failure or success'),
  purpose: searchValue.optional(),
  _count: searchValue.optional().describe('1-1000 (default 50)'),
  _offset: searchValue.optional(),
});
const auditEventId = z.object({ id: z.string().regex(/^[A-Za-z0-9\-.]{1,64}$/, 'a FHIR id') });

/** A whole number in a query string (a log position or a tree size). */
const natural = (what: string) =>
  z
    .string({ error: what })
    .regex(/^\d{1,15}$/, what)
    .transform(Number);
const inclusionQuery = z.object({ seq: natural('an integer >= 0'), treeSize: natural('an integer >= 0') });
const consistencyQuery = z.object({ from: natural('a tree size'), to: natural('a tree size') });
const instant = z
  .string({ error: 'a date or an instant' })
  .max(64)
  .refine((v) => !Number.isNaN(Date.parse(v)), 'a date or an instant');
const reportQuery = z.object({
  from: instant.describe('a date or an instant, e.g. 2026-11-01'),
  to: instant.describe('a date or an instant, after from'),
  format: z.enum(['html', 'json'], { error: 'html (printable) or json' }).default('html'),
});
const witnessParams = z.object({ site: z.string().min(1).max(64) });
const witnessQuery = z.object({
  nonce: z.string({ error: '8-128 letters, digits, _ or -' }).regex(/^[0-9A-Za-z_-]{8,128}$/, '8-128 letters, digits, _ or -'),
});
const cosignatureBody = z.object({
  treeSize: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  signature: z.string().min(1).max(1000).describe("base64 SM2 signature over the checkpoint's statement"),
  publicKey: z.string().max(4096).optional().describe('PEM; if sent, it must be the key registered here for the calling site'),
});

const sealed = (req: FastifyRequest, reply: FastifyReply) =>
  sendProblem(req, reply, problem(503, 'the site is sealed', { code: 'sealed' }));

/** Mounted at /fhir/R4: AuditEvent read and search for auditors. */
export const auditEventRoutes: FastifyPluginAsyncZod<AuditRoutesOptions> = async (app, opts) => {
  const baseUrl = (req: FastifyRequest) => `${req.protocol}://${req.host}/fhir/R4`;
  app.get(
    '/AuditEvent',
    {
      config: { access: AUDITORS },
      schema: { summary: 'Searches the audit log as FHIR AuditEvents', tags: ['audit'], querystring: auditSearch },
    },
    async (req, reply) => {
      const q = parseAuditQuery(pairs(req));
      if (!q.ok) return sendProblem(req, reply, problem(400, q.message));
      return reply.type(FHIR_JSON).send(await searchAuditEvents(opts.db, q.value, { baseUrl: baseUrl(req), query: pairs(req) }));
    },
  );
  app.get(
    '/AuditEvent/:id',
    {
      config: { access: AUDITORS },
      schema: { summary: 'One audit log entry as a FHIR AuditEvent', tags: ['audit'], params: auditEventId },
    },
    async (req, reply) => {
      // The id is the entry's position in the log: any other id names no entry.
      const seq = /^\d{1,15}$/.test(req.params.id) ? Number(req.params.id) : undefined;
      const e = seq === undefined ? undefined : await readAuditEvent(opts.db, seq);
      return e ? reply.type(FHIR_JSON).send(e) : sendProblem(req, reply, problem(404, `AuditEvent/${req.params.id} not found`));
    },
  );
  await Promise.resolve();
};

/** Mounted at /audit. */
export const auditRoutes: FastifyPluginAsyncZod<AuditRoutesOptions> = async (app, opts) => {
  /** The log, or undefined with 503 answered while sealed. */
  const log = (req: FastifyRequest, reply: FastifyReply) => {
    const l = opts.audit();
    if (!l) void sealed(req, reply);
    return l;
  };
  /** Undefined while sealed. */
  const verifyHere = async () => {
    const signing = opts.kms.signingKey();
    if (!signing) return undefined;
    if (opts.verify) return opts.verify();
    const report = await verifyAuditLog(opts.db, {
      macKey: opts.kms.deriveSecret('audit-entry-mac'),
      signers: [signing.key.publicKey],
    });
    return { report, peers: [], confirmed: false };
  };

  // What this site's witness found when it last checked each peer's log.
  app.get(
    '/witness',
    {
      config: { access: AUDITORS },
      schema: { summary: "What this site's witness last found in each peer's log", tags: ['audit'] },
    },
    () => ({ site: opts.siteId, peers: opts.witness?.() ?? [] }),
  );

  // The latest checkpoint of `site`'s log this site checked and cosigned, signed together with
  // the asker's nonce: how a site's verify learns whether its log was cut.
  app.get(
    '/witness/:site',
    {
      config: { access: VERIFIERS },
      schema: {
        summary: "The latest checkpoint of a site's log held here, attested with the asker's nonce",
        tags: ['audit'],
        params: witnessParams,
        querystring: witnessQuery,
      },
    },
    async (req, reply) => {
      const { nonce } = req.query;
      const signing = opts.kms.signingKey();
      if (!signing) return sealed(req, reply);
      const held = await latestHeld(opts.db, req.params.site);
      if (!held)
        return sendProblem(req, reply, problem(404, `site ${opts.siteId} holds no checkpoint of site ${req.params.site}`));
      const checkedAt = new Date().toISOString();
      const statement = witnessStatement({
        witness: opts.siteId,
        site: held.site,
        treeSize: held.treeSize,
        root: held.root,
        nonce,
        checkedAt,
      });
      return {
        witness: opts.siteId,
        site: held.site,
        nonce,
        checkedAt,
        checkpoint: {
          treeSize: held.treeSize,
          root: held.root.toString('hex'),
          issuedAt: held.issuedAt,
          statement: held.statement,
          signature: held.signature.toString('base64'),
          signerSite: held.site,
        },
        attestation: sm2Sign(signing.key, statement).toString('base64'),
      };
    },
  );

  app.get(
    '/report',
    {
      // It verifies the whole log: longer than the site's request timeout on a large one.
      config: { access: AUDITORS, timeoutMs: 30 * 60_000 },
      schema: {
        summary: 'The compliance report of a period (printable HTML or JSON), with the log verified',
        tags: ['audit'],
        querystring: reportQuery,
      },
    },
    async (req, reply) => {
      const { from, to, format } = req.query;
      if (Date.parse(from) >= Date.parse(to))
        return sendProblem(
          req,
          reply,
          problem(400, 'from and to: dates or instants, from before to (e.g. ?from=2026-11-01&to=2026-12-01)'),
        );
      const verified = await verifyHere();
      if (!verified) return sealed(req, reply);
      const report = await complianceReport(opts.db, {
        site: opts.siteId,
        from: new Date(from),
        to: new Date(to),
        verification: verified.report,
        confirmed: verified.confirmed,
      });
      return format === 'json' ? report : reply.type('text/html; charset=utf-8').send(renderComplianceHtml(report));
    },
  );

  // The whole log checked now, with what the peers hold of it (auditors; `medmesh audit verify` does the same offline);
  // longer than the site's request timeout on a large log.
  app.get(
    '/verify',
    {
      config: { access: AUDITORS, timeoutMs: 30 * 60_000 },
      schema: { summary: 'The whole log verified now, with what the peers hold of it', tags: ['audit'] },
    },
    async (req, reply) => (await verifyHere()) ?? sealed(req, reply),
  );

  app.get(
    '/checkpoint',
    { config: { access: VERIFIERS }, schema: { summary: 'The latest signed checkpoint of this log', tags: ['audit'] } },
    async (req, reply) => {
      const l = log(req, reply);
      if (!l) return reply;
      const c = await l.latestCheckpoint();
      return c ? checkpointJson(c) : sendProblem(req, reply, problem(404, 'no checkpoint signed yet'));
    },
  );

  app.get(
    '/proof/inclusion',
    {
      config: { access: VERIFIERS },
      schema: { summary: 'Proof that an entry is in the tree of a size', tags: ['audit'], querystring: inclusionQuery },
    },
    async (req, reply) => {
      const l = log(req, reply);
      if (!l) return reply;
      const { seq, treeSize: size } = req.query;
      if (seq >= size) return sendProblem(req, reply, problem(400, 'seq and treeSize: integers, seq < treeSize'));
      try {
        const p = await l.inclusionProof(seq, size);
        return { seq, treeSize: size, leafHash: p.leafHash.toString('hex'), proof: p.proof.map((b) => b.toString('hex')) };
      } catch (e) {
        if (e instanceof RangeError) return sendProblem(req, reply, problem(404, e.message));
        throw e;
      }
    },
  );

  app.get(
    '/proof/consistency',
    {
      config: { access: VERIFIERS },
      schema: { summary: 'Proof that a tree extends an earlier one', tags: ['audit'], querystring: consistencyQuery },
    },
    async (req, reply) => {
      const l = log(req, reply);
      if (!l) return reply;
      const { from, to } = req.query;
      if (from < 1 || from > to) return sendProblem(req, reply, problem(400, 'from and to: tree sizes, 1 <= from <= to'));
      try {
        return { from, to, proof: (await l.consistencyProof(from, to)).map((b) => b.toString('hex')) };
      } catch (e) {
        if (e instanceof RangeError) return sendProblem(req, reply, problem(404, e.message));
        throw e;
      }
    },
  );

  // A cosignature is kept under the calling site's name only when that site's registered key
  // made it: a key sent in the body would let any site cosign in another's name, or with a key
  // nobody can tie to it.
  app.post(
    '/cosignatures',
    {
      config: { access: { services: ['site'] } },
      schema: { summary: "Another site's cosignature of a checkpoint", tags: ['audit'], body: cosignatureBody },
    },
    async (req, reply) => {
      const l = log(req, reply);
      if (!l) return reply;
      const { treeSize: size, signature, publicKey } = req.body;
      if (req.identity.kind !== 'service') return sendProblem(req, reply, problem(403, 'only sites cosign'));
      const site = req.identity.serviceId;
      const key = await opts.serviceKey?.(site);
      if (!key) return sendProblem(req, reply, problem(403, `no key is registered here for site ${site}`));
      if (publicKey !== undefined && !samePem(publicKey, key))
        return sendProblem(req, reply, problem(400, `publicKey: not the key registered here for site ${site}`));
      const ok = await l.addCosignature(size, site, Buffer.from(signature, 'base64'), key);
      return ok
        ? reply.code(201).send({ treeSize: size, site })
        : sendProblem(
            req,
            reply,
            problem(400, `the signature is not ${site}'s over checkpoint ${size}, or there is no such checkpoint`),
          );
    },
  );

  await Promise.resolve();
};

function samePem(pem: string, key: Sm2PublicKey): boolean {
  try {
    return Sm2PublicKey.fromPem(pem).hex === key.hex;
  } catch {
    return false;
  }
}
