// Active collection, for operators and auditors: which source PACS this site collects from,
// the days queried, and the completeness report of a day (studies and instances at the
// source versus held here, with every difference listed).
import type { FastifyPluginCallback } from 'fastify';
import type { Db } from '../db/index.ts';
import { completenessReport, type ImagingStore } from '../imaging/index.ts';
import { jsonErrors } from './dicomweb-routes.ts';

export interface CollectionRoutesOptions {
  db: Db;
  /** The configured source ids (reports of sources no longer configured stay readable). */
  sources: readonly string[];
  /** The site's images: a report counts an instance whose file is lost as not held. */
  imaging?: Pick<ImagingStore, 'missingFiles'>;
}

const READERS = { roles: ['administrator', 'operator', 'auditor'] } as const;
const DAY = /^\d{8}$/;
const SOURCE = /^[A-Za-z0-9._-]{1,64}$/;

export const collectionRoutes: FastifyPluginCallback<CollectionRoutesOptions> = (app, { db, sources, imaging }, done) => {
  jsonErrors(app);
  app.get('/', { config: { access: READERS } }, async () => {
    const { rows } = await db.query<{ source: string; study_date: string; queried_at: Date | string; studies: number }>(
      'SELECT source, study_date, queried_at, studies FROM imaging_collection_day ORDER BY source, study_date DESC',
    );
    const known = [...new Set([...sources, ...rows.map((r) => r.source)])].sort();
    return {
      sources: known.map((id) => ({
        id,
        configured: sources.includes(id),
        days: rows
          .filter((r) => r.source === id)
          .slice(0, 31)
          .map((r) => ({ day: r.study_date, queriedAt: new Date(r.queried_at).toISOString(), studies: r.studies })),
      })),
    };
  });

  app.get<{ Params: { source: string; day: string } }>('/:source/:day', { config: { access: READERS } }, async (req, reply) => {
    const { source, day } = req.params;
    if (!SOURCE.test(source))
      return reply
        .code(400)
        .send({ error: 'bad-request', message: `source ${JSON.stringify(source)} is not a source id (letters, digits, . _ -)` });
    if (!DAY.test(day))
      return reply.code(400).send({ error: 'bad-request', message: `day ${JSON.stringify(day)} must be YYYYMMDD` });
    const report = await completenessReport(db, source, day, imaging);
    if (!sources.includes(source) && report.queriedAt === null)
      return reply.code(404).send({
        error: 'not-found',
        message: `no collection source ${source} here (configured: ${sources.join(', ') || 'none'})`,
      });
    return report;
  });
  done();
};
