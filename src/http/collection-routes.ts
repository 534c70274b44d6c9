// Active collection, for operators and auditors: which source PACS this site collects from,
// the days queried, and the completeness report of a day (studies and instances at the
// source versus held here, with every difference listed).
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { Db } from '../db/index.ts';
import { completenessReport, type ImagingStore } from '../imaging/index.ts';
import { problem, sendProblem } from './outcome.ts';

export interface CollectionRoutesOptions {
  db: Db;
  /** The configured source ids (reports of sources no longer configured stay readable). */
  sources: readonly string[];
  /** The site's images: a report counts an instance whose file is lost as not held. */
  imaging?: Pick<ImagingStore, 'missingFiles'>;
}

const READERS = { roles: ['administrator', 'operator', 'auditor'] } as const;
const TAGS = ['imaging'];
const dayParams = z.object({
  source: z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'must be a source id (1-64 letters, digits, . _ -)'),
  day: z.string().regex(/^\d{8}$/, 'must be YYYYMMDD'),
});

export const collectionRoutes: FastifyPluginAsyncZod<CollectionRoutesOptions> = async (app, { db, sources, imaging }) => {
  app.get(
    '/',
    {
      config: { access: READERS },
      schema: { summary: 'The source PACS this site collects from, and the days queried', tags: TAGS },
    },
    async () => {
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
    },
  );

  app.get(
    '/:source/:day',
    {
      config: { access: READERS },
      schema: { summary: 'The completeness report of a day: the source versus what is held here', tags: TAGS, params: dayParams },
    },
    async (req, reply) => {
      const { source, day } = req.params;
      const report = await completenessReport(db, source, day, imaging);
      if (!sources.includes(source) && report.queriedAt === null)
        return sendProblem(
          req,
          reply,
          problem(404, `no collection source ${source} here (configured: ${sources.join(', ') || 'none'})`),
        );
      return report;
    },
  );
  await Promise.resolve();
};
