// DICOMweb (PS3.18) at /dicomweb: STOW-RS in, QIDO-RS queries, WADO-RS retrieval of studies,
// series, instances, metadata and (uncompressed) frames. Access is the FHIR record's: a user
// may do with images what their policy allows on ImagingStudy, over the studies of the patients
// in their scope (a study is its linked Patient's); sites, routers and edges by service kind.
// The audit hook records each request with the study or instance it touched.
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { FastifyPluginCallbackZod } from 'fastify-type-provider-zod';
import { Readable } from 'node:stream';
import { z } from 'zod';
import { patientInScope, type AccessFilter } from '../records/index.ts';
import type { AccessControl } from '../security/access/index.ts';
import {
  attributeKeyword,
  DEFAULT_RETURN,
  extractFrames,
  findImaging,
  mediaParams,
  MultipartError,
  multipartRelated,
  readMultipartRelated,
  storeFailureStatus,
  toDicomJson,
  type ImagingError,
  type ImagingStore,
  type IngestOptions,
  type Part,
  type QueryLevel,
  type StoredInstance,
} from '../imaging/index.ts';
import { MAX_PATH_SEGMENT } from './door.ts';
import { imagingProblem, problem, sendProblem, type Problem } from './outcome.ts';
import { resolveRequester } from './requester.ts';

export interface DicomwebRoutesOptions {
  imaging: ImagingStore;
  /** Decides for users; without it only service accounts are served (fails closed). */
  access?: AccessControl;
}

/** Any signed-in caller reaches the routes; what each may do is decided by the route's `gate`. */
const SIGNED_IN = { access: 'records' } as const;
/** STOW-RS reads its upload as it arrives: a large study over a slow link takes longer than the site's request timeout. */
const UPLOAD = { ...SIGNED_IN, timeoutMs: 30 * 60_000 } as const;
type ImagingAction = 'read' | 'search' | 'create';
/** Service accounts by kind: sites and routers read and store, edges forward what clinics send. */
const SERVICES: Record<ImagingAction, readonly string[]> = {
  read: ['site', 'router'],
  search: ['site', 'router'],
  create: ['site', 'edge', 'router'],
};
const VERB: Record<ImagingAction, string> = { read: 'dicom-retrieve', search: 'dicom-query', create: 'dicom-store' };
const DICOM_JSON = 'application/dicom+json';
const TAGS = ['dicomweb'];

/** STOW-RS failure reasons (PS3.18 Table 10.5.3-2 / PS3.4 Annex B). */
const FAILURE = { cannotUnderstand: 0xc000 } as const;

type Params = { study?: string; series?: string; instance?: string };
type QidoQuery = z.infer<typeof qidoQuery>;

// ---- request schemas -------------------------------------------------------------------------
const uid = z
  .string()
  .max(64, 'must be a DICOM UID (at most 64 digits and dots)')
  .regex(/^[0-9]+(\.[0-9]+)*$/, 'must be a DICOM UID (digits and dots)');
const studyPath = z.object({ study: uid });
const seriesPath = studyPath.extend({ series: uid });
const instancePath = seriesPath.extend({ instance: uid });
const framesPath = instancePath.extend({
  frames: z
    .string()
    .max(MAX_PATH_SEGMENT)
    .regex(/^0*[1-9][0-9]{0,8}(,0*[1-9][0-9]{0,8})*$/, 'must be frame numbers (from 1) separated by commas'),
});
/** A matching key's value (or the values of a repeated key: the first is used). */
const matchValue = z.union([z.string().max(8192), z.array(z.string().max(8192)).max(100)], {
  error: 'at most 100 values of one key, each at most 8192 characters',
});
const qidoQuery = z
  .object({
    limit: z.coerce
      .number({ error: 'must be an integer from 1 to 1000' })
      .int('must be an integer from 1 to 1000')
      .min(1, 'must be an integer from 1 to 1000')
      .max(1000, 'must be an integer from 1 to 1000')
      .optional(),
    offset: z.coerce
      .number({ error: 'must be an integer >= 0' })
      .int('must be an integer >= 0')
      .min(0, 'must be an integer >= 0')
      .max(100_000_000, 'must be at most 100000000')
      .optional(),
    fuzzymatching: z.literal('false', { error: 'fuzzy matching is not supported (fuzzymatching=false only)' }).optional(),
    includefield: matchValue.optional().describe('Attributes to return beyond the defaults (comma-separated, or all)'),
  })
  .catchall(matchValue)
  .describe('Matching keys by keyword or tag (PatientID=..., 00100020=...)');
const acceptHeader = z.object({
  accept: z.string().max(4096).optional().describe('multipart/related; type="application/dicom"[; transfer-syntax=...]'),
});
/** STOW-RS reads its body itself, part by part as it arrives: the schema only describes it. */
const stowBody = z.unknown().meta({
  type: 'string',
  format: 'binary',
  description: 'multipart/related; type="application/dicom": one DICOM file (Part 10) per part',
});

export const dicomwebRoutes: FastifyPluginCallbackZod<DicomwebRoutesOptions> = (app, opts, done) => {
  const store = opts.imaging;
  // Bodies are not parsed up front: STOW-RS reads its multipart body part by part as it
  // arrives (large files stream into the store), and answers 415 for a media type it does not
  // take (not the JSON parser's 400). These parsers live in this plugin only.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, payload, done) => done(null, payload));

  // Refusals are Problems answered by sendProblem, and whatever a route throws reaches the app's
  // error handler (door.ts): the JSON error shape, its code by status, for DICOMweb clients too.
  const bad = (req: FastifyRequest, reply: FastifyReply, p: Problem) => sendProblem(req, reply, p);
  /** A stored file that cannot be served: lost or damaged at this site (500), or the KMS sealed (503). */
  const unreadable = (req: FastifyRequest, reply: FastifyReply, error: ImagingError) =>
    bad(
      req,
      reply,
      error.kind === 'sealed' || error.kind === 'not-found'
        ? imagingProblem(error)
        : problem(500, error.message, { code: 'stored-file-unreadable' }),
    );

  /**
   * May the caller do `action` on images at all, and over which patients' studies? Answers the
   * refusal itself (audited with the reason) and returns undefined then.
   */
  const gate = async (
    req: FastifyRequest,
    reply: FastifyReply,
    action: ImagingAction,
    target: string,
  ): Promise<AccessFilter | undefined> => {
    const refuse = async (message: string) => {
      req.auditExtra = { action: VERB[action], resource: target, detail: message };
      await bad(req, reply, problem(403, message));
      return undefined;
    };
    const who = req.identity;
    if (who.kind === 'service') {
      if (SERVICES[action].includes(who.serviceKind)) return { rows: { kind: 'all' }, denied: '' };
      return refuse(`images are not for ${who.serviceKind} service accounts (${action}: ${SERVICES[action].join(', ')} only)`);
    }
    const access = opts.access;
    if (!access) return refuse('this DICOMweb endpoint serves service accounts only');
    const requester = await resolveRequester(access, req, reply);
    if (!requester) return undefined;
    const scope = access.records(requester).unmaskedScope(action, 'ImagingStudy', target);
    return scope.ok ? scope.value : refuse(scope.error.issues[0]?.message ?? 'refused');
  };
  /**
   * The gate as a route's preValidation hook: before its schemas, so a caller who may do nothing
   * with images learns only that (403), not what a well-formed request would have been. The
   * scope it grants is the handler's (`scopeOf`).
   */
  const scopes = new WeakMap<FastifyRequest, AccessFilter>();
  const admit = (action: ImagingAction) => async (req: FastifyRequest, reply: FastifyReply) => {
    // The path as sent (not validated yet): it only names the target in a refusal and its audit entry.
    const p = req.params as Params;
    const target = action === 'read' ? `dicom:${describe(p)}` : p.study ? `dicom:study/${p.study}` : 'dicom:studies';
    const filter = await gate(req, reply, action, target);
    if (!filter) return reply;
    scopes.set(req, filter);
    return undefined;
  };
  const scopeOf = (req: FastifyRequest): AccessFilter => {
    const filter = scopes.get(req);
    if (!filter) throw new Error('a DICOMweb route without its access gate');
    return filter;
  };
  /** Whether the study is in the caller's scope; answers 404 or 403 (audited) when not. */
  const admitStudy = async (req: FastifyRequest, reply: FastifyReply, filter: AccessFilter, study: string): Promise<boolean> => {
    const patient = await store.studyPatient(study);
    if (patient === undefined) {
      await bad(req, reply, problem(404, `study ${study} is not held here`));
      return false;
    }
    if (await patientInScope(store.db, filter.rows, patient)) return true;
    const message =
      patient === null
        ? `study ${study} is not linked to a patient record yet; ` +
          "until it is, only those who may see every patient's images see it"
        : filter.denied.replace(/^\S+/, `study ${study}`);
    req.auditExtra = { action: VERB.read, resource: `dicom:study/${study}`, detail: message };
    await bad(req, reply, problem(403, message));
    return false;
  };

  /** For STOW-RS by a caller with a limited scope: may they store images of this patient? */
  const storeScope =
    (filter: AccessFilter): NonNullable<IngestOptions['mayStore']> =>
    async ({ dicomPatientId, recordId }) => {
      if (recordId === undefined) {
        return (
          `patient ${dicomPatientId} has no record at this site yet: register the patient first ` +
          '(images sent by the modality or PACS, a service account, are taken as they come)'
        );
      }
      return (await patientInScope(store.db, filter.rows, recordId))
        ? undefined
        : filter.denied.replace(/^\S+/, `a study of patient ${dicomPatientId} (Patient/${recordId})`);
    };

  // ---- STOW-RS ------------------------------------------------------------------------
  const stow = async (req: FastifyRequest, reply: FastifyReply, study: string | undefined) => {
    // Storing needs the right to create ImagingStudy, and, for a caller whose access covers
    // only some patients (a doctor's care relationship), each instance's patient in that scope,
    // as a FHIR create would: nobody files images into the record of a patient they may not touch.
    const filter = scopeOf(req);
    const mayStore = filter.rows.kind === 'all' ? undefined : storeScope(filter);
    const contentType = mediaParams(req.headers['content-type'] ?? '');
    if (contentType.media !== 'multipart/related')
      return bad(req, reply, problem(415, `STOW-RS takes multipart/related, not ${contentType.media || '(no Content-Type)'}`));
    if (contentType.type && contentType.type !== 'application/dicom')
      return bad(req, reply, problem(415, `STOW-RS here takes type="application/dicom" parts, not ${contentType.type}`));
    const boundary = contentType.boundary;
    if (!boundary) return bad(req, reply, problem(400, 'the Content-Type has no boundary parameter'));
    if (boundary.length > 70) return bad(req, reply, problem(400, 'the boundary is longer than 70 characters (RFC 2046)'));
    const referenced: object[] = [];
    const failed: object[] = [];
    const warnings: string[] = [];
    /** Parts refused for the caller's access (audited as a denial when nothing was stored). */
    const refusals: string[] = [];
    const base = `${req.protocol}://${req.headers.host ?? 'localhost'}/dicomweb`;
    let malformed: string | undefined;
    // One iterator over the request, kept here so what is left of it can be read off below.
    const upload = (req.body as AsyncIterable<Uint8Array>)[Symbol.asyncIterator]();
    try {
      for await (const part of readMultipartRelated({ [Symbol.asyncIterator]: () => upload }, boundary)) {
        const media = mediaParams(part.headers['content-type'] ?? contentType.type ?? '').media;
        if (media !== 'application/dicom') {
          failed.push(failure({}, FAILURE.cannotUnderstand));
          warnings.push(warning(`part ${part.index} is ${media || 'untyped'}, not application/dicom`));
          continue; // its bytes are skipped
        }
        const r = await store.receive(part.body, {
          source: actor(req),
          ...(study ? { expectStudy: study } : {}),
          ...(mayStore ? { mayStore } : {}),
        });
        if (!r.ok) {
          if (r.error.kind === 'forbidden') refusals.push(r.error.message);
          failed.push(failure(r.error.instance ?? {}, storeFailureStatus(r.error.kind)));
          warnings.push(warning(`part ${part.index}: ${r.error.message}`));
          continue;
        }
        const { studyInstanceUid, seriesInstanceUid, sopInstanceUid } = r.value;
        const url = `${base}/studies/${studyInstanceUid}/series/${seriesInstanceUid}/instances/${sopInstanceUid}`;
        referenced.push({
          '00081150': { vr: 'UI', Value: [r.value.sopClassUid] },
          '00081155': { vr: 'UI', Value: [sopInstanceUid] },
          '00081190': { vr: 'UR', Value: [url] },
        });
      }
    } catch (e) {
      // A malformed or cut-off body: the part in hand left nothing behind (the store removes
      // its blob); parts before it are stored whole and listed as such.
      if (!(e instanceof MultipartError)) throw e;
      malformed = e.message;
    } finally {
      // Whatever the sender has yet to send is read and dropped, so it is not left blocked
      // mid-upload and sees the answer.
      await drain(upload);
    }
    if (malformed !== undefined) {
      if (referenced.length === 0 && failed.length === 0) return bad(req, reply, problem(400, malformed));
      failed.push(failure({}, FAILURE.cannotUnderstand));
      warnings.push(warning(malformed));
    }
    req.auditExtra = {
      action: 'dicom-store',
      ...(study ? { resource: `dicom:study/${study}` } : {}),
      ...(refusals.length && !referenced.length ? { outcome: 'deny' as const } : {}),
      detail: (
        `stored ${referenced.length}, failed ${failed.length}` +
        (refusals.length ? `; ${refusals.length} refused to this caller: ${refusals[0]!}` : '')
      ).slice(0, 2000),
    };
    const body: Record<string, unknown> = {
      ...(study ? { '00081190': { vr: 'UR', Value: [`${base}/studies/${study}`] } } : {}),
      ...(referenced.length ? { '00081199': { vr: 'SQ', Value: referenced } } : {}),
      ...(failed.length ? { '00081198': { vr: 'SQ', Value: failed } } : {}),
    };
    // 200 all stored, 202 some, 409 none (PS3.18 10.5.3).
    const status = failed.length === 0 ? 200 : referenced.length ? 202 : 409;
    if (warnings.length) reply.header('warning', warnings);
    return reply.code(status).type(DICOM_JSON).send(body);
  };
  const stowSchema = {
    tags: TAGS,
    consumes: ['multipart/related'],
    body: stowBody,
    description:
      'Answers 200 (all stored), 202 (some) or 409 (none) with a DICOM JSON response, a Warning header per failed part.',
  };
  app.post(
    '/studies',
    { config: UPLOAD, preValidation: admit('create'), schema: { ...stowSchema, summary: 'STOW-RS: stores DICOM instances' } },
    (req, reply) => stow(req, reply, undefined),
  );
  app.post(
    '/studies/:study',
    {
      config: UPLOAD,
      preValidation: admit('create'),
      schema: { ...stowSchema, summary: 'STOW-RS: stores DICOM instances of one study', params: studyPath },
    },
    (req, reply) => stow(req, reply, req.params.study),
  );

  // ---- QIDO-RS ------------------------------------------------------------------------
  const qido = async (req: FastifyRequest, reply: FastifyReply, level: QueryLevel, p: Params, query: QidoQuery) => {
    const filter = scopeOf(req);
    const keys: Record<string, string> = {};
    const include: string[] = [];
    const { limit = 100, offset = 0, includefield, ...matching } = query;
    for (const f of [includefield ?? []].flat().flatMap((v) => v.split(','))) {
      if (f === 'all') include.push(...DEFAULT_RETURN[level]);
      else {
        const k = attributeKeyword(f);
        if (!k) return bad(req, reply, problem(400, `includefield ${f}: not an attribute medmesh returns`));
        include.push(k);
      }
    }
    for (const [name, raw] of Object.entries(matching)) {
      if (name === 'fuzzymatching') continue; // false only (the schema)
      const k = attributeKeyword(name);
      if (!k) return bad(req, reply, problem(400, `${name} is not a matching key medmesh supports`));
      keys[k] = [raw].flat()[0] ?? '';
    }
    if (p.study) keys.StudyInstanceUID = p.study;
    if (p.series) keys.SeriesInstanceUID = p.series;
    const found = await findImaging(store.db, level, keys, {
      limit,
      offset,
      include: [...DEFAULT_RETURN[level], ...include],
      rows: filter.rows,
    });
    if (!found.ok) return bad(req, reply, problem(400, found.error));
    req.auditExtra = {
      action: 'dicom-query',
      ...(p.study ? { resource: `dicom:study/${p.study}` } : {}),
      detail: `${level} ${JSON.stringify(keys)} -> ${found.value.length}`,
    };
    return reply.type(DICOM_JSON).send(found.value.map(toDicomJson));
  };
  const searching = (summary: string) => ({
    config: SIGNED_IN,
    preValidation: admit('search'),
    schema: { summary, tags: TAGS, querystring: qidoQuery },
  });
  app.get('/studies', searching('QIDO-RS: searches studies'), (req, reply) => qido(req, reply, 'STUDY', {}, req.query));
  app.get('/series', searching('QIDO-RS: searches series'), (req, reply) => qido(req, reply, 'SERIES', {}, req.query));
  app.get('/instances', searching('QIDO-RS: searches instances'), (req, reply) => qido(req, reply, 'IMAGE', {}, req.query));
  app.get(
    '/studies/:study/series',
    {
      config: SIGNED_IN,
      preValidation: admit('search'),
      schema: { summary: 'QIDO-RS: searches the series of a study', tags: TAGS, params: studyPath, querystring: qidoQuery },
    },
    (req, reply) => qido(req, reply, 'SERIES', req.params, req.query),
  );
  app.get(
    '/studies/:study/instances',
    {
      config: SIGNED_IN,
      preValidation: admit('search'),
      schema: { summary: 'QIDO-RS: searches the instances of a study', tags: TAGS, params: studyPath, querystring: qidoQuery },
    },
    (req, reply) => qido(req, reply, 'IMAGE', req.params, req.query),
  );
  app.get(
    '/studies/:study/series/:series/instances',
    {
      config: SIGNED_IN,
      preValidation: admit('search'),
      schema: { summary: 'QIDO-RS: searches the instances of a series', tags: TAGS, params: seriesPath, querystring: qidoQuery },
    },
    (req, reply) => qido(req, reply, 'IMAGE', req.params, req.query),
  );

  // ---- WADO-RS ------------------------------------------------------------------------
  const selected = async (p: Params): Promise<StoredInstance[]> => {
    const all = await store.instances({ studyInstanceUid: p.study!, ...(p.series ? { seriesInstanceUid: p.series } : {}) });
    return p.instance ? all.filter((i) => i.sopInstanceUid === p.instance) : all;
  };
  /** The study's scope, for every WADO-RS route (after the gate); false when answered. */
  const readable = (req: FastifyRequest, reply: FastifyReply, p: Params): Promise<boolean> =>
    admitStudy(req, reply, scopeOf(req), p.study!);
  const retrieve = async (req: FastifyRequest, reply: FastifyReply, p: Params, acceptHeader: string | undefined) => {
    if (!(await readable(req, reply, p))) return reply;
    const accept = acceptsDicom(acceptHeader);
    if (!accept.ok) return bad(req, reply, problem(406, accept.error));
    const instances = await selected(p);
    if (!instances.length) return bad(req, reply, problem(404, `nothing stored under ${describe(p)}`));
    const wrong =
      accept.transferSyntax && accept.transferSyntax !== '*'
        ? instances.find((i) => i.transferSyntaxUid !== accept.transferSyntax)
        : undefined;
    if (wrong)
      return bad(
        req,
        reply,
        problem(
          406,
          `instance ${wrong.sopInstanceUid} is stored as ${wrong.transferSyntaxUid}; ` +
            'medmesh returns instances as stored (transfer-syntax=* or that one)',
        ),
      );
    req.auditExtra = {
      action: 'dicom-retrieve',
      resource: `dicom:${describe(p)}`,
      detail: `${instances.length} instance(s)`,
    };
    // What can be checked before the first byte is: every file is there, and the first one opens
    // and matches its checksum. A failure then is an answer the client sees (not a 200 cut short).
    const missing = await store.missingFiles({ sopInstanceUids: instances.map((i) => i.sopInstanceUid) });
    if (missing.length)
      return bad(
        req,
        reply,
        problem(
          500,
          `${missing.length} of the ${instances.length} instance file(s) under ${describe(p)} ` +
            "are missing from this site's store " +
            `(instance ${missing[0]!.sopInstanceUid}${missing.length > 1 ? ', ...' : ''}); ` +
            'nothing is sent rather than part of it',
          { code: 'stored-file-missing' },
        ),
      );
    // The next instances are fetched (and decrypted, on the store's worker threads) while one is sent.
    const AHEAD = 2;
    const read = (k: number) => {
      const p = store.read(instances[k]!.sopInstanceUid);
      p.catch(() => undefined); // awaited below; a client gone meanwhile leaves it unobserved
      return p;
    };
    const queue = instances.slice(0, AHEAD).map((_, k) => read(k));
    const first = await queue[0]!;
    if (!first.ok) return unreadable(req, reply, first.error);
    // Past the first byte, a file that fails (damaged or removed meanwhile) ends the stream with
    // an error, and Fastify aborts the response: the client sees a broken transfer, never a
    // clean short body or bytes that fail their checksum.
    const parts = (async function* (): AsyncGenerator<Part> {
      for (const [k, i] of instances.entries()) {
        const r = await queue.shift()!; // the first was awaited above: its outcome again
        if (k + AHEAD < instances.length) queue.push(read(k + AHEAD));
        if (!r.ok) throw new Error(r.error.message);
        const series = `/dicomweb/studies/${i.studyInstanceUid}/series/${i.seriesInstanceUid}`;
        yield {
          headers: {
            'Content-Type': `application/dicom; transfer-syntax=${i.transferSyntaxUid}`,
            'Content-Location': `${series}/instances/${i.sopInstanceUid}`,
          },
          body: r.value.file,
        };
      }
    })();
    const body = multipartRelated('application/dicom', parts);
    return reply.type(body.contentType).send(Readable.from(body.body));
  };
  const metadata = async (req: FastifyRequest, reply: FastifyReply, p: Params) => {
    if (!(await readable(req, reply, p))) return reply;
    const instances = await selected(p);
    if (!instances.length) return bad(req, reply, problem(404, `nothing stored under ${describe(p)}`));
    req.auditExtra = {
      action: 'dicom-metadata',
      resource: `dicom:${describe(p)}`,
      detail: `${instances.length} instance(s)`,
    };
    return reply.type(DICOM_JSON).send(instances.map((i) => i.attributes));
  };
  const frames = async (req: FastifyRequest, reply: FastifyReply, p: Params & { frames: string }) => {
    if (!(await readable(req, reply, p))) return reply;
    const wanted = p.frames.split(',').map(Number);
    const [instance] = await selected(p);
    if (!instance) return bad(req, reply, problem(404, `nothing stored under ${describe(p)}`));
    const r = await store.read(instance.sopInstanceUid);
    if (!r.ok) return unreadable(req, reply, r.error);
    const count = instance.attributes['00280008']?.Value?.[0];
    const cut = extractFrames(r.value.file, count === undefined ? null : Number(count), wanted);
    if (!cut.ok) return bad(req, reply, problem(cut.status, cut.error));
    req.auditExtra = {
      action: 'dicom-retrieve',
      resource: `dicom:${describe(p)}`,
      detail: `frames ${wanted.join(',')}`,
    };
    const body = multipartRelated(
      'application/octet-stream',
      cut.value.map((f) => ({ headers: { 'Content-Type': 'application/octet-stream' }, body: f })),
    );
    return reply.type(body.contentType).send(Readable.from(body.body));
  };
  const retrieving = <P extends z.ZodType>(summary: string, params: P) => ({
    config: SIGNED_IN,
    preValidation: admit('read'),
    schema: { summary, tags: TAGS, params, headers: acceptHeader },
  });
  app.get('/studies/:study', retrieving('WADO-RS: retrieves a study', studyPath), (req, reply) =>
    retrieve(req, reply, req.params, req.headers.accept),
  );
  app.get('/studies/:study/series/:series', retrieving('WADO-RS: retrieves a series', seriesPath), (req, reply) =>
    retrieve(req, reply, req.params, req.headers.accept),
  );
  app.get(
    '/studies/:study/series/:series/instances/:instance',
    retrieving('WADO-RS: retrieves an instance', instancePath),
    (req, reply) => retrieve(req, reply, req.params, req.headers.accept),
  );
  const describing = <P extends z.ZodType>(summary: string, params: P) => ({
    config: SIGNED_IN,
    preValidation: admit('read'),
    schema: { summary, tags: TAGS, params },
  });
  app.get('/studies/:study/metadata', describing('WADO-RS: the metadata of a study (DICOM JSON)', studyPath), (req, reply) =>
    metadata(req, reply, req.params),
  );
  app.get(
    '/studies/:study/series/:series/metadata',
    describing('WADO-RS: the metadata of a series (DICOM JSON)', seriesPath),
    (req, reply) => metadata(req, reply, req.params),
  );
  app.get(
    '/studies/:study/series/:series/instances/:instance/metadata',
    describing('WADO-RS: the metadata of an instance (DICOM JSON)', instancePath),
    (req, reply) => metadata(req, reply, req.params),
  );
  app.get(
    '/studies/:study/series/:series/instances/:instance/frames/:frames',
    describing('WADO-RS: frames of an uncompressed instance', framesPath),
    (req, reply) => frames(req, reply, req.params),
  );
  done();
};

function failure(f: { sopClassUid?: string; sopInstanceUid?: string }, reason: number): object {
  return {
    ...(f.sopClassUid ? { '00081150': { vr: 'UI', Value: [f.sopClassUid] } } : {}),
    ...(f.sopInstanceUid ? { '00081155': { vr: 'UI', Value: [f.sopInstanceUid] } } : {}),
    '00081197': { vr: 'US', Value: [reason] },
  };
}

/** Why parts failed, for people: HTTP Warning headers (PS3.18 8.10.3), one per failed part. */
function warning(text: string): string {
  return `299 medmesh "${text.replace(/["\\\r\n]/g, ' ').slice(0, 300)}"`;
}

function describe(p: Params): string {
  return ['study', p.study, p.series ? `series/${p.series}` : '', p.instance ? `instance/${p.instance}` : '']
    .filter(Boolean)
    .join('/')
    .replace('study/', 'study/');
}

function actor(req: FastifyRequest): string {
  const who = req.identity;
  return who.kind === 'user' ? `user:${who.userId}` : who.kind === 'service' ? `service:${who.serviceId}` : 'anonymous';
}

/** What the Accept header asks of a WADO-RS retrieval: DICOM parts, and which transfer syntax. */
function acceptsDicom(accept: string | undefined): { ok: true; transferSyntax?: string } | { ok: false; error: string } {
  if (!accept || accept === '*/*') return { ok: true };
  for (const entry of accept.split(/,(?=(?:[^"]*"[^"]*")*[^"]*$)/)) {
    const p = mediaParams(entry);
    if (p.media === '*/*' || p.media === 'multipart/*') return { ok: true };
    if (p.media === 'multipart/related' && (!p.type || p.type === 'application/dicom'))
      return { ok: true, ...(p['transfer-syntax'] ? { transferSyntax: p['transfer-syntax'] } : {}) };
  }
  return { ok: false, error: `instances are returned as multipart/related; type="application/dicom", not ${accept}` };
}

/** Reads what is left of an upload and drops it (a request stream read by an iterator cannot simply be resumed). */
async function drain(upload: AsyncIterator<Uint8Array>): Promise<void> {
  try {
    for (let n = await upload.next(); !n.done; n = await upload.next());
  } catch {
    // the sender went away: nothing left to read
  }
}
