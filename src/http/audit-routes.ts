// The audit log over HTTP: the FHIR AuditEvent view (under /fhir/R4), the compliance report,
// signed checkpoints, inclusion and consistency proofs, and cosignatures from other sites.
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
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

function nat(v: string | undefined): number | undefined {
  return v !== undefined && /^\d{1,15}$/.test(v) ? Number(v) : undefined;
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
  app.get('/witness', { config: { access: AUDITORS } }, () => ({ site: opts.siteId, peers: opts.witness?.() ?? [] }));

  // The latest checkpoint of `site`'s log this site checked and cosigned, signed together with
  // the asker's nonce: how a site's verify learns whether its log was cut.
  app.get<{ Params: { site: string }; Querystring: { nonce?: string } }>(
    '/witness/:site',
    { config: { access: VERIFIERS } },
    async (req, reply) => {
      const nonce = req.query.nonce;
      if (!nonce || !/^[0-9A-Za-z_-]{8,128}$/.test(nonce))
        return reply.code(400).send({ error: 'bad-request', message: 'nonce: 8-128 letters, digits, _ or -' });
      const signing = opts.kms.signingKey();
      if (!signing) return reply.code(503).send({ error: 'sealed', message: 'the site is sealed' });
      const held = await latestHeld(opts.db, req.params.site);
      if (!held)
        return reply
          .code(404)
          .send({ error: 'not-found', message: `site ${opts.siteId} holds no checkpoint of site ${req.params.site}` });
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

  app.get<{ Querystring: { from?: string; to?: string; format?: string } }>(
    '/report',
    // It verifies the whole log: longer than the site's request timeout on a large one.
    { config: { access: AUDITORS, timeoutMs: 30 * 60_000 } },
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
      const verified = await verifyHere();
      if (!verified) return reply.code(503).send({ error: 'sealed', message: 'the site is sealed' });
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
  app.get('/verify', { config: { access: AUDITORS, timeoutMs: 30 * 60_000 } }, async (_req, reply) => {
    const verified = await verifyHere();
    return verified ?? reply.code(503).send({ error: 'sealed', message: 'the site is sealed' });
  });

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

  // A cosignature is kept under the calling site's name only when that site's registered key
  // made it: a key sent in the body would let any site cosign in another's name, or with a key
  // nobody can tie to it.
  app.post<{ Body: { treeSize?: unknown; signature?: unknown; publicKey?: unknown } | undefined }>(
    '/cosignatures',
    { config: { access: { services: ['site'] } } },
    async (req, reply) => {
      const l = log(reply);
      if (!l) return reply;
      const { treeSize, signature, publicKey } = req.body ?? {};
      if (
        !Number.isSafeInteger(treeSize) ||
        typeof signature !== 'string' ||
        (publicKey !== undefined && typeof publicKey !== 'string')
      )
        return reply.code(400).send({ error: 'bad-request', message: 'body: {treeSize, signature (base64)}' });
      if (req.identity.kind !== 'service') return reply.code(403).send({ error: 'forbidden', message: 'only sites cosign' });
      const site = req.identity.serviceId;
      const key = await opts.serviceKey?.(site);
      if (!key) return reply.code(403).send({ error: 'forbidden', message: `no key is registered here for site ${site}` });
      if (typeof publicKey === 'string' && !samePem(publicKey, key))
        return reply.code(400).send({ error: 'bad-request', message: `publicKey: not the key registered here for site ${site}` });
      const size = treeSize as number;
      const ok = await l.addCosignature(size, site, Buffer.from(signature, 'base64'), key);
      return ok
        ? reply.code(201).send({ treeSize: size, site })
        : reply.code(400).send({
            error: 'bad-request',
            message: `the signature is not ${site}'s over checkpoint ${size}, or there is no such checkpoint`,
          });
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
