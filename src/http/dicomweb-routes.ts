// DICOMweb (PS3.18) at /dicomweb: STOW-RS in, QIDO-RS queries, WADO-RS retrieval of studies,
// series, instances, metadata and (uncompressed) frames. Every route declares its access;
// the audit hook records each request with the study or instance it touched.
import type { FastifyPluginCallback, FastifyReply, FastifyRequest } from 'fastify';
import { Readable } from 'node:stream';
import {
  attributeKeyword, DEFAULT_RETURN, extractFrames, findImaging, mediaParams, MultipartError, multipartRelated, readMultipartRelated, storeFailureStatus, toDicomJson,
  type ImagingStore, type Part, type QueryLevel, type StoredInstance,
} from '../imaging/index.ts';

export interface DicomwebRoutesOptions {
  imaging: ImagingStore;
}

const READ = { roles: ['doctor', 'nurse', 'lab', 'integration'], services: ['site', 'router'] } as const;
const WRITE = { roles: ['doctor', 'lab', 'integration'], services: ['site', 'edge', 'router'] } as const;
const UID = /^[0-9]+(\.[0-9]+)*$/;
const DICOM_JSON = 'application/dicom+json';

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

  const bad = (reply: FastifyReply, status: number, message: string) => reply.code(status).type('application/json').send({ error: status === 406 ? 'not-acceptable' : status === 404 ? 'not-found' : 'bad-request', message });
  const uidsOk = (p: Params) => [p.study, p.series, p.instance].every((u) => u === undefined || (UID.test(u) && u.length <= 64));

  // ---- STOW-RS ------------------------------------------------------------------------
  const stow = async (req: FastifyRequest<{ Params: Params }>, reply: FastifyReply) => {
    const study = req.params.study;
    if (study !== undefined && !uidsOk(req.params)) return bad(reply, 400, `${study} is not a valid Study Instance UID`);
    const contentType = mediaParams(req.headers['content-type'] ?? '');
    if (contentType.media !== 'multipart/related') return bad(reply, 415, `STOW-RS takes multipart/related, not ${contentType.media || '(no Content-Type)'}`);
    if (contentType.type && contentType.type !== 'application/dicom') return bad(reply, 415, `STOW-RS here takes type="application/dicom" parts, not ${contentType.type}`);
    const boundary = contentType.boundary;
    if (!boundary) return bad(reply, 400, 'the Content-Type has no boundary parameter');
    if (boundary.length > 70) return bad(reply, 400, 'the boundary is longer than 70 characters (RFC 2046)');
    const referenced: object[] = [];
    const failed: object[] = [];
    const warnings: string[] = [];
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
        const r = await store.receive(part.body, { source: actor(req), ...(study ? { expectStudy: study } : {}) });
        if (!r.ok) {
          failed.push(failure(r.error.instance ?? {}, storeFailureStatus(r.error.kind)));
          warnings.push(warning(`part ${part.index}: ${r.error.message}`));
          continue;
        }
        const url = `${base}/studies/${r.value.studyInstanceUid}/series/${r.value.seriesInstanceUid}/instances/${r.value.sopInstanceUid}`;
        referenced.push({ '00081150': { vr: 'UI', Value: [r.value.sopClassUid] }, '00081155': { vr: 'UI', Value: [r.value.sopInstanceUid] }, '00081190': { vr: 'UR', Value: [url] } });
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
    req.auditExtra = { action: 'dicom-store', ...(study ? { resource: `dicom:study/${study}` } : {}), detail: `stored ${referenced.length}, failed ${failed.length}` };
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
  app.post('/studies', { config: { access: WRITE } }, stow);
  app.post<{ Params: Params }>('/studies/:study', { config: { access: WRITE } }, stow);

  // ---- QIDO-RS ------------------------------------------------------------------------
  const qido = (level: QueryLevel) => async (req: FastifyRequest<{ Params: Params; Querystring: Record<string, string | string[]> }>, reply: FastifyReply) => {
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
        if (!Number.isInteger(n) || n < 0 || (name === 'limit' && (n === 0 || n > 1000))) return bad(reply, 400, `${name} must be an integer${name === 'limit' ? ' from 1 to 1000' : ' >= 0'}`);
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
    const found = await findImaging(store.db, level, keys, { limit, offset, include: [...DEFAULT_RETURN[level], ...include] });
    if (!found.ok) return bad(reply, 400, found.error);
    req.auditExtra = { action: 'dicom-query', ...(req.params.study ? { resource: `dicom:study/${req.params.study}` } : {}), detail: `${level} ${JSON.stringify(keys)} -> ${found.value.length}` };
    return reply.type(DICOM_JSON).send(found.value.map(toDicomJson));
  };
  app.get('/studies', { config: { access: READ } }, qido('STUDY'));
  app.get('/series', { config: { access: READ } }, qido('SERIES'));
  app.get('/instances', { config: { access: READ } }, qido('IMAGE'));
  app.get('/studies/:study/series', { config: { access: READ } }, qido('SERIES'));
  app.get('/studies/:study/instances', { config: { access: READ } }, qido('IMAGE'));
  app.get('/studies/:study/series/:series/instances', { config: { access: READ } }, qido('IMAGE'));

  // ---- WADO-RS ------------------------------------------------------------------------
  const selected = async (p: Params): Promise<StoredInstance[]> => {
    const all = await store.instances({ studyInstanceUid: p.study!, ...(p.series ? { seriesInstanceUid: p.series } : {}) });
    return p.instance ? all.filter((i) => i.sopInstanceUid === p.instance) : all;
  };
  const retrieve = async (req: FastifyRequest<{ Params: Params }>, reply: FastifyReply) => {
    if (!uidsOk(req.params)) return bad(reply, 400, 'a UID in the path is not valid');
    const accept = acceptsDicom(req.headers.accept);
    if (!accept.ok) return bad(reply, 406, accept.error);
    const instances = await selected(req.params);
    if (!instances.length) return bad(reply, 404, `nothing stored under ${describe(req.params)}`);
    const wrong = accept.transferSyntax && accept.transferSyntax !== '*' ? instances.find((i) => i.transferSyntaxUid !== accept.transferSyntax) : undefined;
    if (wrong) return bad(reply, 406, `instance ${wrong.sopInstanceUid} is stored as ${wrong.transferSyntaxUid}; medmesh returns instances as stored (transfer-syntax=* or that one)`);
    req.auditExtra = { action: 'dicom-retrieve', resource: `dicom:${describe(req.params)}`, detail: `${instances.length} instance(s)` };
    // Each instance is decrypted and checked as its part is sent; a damaged one ends the
    // stream with an error rather than sending bytes that fail their checksum.
    const parts = (async function* (): AsyncGenerator<Part> {
      for (const i of instances) {
        const r = await store.read(i.sopInstanceUid);
        if (!r.ok) throw new Error(r.error.message);
        yield { headers: { 'Content-Type': `application/dicom; transfer-syntax=${i.transferSyntaxUid}`, 'Content-Location': `/dicomweb/studies/${i.studyInstanceUid}/series/${i.seriesInstanceUid}/instances/${i.sopInstanceUid}` }, body: r.value.file };
      }
    })();
    const body = multipartRelated('application/dicom', parts);
    return reply.type(body.contentType).send(Readable.from(body.body));
  };
  const metadata = async (req: FastifyRequest<{ Params: Params }>, reply: FastifyReply) => {
    if (!uidsOk(req.params)) return bad(reply, 400, 'a UID in the path is not valid');
    const instances = await selected(req.params);
    if (!instances.length) return bad(reply, 404, `nothing stored under ${describe(req.params)}`);
    req.auditExtra = { action: 'dicom-metadata', resource: `dicom:${describe(req.params)}`, detail: `${instances.length} instance(s)` };
    return reply.type(DICOM_JSON).send(instances.map((i) => i.attributes));
  };
  const frames = async (req: FastifyRequest<{ Params: Params }>, reply: FastifyReply) => {
    if (!uidsOk(req.params)) return bad(reply, 400, 'a UID in the path is not valid');
    const wanted = (req.params.frames ?? '').split(',').map(Number);
    if (!wanted.length || wanted.some((n) => !Number.isInteger(n) || n < 1)) return bad(reply, 400, `frame list ${req.params.frames ?? ''} must be positive integers separated by commas`);
    const [instance] = await selected(req.params);
    if (!instance) return bad(reply, 404, `nothing stored under ${describe(req.params)}`);
    const r = await store.read(instance.sopInstanceUid);
    if (!r.ok) return bad(reply, r.error.kind === 'not-found' ? 404 : 500, r.error.message);
    const count = instance.attributes['00280008']?.Value?.[0];
    const cut = extractFrames(r.value.file, count === undefined ? null : Number(count), wanted);
    if (!cut.ok) return bad(reply, cut.status, cut.error);
    req.auditExtra = { action: 'dicom-retrieve', resource: `dicom:${describe(req.params)}`, detail: `frames ${wanted.join(',')}` };
    const body = multipartRelated('application/octet-stream', cut.value.map((f) => ({ headers: { 'Content-Type': 'application/octet-stream' }, body: f })));
    return reply.type(body.contentType).send(Readable.from(body.body));
  };
  app.get('/studies/:study', { config: { access: READ } }, retrieve);
  app.get('/studies/:study/series/:series', { config: { access: READ } }, retrieve);
  app.get('/studies/:study/series/:series/instances/:instance', { config: { access: READ } }, retrieve);
  app.get('/studies/:study/metadata', { config: { access: READ } }, metadata);
  app.get('/studies/:study/series/:series/metadata', { config: { access: READ } }, metadata);
  app.get('/studies/:study/series/:series/instances/:instance/metadata', { config: { access: READ } }, metadata);
  app.get('/studies/:study/series/:series/instances/:instance/frames/:frames', { config: { access: READ } }, frames);
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
  return ['study', p.study, p.series ? `series/${p.series}` : '', p.instance ? `instance/${p.instance}` : ''].filter(Boolean).join('/').replace('study/', 'study/');
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
    if (p.media === 'multipart/related' && (!p.type || p.type === 'application/dicom')) return { ok: true, ...(p['transfer-syntax'] ? { transferSyntax: p['transfer-syntax'] } : {}) };
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
