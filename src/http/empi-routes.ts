// The EMPI directory for routing: which shard (and which active site) holds a patient, by
// regional identifier. The identifier is sent in the body (never in a URL that logs keep)
// and looked up by its blind index, so any site answers, even one that does not hold the
// patient. Audited like every non-public route. A user is answered only when their FHIR
// search by identifier would be, and only with the patients it would return (their scope:
// RecordAccess.mayFindPatientsByIdentifier decides both).
// Requests are validated by the route schemas; refusals are Problems (outcome.ts).
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { Db } from '../db/index.ts';
import { findByBlindIndex, patientInScope, type RowScope } from '../records/index.ts';
import type { Region } from '../region/index.ts';
import { PURPOSES, type AccessControl } from '../security/access/index.ts';
import { problem, sendProblem } from './outcome.ts';

export interface EmpiRoutesOptions {
  db: Db;
  region: Region;
  access: AccessControl;
  blindIndex: (identifiers: ReadonlyArray<{ system: string; value: string }>) => string[];
}

const lookupBody = z.strictObject({
  system: z.string().min(1).max(200).describe('a regional identifier system (resident ID, insurance card)'),
  value: z.string().min(1).max(100),
});
/** Read by the access decision before validation; declared for the API document. */
const purposeHeader = z.object({
  'x-medmesh-purpose': z.enum(PURPOSES).optional().describe('why the caller asks (default: the one of their role)'),
});

export const empiRoutes: FastifyPluginAsyncZod<EmpiRoutesOptions> = async (app, opts) => {
  const systems = Object.values(opts.region.config.identifierSystems);
  /** A user's scope, decided before validation, for the handler (services see every entry: they route). */
  const scopes = new WeakMap<object, RowScope>();
  app.post(
    '/lookup',
    {
      config: {
        access: { roles: ['registrar', 'integration', 'administrator', 'doctor', 'nurse'], services: ['site', 'router', 'edge'] },
      },
      schema: {
        summary: 'Which shard (and which active site) holds a patient, by regional identifier',
        tags: ['records'],
        body: lookupBody,
        headers: purposeHeader,
      },
      // A user is answered only when their FHIR search by identifier would be, decided before
      // the body is checked: a user who may not search is refused as such, whatever they sent.
      preValidation: async (req, reply) => {
        req.auditExtra = { action: 'empi-lookup', resource: 'EmpiEntry' };
        if (req.identity.kind !== 'user') return;
        const purpose = req.headers['x-medmesh-purpose'];
        const requester = await opts.access.requester(req.identity, typeof purpose === 'string' ? purpose : undefined);
        const may = requester.ok
          ? opts.access.records(requester.value).mayFindPatientsByIdentifier()
          : { ok: false as const, error: { issues: [{ message: requester.error.message }] } };
        if (may.ok) {
          // The patients such a search would return: the lookup answers only those (a doctor's care scope).
          scopes.set(req, may.value);
          return;
        }
        const message = may.error.issues[0]?.message ?? 'refused';
        req.auditExtra = { ...req.auditExtra, detail: `POST /empi/lookup: ${message}`.slice(0, 2000) };
        return sendProblem(req, reply, problem(!requester.ok && requester.error.kind === 'bad-request' ? 400 : 403, message));
      },
    },
    async (req, reply) => {
      if (!systems.includes(req.body.system))
        return sendProblem(req, reply, problem(400, `system: the directory indexes ${systems.join(' and ')} only`));
      const [blind] = opts.blindIndex([req.body]);
      if (!blind)
        return sendProblem(
          req,
          reply,
          problem(
            503,
            'this site has no EMPI blind-index key: ' +
              "install the region's key with medmesh keys create --name empi-blind-index --material <file>",
            { code: 'empi-key-missing' },
          ),
        );
      const found = await findByBlindIndex(opts.db, blind);
      const scope = scopes.get(req);
      const visible = [];
      for (const p of found) if (!scope || (await patientInScope(opts.db, scope, p.patientId))) visible.push(p);
      return { patients: visible.map((p) => ({ ...p, activeSite: opts.region.activeSiteFor(p.homeShard) ?? null })) };
    },
  );
  await Promise.resolve();
};
