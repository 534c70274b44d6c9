// DICOMweb (PS3.18) at /dicomweb: STOW-RS in, QIDO-RS queries, WADO-RS retrieval of studies,
// series, instances, metadata and (uncompressed) frames. Access is the FHIR record's: a user
// may do with images what their policy allows on ImagingStudy, over the studies of the patients
// in their scope (a study is its linked Patient's); sites, routers and edges by service kind.
// The audit hook records each request with the study or instance it touched.
import type { FastifyInstance, FastifyPluginCallback, FastifyReply, FastifyRequest } from 'fastify';
import { Readable } from 'node:stream';
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
import { resolveRequester } from './requester.ts';

export interface DicomwebRoutesOptions {
  imaging: ImagingStore;
  /** Decides for users; without it only service accounts are served (fails closed). */
  access?: AccessControl;
}

/** Any signed-in caller reaches the handlers; what each may do is decided there (`gate`). */
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
const UID = /^[0-9]+(\.[0-9]+)*$/;
const DICOM_JSON = 'application/dicom+json';

/** The `error` of each JSON error answer, by status (the same words as the other non-FHIR routes). */
const ERROR_CODE: Record<number, string> = {
  400: 'bad-request',
  403: 'forbidden',
  404: 'not-found',
  406: 'not-acceptable',
  409: 'conflict',
  415: 'unsupported-media-type',
  500: 'internal-error',
  503: 'unavailable',
};

/** STOW-RS failure reasons (PS3.18 Table 10.5.3-2 / PS3.4 Annex B). */
const FAILURE = { cannotUnderstand: 0xc000 } as const;

type Params = { study?: string; series?: string; instance?: string; frames?: string };

export const dicomwebRoutes: FastifyPluginCallback<DicomwebRoutesOptions> = (app, opts, done) => {
  const store = opts.imaging;
  // Bodies are not parsed up front: STOW-RS reads its multipart body part by part as it
  // arrives (large files stream into the store), and answers 415 for a media type it does not
  // take (not the JSON parser's 400). These parsers live in this plugin only.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, payload, done) => done(null, payload));

  const bad = (reply: FastifyReply, status: number, message: string, code = ERROR_CODE[status] ?? 'bad-request') =>
    reply.code(status).type('application/json').send({ error: code, message });
  jsonErrors(app);
  /** A stored file that cannot be served: lost or damaged at this site (500), or the KMS sealed (503). */
  const unreadable = (reply: FastifyReply, error: ImagingError) =>
    error.kind === 'sealed'
      ? bad(reply, 503, error.message, 'sealed')
      : error.kind === 'not-found'
        ? bad(reply, 404, error.message)
        : bad(reply, 500, error.message, 'stored-file-unreadable');
  const uidsOk = (p: Params) => [p.study, p.series, p.instance].every((u) => u === undefined || (UID.test(u) && u.length <= 64));

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
      await bad(reply, 403, message);
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
  /** Whether the study is in the caller's scope; answers 404 or 403 (audited) when not. */
  const admitStudy = async (req: FastifyRequest, reply: FastifyReply, filter: AccessFilter, study: string): Promise<boolean> => {
    const patient = await store.studyPatient(study);
    if (patient === undefined) {
      await bad(reply, 404, `study ${study} is not held here`);
      return false;
    }
    if (await patientInScope(store.db, filter.rows, patient)) return true;
    const message =
      patient === null
        ? `study ${study} is not linked to a patient record yet; until it is, only those who may see every patient's images see it`
        : filter.denied.replace(/^\S+/, `study ${study}`);
    req.auditExtra = { action: VERB.read, resource: `dicom:study/${study}`, detail: message };
    await bad(reply, 403, message);
    return false;
  };

  /** For STOW-RS by a caller with a limited scope: may they store images of this patient? */
  const storeScope =
    (filter: AccessFilter): NonNullable<IngestOptions['mayStore']> =>
    async ({ dicomPatientId, recordId }) => {
      if (recordId === undefined) {
        return `patient ${dicomPatientId} has no record at this site yet: register the patient first (images sent by the modality or PACS, a service account, are taken as they come)`;
      }
      return (await patientInScope(store.db, filter.rows, recordId))
        ? undefined
        : filter.denied.replace(/^\S+/, `a study of patient ${dicomPatientId} (Patient/${recordId})`);
    };

  // ---- STOW-RS ------------------------------------------------------------------------
  const stow = async (req: FastifyRequest<{ Params: Params }>, reply: FastifyReply) => {
    const study = req.params.study;
    // Storing needs the right to create ImagingStudy, and, for a caller whose access covers
    // only some patients (a doctor's care relationship), each instance's patient in that scope,
    // as a FHIR create would: nobody files images into the record of a patient they may not touch.
    const filter = await gate(req, reply, 'create', study ? `dicom:study/${study}` : 'dicom:studies');
    if (!filter) return reply;
    const mayStore = filter.rows.kind === 'all' ? undefined : storeScope(filter);
    if (study !== undefined && !uidsOk(req.params)) return bad(reply, 400, `${study} is not a valid Study Instance UID`);
    const contentType = mediaParams(req.headers['content-type'] ?? '');
    if (contentType.media !== 'multipart/related')
      return bad(reply, 415, `STOW-RS takes multipart/related, not ${contentType.media || '(no Content-Type)'}`);
    if (contentType.type && contentType.type !== 'application/dicom')
      return bad(reply, 415, `STOW-RS here takes type="application/dicom" parts, not ${contentType.type}`);
    const boundary = contentType.boundary;
    if (!boundary) return bad(reply, 400, 'the Content-Type has no boundary parameter');
    if (boundary.length > 70) return bad(reply, 400, 'the boundary is longer than 70 characters (RFC 2046)');
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
        const url = `${base}/studies/${r.value.studyInstanceUid}/series/${r.value.seriesInstanceUid}/instances/${r.value.sopInstanceUid}`;
        referenced.push({
          '00081150': { vr: 'UI', Value: [r.value.sopClassUid] },
          '00081155': { vr: 'UI', Value: [r.value.sopInstanceUid] },
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
      if (referenced.length === 0 && failed.length === 0) return bad(reply, 400, malformed);
      failed.push(failure({}, FAILURE.cannotUnderstand));
      warnings.push(warning(malformed));
    }
    req.auditExtra = {
      action: 'dicom-store',
      ...(study ? { resource: `dicom:study/${study}` } : {}),
      ...(refusals.length && !referenced.length ? { outcome: 'deny' as const } : {}),
      detail:
        `stored ${referenced.length}, failed ${failed.length}${refusals.length ? `; ${refusals.length} refused to this caller: ${refusals[0]!}` : ''}`.slice(
          0,
          2000,
        ),
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
  app.post('/studies', { config: UPLOAD }, stow);
  app.post<{ Params: Params }>('/studies/:study', { config: UPLOAD }, stow);

  // ---- QIDO-RS ------------------------------------------------------------------------
  const qido =
    (level: QueryLevel) =>
    async (req: FastifyRequest<{ Params: Params; Querystring: Record<string, string | string[]> }>, reply: FastifyReply) => {
      const filter = await gate(req, reply, 'search', req.params.study ? `dicom:study/${req.params.study}` : 'dicom:studies');
      if (!filter) return reply;
      if (!uidsOk(req.params)) return bad(reply, 400, 'a UID in the path is not valid');
      const keys: Record<string, string> = {};
      const include: string[] = [];
      let limit = 100;
      let offset = 0;
      for (const [name, raw] of Object.entries(req.query)) {
        const values = [raw].flat();
        if (name === 'includefield') {
          for (const f of values.flatMap((v) => v.split(','))) {
            if (f === 'all') include.push(...DEFAULT_RETURN[level]);
            else {
              const k = attributeKeyword(f);
              if (!k) return bad(reply, 400, `includefield ${f}: not an attribute medmesh returns`);
              include.push(k);
            }
          }
        } else if (name === 'limit' || name === 'offset') {
          const n = Number(values[0]);
          if (!Number.isInteger(n) || n < 0 || (name === 'limit' && (n === 0 || n > 1000)))
            return bad(reply, 400, `${name} must be an integer${name === 'limit' ? ' from 1 to 1000' : ' >= 0'}`);
          if (name === 'limit') limit = n;
          else offset = n;
        } else if (name === 'fuzzymatching') {
          if (values[0] !== 'false') return bad(reply, 400, 'fuzzymatching is not supported');
        } else {
          const k = attributeKeyword(name);
          if (!k) return bad(reply, 400, `${name} is not a matching key medmesh supports`);
          keys[k] = values[0] ?? '';
        }
      }
      if (req.params.study) keys.StudyInstanceUID = req.params.study;
      if (req.params.series) keys.SeriesInstanceUID = req.params.series;
      const found = await findImaging(store.db, level, keys, {
        limit,
        offset,
        include: [...DEFAULT_RETURN[level], ...include],
        rows: filter.rows,
      });
      if (!found.ok) return bad(reply, 400, found.error);
      req.auditExtra = {
        action: 'dicom-query',
        ...(req.params.study ? { resource: `dicom:study/${req.params.study}` } : {}),
        detail: `${level} ${JSON.stringify(keys)} -> ${found.value.length}`,
      };
      return reply.type(DICOM_JSON).send(found.value.map(toDicomJson));
    };
  app.get('/studies', { config: SIGNED_IN }, qido('STUDY'));
  app.get('/series', { config: SIGNED_IN }, qido('SERIES'));
  app.get('/instances', { config: SIGNED_IN }, qido('IMAGE'));
  app.get('/studies/:study/series', { config: SIGNED_IN }, qido('SERIES'));
  app.get('/studies/:study/instances', { config: SIGNED_IN }, qido('IMAGE'));
  app.get('/studies/:study/series/:series/instances', { config: SIGNED_IN }, qido('IMAGE'));

  // ---- WADO-RS ------------------------------------------------------------------------
  const selected = async (p: Params): Promise<StoredInstance[]> => {
    const all = await store.instances({ studyInstanceUid: p.study!, ...(p.series ? { seriesInstanceUid: p.series } : {}) });
    return p.instance ? all.filter((i) => i.sopInstanceUid === p.instance) : all;
  };
  /** The gate, the path's UIDs and the study's scope, for every WADO-RS route; false when answered. */
  const readable = async (req: FastifyRequest<{ Params: Params }>, reply: FastifyReply): Promise<boolean> => {
    const filter = await gate(req, reply, 'read', `dicom:${describe(req.params)}`);
    if (!filter) return false;
    if (!uidsOk(req.params)) {
      await bad(reply, 400, 'a UID in the path is not valid');
      return false;
    }
    return admitStudy(req, reply, filter, req.params.study!);
  };
  const retrieve = async (req: FastifyRequest<{ Params: Params }>, reply: FastifyReply) => {
    if (!(await readable(req, reply))) return reply;
    const accept = acceptsDicom(req.headers.accept);
    if (!accept.ok) return bad(reply, 406, accept.error);
    const instances = await selected(req.params);
    if (!instances.length) return bad(reply, 404, `nothing stored under ${describe(req.params)}`);
    const wrong =
      accept.transferSyntax && accept.transferSyntax !== '*'
        ? instances.find((i) => i.transferSyntaxUid !== accept.transferSyntax)
        : undefined;
    if (wrong)
      return bad(
        reply,
        406,
        `instance ${wrong.sopInstanceUid} is stored as ${wrong.transferSyntaxUid}; medmesh returns instances as stored (transfer-syntax=* or that one)`,
      );
    req.auditExtra = {
      action: 'dicom-retrieve',
      resource: `dicom:${describe(req.params)}`,
      detail: `${instances.length} instance(s)`,
    };
    // What can be checked before the first byte is: every file is there, and the first one opens
    // and matches its checksum. A failure then is an answer the client sees (not a 200 cut short).
    const missing = await store.missingFiles({ sopInstanceUids: instances.map((i) => i.sopInstanceUid) });
    if (missing.length)
      return bad(
        reply,
        500,
        `${missing.length} of the ${instances.length} instance file(s) under ${describe(req.params)} are missing from this site's store (instance ${missing[0]!.sopInstanceUid}${missing.length > 1 ? ', ...' : ''}); nothing is sent rather than part of it`,
        'stored-file-missing',
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
    if (!first.ok) return unreadable(reply, first.error);
    // Past the first byte, a file that fails (damaged or removed meanwhile) ends the stream with
    // an error, and Fastify aborts the response: the client sees a broken transfer, never a
    // clean short body or bytes that fail their checksum.
    const parts = (async function* (): AsyncGenerator<Part> {
      for (const [k, i] of instances.entries()) {
        const r = await queue.shift()!; // the first was awaited above: its outcome again
        if (k + AHEAD < instances.length) queue.push(read(k + AHEAD));
        if (!r.ok) throw new Error(r.error.message);
        yield {
          headers: {
            'Content-Type': `application/dicom; transfer-syntax=${i.transferSyntaxUid}`,
            'Content-Location': `/dicomweb/studies/${i.studyInstanceUid}/series/${i.seriesInstanceUid}/instances/${i.sopInstanceUid}`,
          },
          body: r.value.file,
        };
      }
    })();
    const body = multipartRelated('application/dicom', parts);
    return reply.type(body.contentType).send(Readable.from(body.body));
  };
  const metadata = async (req: FastifyRequest<{ Params: Params }>, reply: FastifyReply) => {
    if (!(await readable(req, reply))) return reply;
    const instances = await selected(req.params);
    if (!instances.length) return bad(reply, 404, `nothing stored under ${describe(req.params)}`);
    req.auditExtra = {
      action: 'dicom-metadata',
      resource: `dicom:${describe(req.params)}`,
      detail: `${instances.length} instance(s)`,
    };
    return reply.type(DICOM_JSON).send(instances.map((i) => i.attributes));
  };
  const frames = async (req: FastifyRequest<{ Params: Params }>, reply: FastifyReply) => {
    if (!(await readable(req, reply))) return reply;
    const wanted = (req.params.frames ?? '').split(',').map(Number);
    if (!wanted.length || wanted.some((n) => !Number.isInteger(n) || n < 1))
      return bad(reply, 400, `frame list ${req.params.frames ?? ''} must be positive integers separated by commas`);
    const [instance] = await selected(req.params);
    if (!instance) return bad(reply, 404, `nothing stored under ${describe(req.params)}`);
    const r = await store.read(instance.sopInstanceUid);
    if (!r.ok) return unreadable(reply, r.error);
    const count = instance.attributes['00280008']?.Value?.[0];
    const cut = extractFrames(r.value.file, count === undefined ? null : Number(count), wanted);
    if (!cut.ok) return bad(reply, cut.status, cut.error);
    req.auditExtra = {
      action: 'dicom-retrieve',
      resource: `dicom:${describe(req.params)}`,
      detail: `frames ${wanted.join(',')}`,
    };
    const body = multipartRelated(
      'application/octet-stream',
      cut.value.map((f) => ({ headers: { 'Content-Type': 'application/octet-stream' }, body: f })),
    );
    return reply.type(body.contentType).send(Readable.from(body.body));
  };
  app.get('/studies/:study', { config: SIGNED_IN }, retrieve);
  app.get('/studies/:study/series/:series', { config: SIGNED_IN }, retrieve);
  app.get('/studies/:study/series/:series/instances/:instance', { config: SIGNED_IN }, retrieve);
  app.get('/studies/:study/metadata', { config: SIGNED_IN }, metadata);
  app.get('/studies/:study/series/:series/metadata', { config: SIGNED_IN }, metadata);
  app.get('/studies/:study/series/:series/instances/:instance/metadata', { config: SIGNED_IN }, metadata);
  app.get('/studies/:study/series/:series/instances/:instance/frames/:frames', { config: SIGNED_IN }, frames);
  done();
};

/**
 * Errors thrown in a plugin's routes (Fastify's own, or a failure nobody expected) in the JSON
 * error shape of the non-FHIR routes, not the FHIR OperationOutcome the app answers with
 * elsewhere; a 500 says no more than that (the error itself goes to the log).
 */
export function jsonErrors(app: FastifyInstance): void {
  app.setErrorHandler((err: Error & { statusCode?: number }, req, reply) => {
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    if (status === 500) req.log.error({ err }, 'unhandled error');
    return reply
      .code(status)
      .type('application/json')
      .send({
        error: ERROR_CODE[status] ?? (status === 413 ? 'too-large' : 'bad-request'),
        message: status === 500 ? `internal error; the request id ${req.id} is in the log` : err.message,
      });
  });
}

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
