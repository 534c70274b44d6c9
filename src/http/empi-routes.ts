// The EMPI directory for routing: which shard (and which active site) holds a patient, by
// regional identifier. The identifier is sent in the body (never in a URL that logs keep)
// and looked up by its blind index, so any site answers, even one that does not hold the
// patient. Audited like every non-public route. A user is answered only when their FHIR
// search by identifier would be (RecordAccess.mayFindPatientsByIdentifier decides both).
import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import type { Db } from '../db/index.ts';
import { findByBlindIndex } from '../records/index.ts';
import type { Region } from '../region/index.ts';
import type { AccessControl } from '../security/access/index.ts';

export interface EmpiRoutesOptions {
  db: Db;
  region: Region;
  access: AccessControl;
  blindIndex: (identifiers: ReadonlyArray<{ system: string; value: string }>) => string[];
}

const lookupSchema = z.strictObject({ system: z.string().min(1).max(200), value: z.string().min(1).max(100) });

export const empiRoutes: FastifyPluginAsync<EmpiRoutesOptions> = async (app, opts) => {
  const systems = Object.values(opts.region.config.identifierSystems);
  app.post(
    '/lookup',
    {
      config: {
        access: { roles: ['registrar', 'integration', 'administrator', 'doctor', 'nurse'], services: ['site', 'router', 'edge'] },
      },
    },
    async (req, reply) => {
      req.auditExtra = { action: 'empi-lookup', resource: 'EmpiEntry' };
      if (req.identity.kind === 'user') {
        const purpose = req.headers['x-medmesh-purpose'];
        const requester = await opts.access.requester(req.identity, typeof purpose === 'string' ? purpose : undefined);
        const may = requester.ok
          ? opts.access.records(requester.value).mayFindPatientsByIdentifier()
          : { ok: false as const, error: { issues: [{ message: requester.error.message }] } };
        if (!may.ok) {
          const message = may.error.issues[0]?.message ?? 'refused';
          req.auditExtra = { ...req.auditExtra, detail: `POST /empi/lookup: ${message}`.slice(0, 2000) };
          const status = !requester.ok && requester.error.kind === 'bad-request' ? 400 : 403;
          return reply.code(status).send({ error: status === 400 ? 'bad-request' : 'forbidden', message });
        }
      }
      const body = lookupSchema.safeParse(req.body);
      if (!body.success)
        return reply.code(400).send({
          error: 'bad-request',
          message: body.error.issues.map((i) => `${i.path.join('.') || '(body)'}: ${i.message}`).join('; '),
        });
      if (!systems.includes(body.data.system))
        return reply
          .code(400)
          .send({ error: 'bad-request', message: `system: the directory indexes ${systems.join(' and ')} only` });
      const [blind] = opts.blindIndex([body.data]);
      if (!blind)
        return reply.code(503).send({
          error: 'empi-key-missing',
          message:
            "this site has no EMPI blind-index key: install the region's key with medmesh keys create --name empi-blind-index --material <file>",
        });
      const found = await findByBlindIndex(opts.db, blind);
      return { patients: found.map((p) => ({ ...p, activeSite: opts.region.activeSiteFor(p.homeShard) ?? null })) };
    },
  );
  await Promise.resolve();
};
