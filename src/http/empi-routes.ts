// The EMPI directory for routing: which shard (and which active site) holds a patient, by
// regional identifier. The identifier is sent in the body (never in a URL that logs keep)
// and looked up by its blind index, so any site answers, even one that does not hold the
// patient. Audited like every non-public route.
import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import type { Db } from '../db/index.ts';
import { findByBlindIndex } from '../records/index.ts';
import type { Region } from '../region/index.ts';

export interface EmpiRoutesOptions {
  db: Db;
  region: Region;
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
      req.auditExtra = { action: 'empi-lookup', resource: 'EmpiEntry' };
      return { patients: found.map((p) => ({ ...p, activeSite: opts.region.activeSiteFor(p.homeShard) ?? null })) };
    },
  );
  await Promise.resolve();
};
