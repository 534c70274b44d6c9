// The site's DIMSE service class provider (DESIGN.md §9): C-ECHO, C-STORE (every storage SOP
// class, the transfer syntax kept as sent), C-FIND at patient/study/series/image level.
// Calling AEs are identities: known AEs (the region file's or the site's list) may be
// required, every association and operation is audited before it is answered, and the number
// of concurrent associations is bounded.
import { createServer, type Server as NetServer, type Socket } from 'node:net';
import { PassThrough, Writable } from 'node:stream';
import dimse from './dimse.ts';
import type { AuditEvent } from '../security/audit/index.ts';
import { findImaging, type QueryLevel } from './imaging-query.ts';
import type { ImagingStore, IngestOutcome } from './imaging-store.ts';
import { storeFailureStatus, type ImagingResult } from './errors.ts';
import { part10File } from './part10.ts';
import { checkStructure } from './dicom-structure.ts';
import { cStoreFiles, onStoreSettled, storeRequestFor, type StoredFile } from './dimse-scu.ts';

const { Scp, Dataset } = dimse;
const { CEchoResponse, CFindResponse, CGetResponse, CMoveResponse, CStoreResponse } = dimse.responses;
const { Status, PresentationContextResult, RejectResult, RejectSource, RejectReason, TransferSyntax } = dimse.constants;
type DimseDataset = InstanceType<typeof Dataset>;
type StoreRequest = Parameters<InstanceType<typeof Scp>['cStoreRequest']>[0];
type FindRequest = Parameters<InstanceType<typeof Scp>['cFindRequest']>[0];
type MoveRequest = Parameters<InstanceType<typeof Scp>['cMoveRequest']>[0];
type GetRequest = Parameters<InstanceType<typeof Scp>['cGetRequest']>[0];
type Counts = { completed?: number; failed?: number; warnings?: number };
/** A C-STORE data set as it arrives: in memory while small, else streaming into the store. */
interface Incoming {
  chunks: Buffer[];
  bytes: number;
  overflow: boolean;
  feed?: PassThrough;
  result?: Promise<ImagingResult<IngestOutcome>>;
}

export interface RemoteAe {
  host: string;
  port: number;
}

export interface DimseServerOptions {
  store: ImagingStore;
  siteId: string;
  aeTitle: string;
  host?: string;
  port: number;
  /** Known calling AEs (and where C-MOVE reaches them). */
  remoteAes?: Record<string, RemoteAe>;
  /** Refuse associations from AEs not in `remoteAes` (default true). */
  refuseUnknownAes?: boolean;
  maxAssociations?: number;
  /** Instances larger than this stream into the store as they arrive instead of being held (default: the store's). */
  streamAboveBytes?: number;
  /** Appends one audit entry; false when the log cannot take it (the operation is then refused). */
  audit: (event: AuditEvent) => Promise<boolean>;
}

/** Status codes medmesh answers with (PS3.4 Annex B and C). */
const STORE_OUT_OF_RESOURCES = 0xa700;
const FIND_UNABLE_TO_PROCESS = 0xc000;
const FIND_IDENTIFIER_MISMATCH = 0xa900;
const UIDS = {
  verification: '1.2.840.10008.1.1',
  patientRootFind: '1.2.840.10008.5.1.4.1.2.1.1',
  patientRootMove: '1.2.840.10008.5.1.4.1.2.1.2',
  patientRootGet: '1.2.840.10008.5.1.4.1.2.1.3',
  studyRootFind: '1.2.840.10008.5.1.4.1.2.2.1',
  studyRootMove: '1.2.840.10008.5.1.4.1.2.2.2',
  studyRootGet: '1.2.840.10008.5.1.4.1.2.2.3',
  worklistFind: '1.2.840.10008.5.1.4.31',
} as const;
const QUERY_MODELS = new Set<string>([
  UIDS.patientRootFind,
  UIDS.studyRootFind,
  UIDS.patientRootMove,
  UIDS.studyRootMove,
  UIDS.patientRootGet,
  UIDS.studyRootGet,
]);
// Everything else proposed is taken as a storage SOP class (private ones included).
const NOT_STORAGE = new Set<string>([UIDS.verification, UIDS.worklistFind]);
const MOVE_DESTINATION_UNKNOWN = 0xa801;
const MOVE_SUBOPS_FAILED = 0xb000;
const MOVE_UNABLE_TO_PROCESS = 0xc000;

export interface DimseServer {
  port: number;
  activeAssociations(): number;
  close(): Promise<void>;
}

export async function startDimseServer(o: DimseServerOptions): Promise<DimseServer> {
  const max = o.maxAssociations ?? 16;
  let active = 0;
  const sockets = new Set<Socket>();
  const ScpClass = scpFor(o, {
    tryEnter: () => (active < max ? (active++, true) : false),
    leave: () => void active--,
  });
  const server: NetServer = createServer((socket) => {
    sockets.add(socket);
    socket.setNoDelay(true);
    socket.on('close', () => sockets.delete(socket));
    new ScpClass(socket, { associationTimeout: 30_000, pduTimeout: 60_000 });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host ?? '127.0.0.1', () => resolve());
  });
  const address = server.address();
  return {
    port: typeof address === 'object' && address ? address.port : o.port,
    activeAssociations: () => active,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

function scpFor(o: DimseServerOptions, slots: { tryEnter: () => boolean; leave: () => void }) {
  const refuseUnknown = o.refuseUnknownAes ?? true;
  return class MedmeshScp extends Scp {
    #calling = '';
    #peer = '';
    #entered = false;
    /** C-STORE data sets as they arrive, per request. */
    readonly #incoming = new WeakMap<object, Incoming>();

    constructor(socket: Socket, opts: ConstructorParameters<typeof Scp>[1]) {
      super(socket, opts);
      this.#peer = socket.remoteAddress ?? '';
      socket.once('close', () => {
        if (this.#entered) slots.leave();
        this.#entered = false;
      });
    }

    #event(action: string, outcome: AuditEvent['outcome'], extra: Partial<AuditEvent> = {}): AuditEvent {
      return {
        time: new Date().toISOString(),
        site: o.siteId,
        actor: { kind: 'service', id: `ae:${this.#calling || '?'}` },
        action,
        outcome,
        ...(this.#peer ? { sourceIp: this.#peer } : {}),
        ...extra,
      };
    }

    override associationRequested(association: Parameters<InstanceType<typeof Scp>['associationRequested']>[0]): void {
      this.#calling = association.getCallingAeTitle().trim();
      const called = association.getCalledAeTitle().trim();
      const reject = (result: number, source: number, reason: number, why: string) => {
        void o
          .audit(this.#event('dicom-associate', 'deny', { detail: why }))
          .finally(() => this.sendAssociationReject(result, source, reason));
      };
      if (called !== o.aeTitle)
        return reject(
          RejectResult.Permanent,
          RejectSource.ServiceUser,
          RejectReason.CalledAeNotRecognized,
          `called AE ${called} is not ${o.aeTitle}`,
        );
      if (refuseUnknown && !o.remoteAes?.[this.#calling])
        return reject(
          RejectResult.Permanent,
          RejectSource.ServiceUser,
          RejectReason.CallingAeNotRecognized,
          `calling AE ${this.#calling} is not known`,
        );
      if (!slots.tryEnter())
        return reject(
          RejectResult.Transient,
          RejectSource.ServiceProviderPresentation,
          RejectReason.LocalLimitExceeded,
          'too many associations',
        );
      this.#entered = true;
      for (const { id } of association.getPresentationContexts()) {
        const pc = association.getPresentationContext(id);
        const abstract = pc.getAbstractSyntaxUid();
        const offered = pc.getTransferSyntaxUids();
        if (abstract === UIDS.verification || QUERY_MODELS.has(abstract)) {
          const ts = [TransferSyntax.ExplicitVRLittleEndian, TransferSyntax.ImplicitVRLittleEndian].find((t) =>
            offered.includes(t),
          );
          if (ts) pc.setResult(PresentationContextResult.Accept, ts);
          else pc.setResult(PresentationContextResult.RejectTransferSyntaxesNotSupported);
        } else if (NOT_STORAGE.has(abstract)) {
          pc.setResult(PresentationContextResult.RejectAbstractSyntaxNotSupported);
        } else {
          // Storage: keep what the sender has (its first choice), never transcode.
          const ts = offered[0];
          if (ts) pc.setResult(PresentationContextResult.Accept, ts);
          else pc.setResult(PresentationContextResult.RejectTransferSyntaxesNotSupported);
        }
      }
      void o.audit(this.#event('dicom-associate', 'allow')).then((logged) => {
        if (logged) this.sendAssociationAccept();
        else
          this.sendAssociationReject(
            RejectResult.Transient,
            RejectSource.ServiceProviderPresentation,
            RejectReason.TemporaryCongestion,
          );
      });
    }

    override abort(): void {
      // The peer aborted: the socket closes and the slot is freed there.
    }

    override associationReleaseRequested(): void {
      this.sendAssociationReleaseResponse();
    }

    override cEchoRequest(
      request: Parameters<InstanceType<typeof Scp>['cEchoRequest']>[0],
      callback: (r: InstanceType<typeof CEchoResponse>) => void,
    ): void {
      const response = CEchoResponse.fromRequest(request);
      void o.audit(this.#event('dicom-echo', 'success')).then((logged) => {
        response.setStatus(logged ? Status.Success : Status.ProcessingFailure);
        callback(response);
      });
    }

    override createStoreWritableStream(
      pc: { getAcceptedTransferSyntaxUid(): string | undefined },
      request: StoreRequest,
    ): Writable {
      const slot: Incoming = { chunks: [], bytes: 0, overflow: false };
      this.#incoming.set(request, slot);
      const limit = o.store.maxFileBytes;
      const streamAbove = o.streamAboveBytes ?? o.store.streamAboveBytes;
      const calling = this.#calling;
      const pass = (feed: PassThrough, chunk: Buffer, done: () => void) =>
        feed.write(chunk) ? done() : feed.once('drain', done);
      return new Writable({
        write(chunk: Buffer, _enc, done) {
          slot.bytes += chunk.length;
          if (slot.feed) return pass(slot.feed, chunk, () => done());
          if (slot.bytes > streamAbove) {
            // A large instance: from here on it streams into the store (checked, hashed and
            // encrypted on the way) behind the File Meta group built from the command.
            const feed = new PassThrough();
            slot.feed = feed;
            slot.result = o.store.ingestStream(feed, { source: `ae:${calling}` });
            feed.write(
              part10File(
                {
                  sopClassUid: request.getAffectedSopClassUid(),
                  sopInstanceUid: request.getAffectedSopInstanceUid(),
                  transferSyntaxUid: pc.getAcceptedTransferSyntaxUid() ?? TransferSyntax.ImplicitVRLittleEndian,
                  sourceAe: calling,
                },
                Buffer.alloc(0),
              ),
            );
            for (const c of slot.chunks) feed.write(c);
            slot.chunks = [];
            return pass(feed, chunk, () => done());
          }
          // Past the limit the rest is read and dropped: the answer is "out of resources".
          if (slot.bytes > limit) {
            slot.overflow = true;
            slot.chunks = [];
          } else slot.chunks.push(chunk);
          done();
        },
        final(done) {
          slot.feed?.end();
          done();
        },
      });
    }

    override createDatasetFromStoreWritableStream(
      _w: Writable,
      pc: { getAcceptedTransferSyntaxUid(): string | undefined },
      callback: (d: DimseDataset) => void,
    ): void {
      // The bytes stay in #incoming; dcmjs-dimse only needs a data set object to pass along.
      callback(new Dataset({}, pc.getAcceptedTransferSyntaxUid() ?? TransferSyntax.ImplicitVRLittleEndian));
    }

    override cStoreRequest(request: StoreRequest, callback: (r: InstanceType<typeof CStoreResponse>) => void): void {
      const response = CStoreResponse.fromRequest(request);
      const answer = (status: number, comment?: string) => {
        response.setStatus(status);
        if (comment) response.setErrorComment(comment.slice(0, 64));
        callback(response);
      };
      const slot = this.#incoming.get(request);
      this.#incoming.delete(request);
      const sopInstanceUid = request.getAffectedSopInstanceUid();
      const resource = `dicom:instance/${sopInstanceUid}`;
      if (!slot || slot.overflow) {
        void o
          .audit(this.#event('dicom-store', 'failure', { resource, detail: 'larger than this site accepts' }))
          .finally(() => answer(STORE_OUT_OF_RESOURCES, 'instance larger than this site accepts'));
        return;
      }
      const ts = request.getDataset()?.getTransferSyntaxUid() ?? TransferSyntax.ImplicitVRLittleEndian;
      const stored =
        slot.result ??
        o.store.ingest(
          part10File(
            { sopClassUid: request.getAffectedSopClassUid(), sopInstanceUid, transferSyntaxUid: ts, sourceAe: this.#calling },
            slot.chunks,
          ),
          { source: `ae:${this.#calling}` },
        );
      void stored.then(
        async (r) => {
          const logged = await o.audit(
            this.#event('dicom-store', r.ok ? 'success' : 'failure', {
              resource,
              ...(r.ok ? { detail: r.value.status } : { detail: r.error.message }),
            }),
          );
          if (!r.ok) return answer(storeFailureStatus(r.error.kind), r.error.message);
          answer(logged ? Status.Success : Status.ProcessingFailure);
        },
        (e: unknown) => answer(Status.ProcessingFailure, e instanceof Error ? e.message : 'processing failure'),
      );
    }

    override cFindRequest(request: FindRequest, callback: (r: Array<InstanceType<typeof CFindResponse>>) => void): void {
      const fail = (status: number, comment: string) => {
        const r = CFindResponse.fromRequest(request);
        r.setStatus(status);
        r.setErrorComment(comment.slice(0, 64));
        callback([r]);
      };
      const elements = request.getDataset()?.getElements() ?? {};
      const level = dicomString(elements.QueryRetrieveLevel).trim().toUpperCase();
      if (!['PATIENT', 'STUDY', 'SERIES', 'IMAGE'].includes(level))
        return fail(FIND_IDENTIFIER_MISMATCH, `QueryRetrieveLevel ${level || '(none)'} is not PATIENT, STUDY, SERIES or IMAGE`);
      const keys: Record<string, string> = {};
      for (const [k, v] of Object.entries(elements)) {
        if (k === 'QueryRetrieveLevel' || k === 'SpecificCharacterSet' || k === '_vrMap') continue;
        keys[k] = dicomString(v);
      }
      void (async () => {
        const found = await findImaging(o.store.db, level as QueryLevel, keys);
        if (!found.ok) {
          await o.audit(this.#event('dicom-find', 'failure', { detail: found.error }));
          return fail(FIND_UNABLE_TO_PROCESS, found.error);
        }
        const logged = await o.audit(
          this.#event('dicom-find', 'success', { detail: `${level} ${JSON.stringify(keys)} -> ${found.value.length}` }),
        );
        if (!logged) return fail(Status.ProcessingFailure, 'the audit log cannot record this query');
        const responses = found.value.map((m) => {
          const r = CFindResponse.fromRequest(request);
          r.setDataset(
            new Dataset({
              SpecificCharacterSet: 'ISO_IR 192',
              QueryRetrieveLevel: level,
              RetrieveAETitle: o.aeTitle,
              ...naturalized(m),
            }),
          );
          r.setStatus(Status.Pending);
          return r;
        });
        const done = CFindResponse.fromRequest(request);
        done.setStatus(Status.Success);
        callback([...responses, done]);
      })().catch((e: unknown) => fail(FIND_UNABLE_TO_PROCESS, e instanceof Error ? e.message : 'query failed'));
    }

    override cMoveRequest(request: MoveRequest, callback: (r: Array<InstanceType<typeof CMoveResponse>>) => void): void {
      // dcmjs-dimse takes the responses through one callback call: no pending responses, the final one only.
      const respond = finalResponse(() => CMoveResponse.fromRequest(request), callback);
      const destination = (request.getCommandDataset().getElement('MoveDestination') ?? '').trim();
      const keys = retrieveKeys(request.getDataset()?.getElements() ?? {});
      const resource = keys.StudyInstanceUID ? `dicom:study/${keys.StudyInstanceUID}` : undefined;
      void (async () => {
        const target = o.remoteAes?.[destination];
        if (!target) {
          await o.audit(
            this.#event('dicom-move', 'failure', {
              ...(resource ? { resource } : {}),
              detail: `move destination ${destination || '(none)'} is not known`,
            }),
          );
          return respond(MOVE_DESTINATION_UNKNOWN, {}, `move destination ${destination} is not known`);
        }
        if (!Object.keys(keys).length)
          return respond(FIND_IDENTIFIER_MISMATCH, {}, 'no Study, Series or SOP Instance UID to move');
        const gathered = await filesFor(o, keys);
        if (!gathered.ok) return respond(MOVE_UNABLE_TO_PROCESS, {}, gathered.error);
        const { files, failed } = gathered;
        const logged = await o.audit(
          this.#event('dicom-move', 'allow', {
            ...(resource ? { resource } : {}),
            detail: `${files.length + failed.length} instance(s) to ${destination}`,
          }),
        );
        if (!logged) return respond(Status.ProcessingFailure, {}, 'the audit log cannot record this retrieval');
        const sent = files.length
          ? await cStoreFiles({ aeTitle: destination, ...target }, { callingAe: o.aeTitle }, files)
          : { ok: true as const, value: { completed: 0, failed: [], warnings: 0 } };
        const completed = sent.ok ? sent.value.completed : 0;
        const failures = failed.length + (sent.ok ? sent.value.failed.length : files.length);
        await o.audit(
          this.#event('dicom-move', failures ? 'failure' : 'success', {
            ...(resource ? { resource } : {}),
            detail: sent.ok ? `${completed} sent to ${destination}, ${failures} failed` : sent.error,
          }),
        );
        respond(
          failures ? MOVE_SUBOPS_FAILED : Status.Success,
          { completed, failed: failures, warnings: sent.ok ? sent.value.warnings : 0 },
          sent.ok ? undefined : sent.error,
        );
      })().catch((e: unknown) => respond(MOVE_UNABLE_TO_PROCESS, {}, e instanceof Error ? e.message : 'move failed'));
    }

    override cGetRequest(request: GetRequest, callback: (r: Array<InstanceType<typeof CGetResponse>>) => void): void {
      const respond = finalResponse(() => CGetResponse.fromRequest(request), callback);
      const keys = retrieveKeys(request.getDataset()?.getElements() ?? {});
      const resource = keys.StudyInstanceUID ? `dicom:study/${keys.StudyInstanceUID}` : undefined;
      void (async () => {
        if (!Object.keys(keys).length)
          return respond(FIND_IDENTIFIER_MISMATCH, {}, 'no Study, Series or SOP Instance UID to get');
        const gathered = await filesFor(o, keys);
        if (!gathered.ok) return respond(MOVE_UNABLE_TO_PROCESS, {}, gathered.error);
        const logged = await o.audit(
          this.#event('dicom-get', 'allow', {
            ...(resource ? { resource } : {}),
            detail: `${gathered.files.length + gathered.failed.length} instance(s)`,
          }),
        );
        if (!logged) return respond(Status.ProcessingFailure, {}, 'the audit log cannot record this retrieval');
        // The C-STORE sub-operations go back on this association, to the caller.
        const counts = { completed: 0, failed: gathered.failed.length, warnings: 0 };
        await Promise.all(
          gathered.files.map(
            (f) =>
              new Promise<void>((resolve) => {
                const sub = storeRequestFor(f);
                onStoreSettled(sub, (result) => {
                  if (result.kind === 'failed') counts.failed++;
                  else counts.completed++;
                  if (result.kind === 'warning') counts.warnings++;
                  resolve();
                });
                this.sendRequests(sub);
              }),
          ),
        );
        await o.audit(
          this.#event('dicom-get', counts.failed ? 'failure' : 'success', {
            ...(resource ? { resource } : {}),
            detail: `${counts.completed} sent, ${counts.failed} failed`,
          }),
        );
        respond(counts.failed ? MOVE_SUBOPS_FAILED : Status.Success, counts);
      })().catch((e: unknown) => respond(MOVE_UNABLE_TO_PROCESS, {}, e instanceof Error ? e.message : 'get failed'));
    }
  };
}

/** A responder that sends one final retrieve response, whatever path gets there first. */
function finalResponse<
  R extends {
    setStatus(s: number): void;
    setCompleted(n: number): void;
    setFailures(n: number): void;
    setWarnings(n: number): void;
    setErrorComment(c: string): void;
  },
>(make: () => R, callback: (r: R[]) => void): (status: number, counts: Counts, comment?: string) => void {
  let responded = false;
  return (status, counts, comment) => {
    if (responded) return;
    responded = true;
    const r = make();
    r.setStatus(status);
    r.setCompleted(counts.completed ?? 0);
    r.setFailures(counts.failed ?? 0);
    r.setWarnings(counts.warnings ?? 0);
    if (comment) r.setErrorComment(comment.slice(0, 64));
    callback([r]);
  };
}

/** The UIDs a C-MOVE or C-GET identifier names. */
function retrieveKeys(elements: Record<string, unknown>): Record<string, string> {
  const keys: Record<string, string> = {};
  for (const k of ['StudyInstanceUID', 'SeriesInstanceUID', 'SOPInstanceUID']) {
    const v = dicomString(elements[k]).trim();
    if (v) keys[k] = v;
  }
  return keys;
}

/** The stored files a retrieval names, read and checked; the ones that cannot be read are counted as failed. */
async function filesFor(
  o: DimseServerOptions,
  keys: Record<string, string>,
): Promise<{ ok: true; files: StoredFile[]; failed: string[] } | { ok: false; error: string }> {
  const found = await findImaging(o.store.db, 'IMAGE', keys, { limit: 10_000 });
  if (!found.ok) return found;
  const files: StoredFile[] = [];
  const failed: string[] = [];
  for (const m of found.value) {
    const sop = String(m.SOPInstanceUID);
    const r = await o.store.read(sop);
    const s = r.ok ? checkStructure(r.value.file) : undefined;
    if (!r.ok || !s?.ok) {
      failed.push(sop);
      continue;
    }
    const i = r.value.instance;
    files.push({
      file: r.value.file,
      sopClassUid: i.sopClassUid,
      sopInstanceUid: i.sopInstanceUid,
      transferSyntaxUid: i.transferSyntaxUid,
      datasetOffset: s.value.datasetOffset,
    });
  }
  return { ok: true, files, failed };
}

/** A naturalized query value as a matching string (PN objects, lists as backslash-joined). */
function dicomString(v: unknown): string {
  if (v === undefined || v === null) return '';
  if (Array.isArray(v)) return v.map(dicomString).join('\\');
  if (typeof v === 'object') {
    const pn = v as Record<string, string>;
    return [pn.Alphabetic ?? '', pn.Ideographic ?? '', pn.Phonetic ?? ''].join('=').replace(/=+$/, '');
  }
  return typeof v === 'string' || typeof v === 'number' ? String(v) : '';
}

const PN_KEYS = new Set(['PatientName', 'ReferringPhysicianName']);

function naturalized(m: Record<string, string | number | null>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(m)) {
    if (v === null) out[k] = '';
    else if (PN_KEYS.has(k)) {
      const [a = '', i = '', p = ''] = String(v).split('=');
      out[k] = [{ Alphabetic: a, ...(i ? { Ideographic: i } : {}), ...(p ? { Phonetic: p } : {}) }];
    } else if (k === 'ModalitiesInStudy') out[k] = String(v).split('\\');
    else out[k] = typeof v === 'number' ? String(v) : v;
  }
  return out;
}
