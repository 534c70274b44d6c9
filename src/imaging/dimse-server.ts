// The site's DIMSE service class provider (DESIGN.md §9): C-ECHO, C-STORE (every storage SOP
// class, the transfer syntax kept as sent), C-FIND at patient/study/series/image level, C-MOVE
// and C-GET. Calling AEs are identities: known AEs (the region file's or the site's list) may
// be required, every association and operation is audited before it is answered, and the
// number of concurrent associations is bounded. No peer can end the process: an error inside
// an operation is answered with a failure status, one on the association (a malformed PDU, a
// silent peer) aborts it, an A-ABORT from the peer closes the connection at once, and each is
// counted (DimseMetrics).
import { createServer, type Server as NetServer, type Socket } from 'node:net';
import { PassThrough, Writable } from 'node:stream';
import dimse from './dimse.ts';
import type { AuditEvent } from '../security/audit/index.ts';
import type { Logger } from '../common/index.ts';
import type { ImagingStore, IngestOutcome } from './imaging-store.ts';
import { storeFailureStatus, type ImagingResult } from './errors.ts';
import { part10File } from './part10.ts';
import { onStoreSettled, storeRequestFor } from './dimse-scu.ts';
import { finalResponse, negotiate } from './dimse-datasets.ts';
import {
  answerFind,
  answerGet,
  answerMove,
  FIND_UNABLE_TO_PROCESS,
  MOVE_UNABLE_TO_PROCESS,
  type FindRequest,
  type GetRequest,
  type MoveRequest,
  type OperationContext,
} from './dimse-query-retrieve.ts';
import { DimseMetrics, type DimseErrorKind } from './dimse-metrics.ts';

const { Scp, Dataset } = dimse;
const { CEchoResponse, CFindResponse, CGetResponse, CMoveResponse, CStoreResponse } = dimse.responses;
const { Status, RejectResult, RejectSource, RejectReason, TransferSyntax, AbortSource, AbortReason } = dimse.constants;
type DimseDataset = InstanceType<typeof Dataset>;
type Association = Parameters<InstanceType<typeof Scp>['associationRequested']>[0];
type StoreRequest = Parameters<InstanceType<typeof Scp>['cStoreRequest']>[0];
/** An ingestion as a value: a thrown error (the index unreachable, the association gone) is kept as `thrown`. */
type Stored = ImagingResult<IngestOutcome> | { ok: false; thrown: unknown };
/** A C-STORE data set as it arrives: in memory while small, else streaming into the store. */
interface Incoming {
  chunks: Buffer[];
  bytes: number;
  overflow: boolean;
  feed?: PassThrough;
  result?: Promise<Stored>;
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
  /** Where failures of the site's own making are told (a store that cannot keep an instance); default: none. */
  log?: Logger;
}

/** Status codes medmesh answers with (PS3.4 Annex B and C). */
const STORE_OUT_OF_RESOURCES = 0xa700;

export interface DimseServer {
  port: number;
  activeAssociations(): number;
  /** Associations, aborts and contained errors, for /metrics. */
  metrics: DimseMetrics;
  close(): Promise<void>;
}

/** How long a connection this site aborted may take to close on its side before it is dropped. */
const ABORT_GRACE_MS = 2000;

export async function startDimseServer(o: DimseServerOptions): Promise<DimseServer> {
  const max = o.maxAssociations ?? 16;
  let active = 0;
  const sockets = new Set<Socket>();
  const metrics = new DimseMetrics(() => active);
  const ScpClass = scpFor(o, metrics, {
    tryEnter: () => (active < max ? (active++, true) : false),
    leave: () => void active--,
  });
  const server: NetServer = createServer((socket) => {
    sockets.add(socket);
    socket.setNoDelay(true);
    socket.on('close', () => sockets.delete(socket));
    try {
      new ScpClass(socket, { associationTimeout: 30_000, pduTimeout: 60_000 });
    } catch (e) {
      metrics.error('network', e);
      socket.destroy();
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host ?? '127.0.0.1', () => resolve());
  });
  // After listening, a failed accept (too many open files) is counted; the server goes on.
  server.on('error', (e) => metrics.error('network', e));
  const address = server.address();
  return {
    port: typeof address === 'object' && address ? address.port : o.port,
    activeAssociations: () => active,
    metrics,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

function scpFor(o: DimseServerOptions, metrics: DimseMetrics, slots: { tryEnter: () => boolean; leave: () => void }) {
  const refuseUnknown = o.refuseUnknownAes ?? true;
  /** An audit entry that could not be written is a refusal, never an exception. */
  const audit = (e: AuditEvent) => o.audit(e).catch(() => false);
  const message = (e: unknown) => (e instanceof Error ? e.message : String(e));
  return class MedmeshScp extends Scp {
    #calling = '';
    #peer = '';
    #entered = false;
    readonly #socket: Socket;
    #association: Association | undefined;
    /** C-STORE data sets as they arrive, per request. */
    readonly #incoming = new WeakMap<object, Incoming>();
    /** Data sets streaming into the store: ended with an error if the association ends first. */
    readonly #feeds = new Set<PassThrough>();
    /** C-GET sub-operations awaiting their answer: failed if the association ends first. */
    readonly #subops = new Set<() => void>();
    /** What C-FIND, C-MOVE and C-GET need of this association (dimse-query-retrieve.ts). */
    readonly #operations: OperationContext = {
      o,
      audit,
      event: (action, outcome, extra) => this.#event(action, outcome, extra),
      subStore: (f, counts, why) => this.#subStore(f, counts, why),
      closed: () => this.#socket.destroyed,
    };

    constructor(socket: Socket, opts: ConstructorParameters<typeof Scp>[1]) {
      super(socket, opts);
      this.#socket = socket;
      this.#peer = socket.remoteAddress ?? '';
      socket.once('close', () => {
        if (this.#entered) slots.leave();
        this.#entered = false;
        for (const feed of this.#feeds) feed.destroy(new Error('the association ended before the data set did'));
        this.#feeds.clear();
        for (const fail of [...this.#subops]) fail();
        this.#subops.clear();
      });
      // dcmjs-dimse reports a malformed PDU, a socket error or a silent peer here and leaves the
      // connection open: this site aborts the association and closes it.
      this.on('networkError', (e: Error) => this.#abortAssociation('network', e));
    }

    /** Counted, the peer told (A-ABORT), the connection closed (dropped if the peer does not close its side). */
    #abortAssociation(kind: DimseErrorKind, e: unknown): void {
      metrics.error(kind, e);
      if (this.#socket.destroyed) return;
      metrics.aborted('site');
      try {
        if (this.#association) this.sendAbort(AbortSource.ServiceProvider, AbortReason.NotSpecified);
      } catch {
        // the connection is going anyway
      }
      this.#socket.end();
      setTimeout(() => this.#socket.destroy(), ABORT_GRACE_MS).unref();
    }

    /**
     * Runs an operation's handler; whatever it throws (now or later) is counted and answered with
     * `fail`, and if even that fails, the association is aborted.
     */
    #contain(fail: (comment: string) => void, run: () => Promise<void> | void): void {
      const failed = (e: unknown) => {
        metrics.error('operation', e);
        try {
          fail(message(e));
        } catch (again) {
          this.#abortAssociation('operation', again);
        }
      };
      try {
        const p = run();
        if (p) p.catch(failed);
      } catch (e) {
        failed(e);
      }
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

    override associationRequested(association: Association): void {
      const rejectWith = (result: number, source: number, reason: number) => {
        metrics.association('rejected');
        this.sendAssociationReject(result, source, reason);
      };
      this.#contain(
        () => rejectWith(RejectResult.Transient, RejectSource.ServiceUser, RejectReason.NoReasonGiven),
        () => this.#associate(association, rejectWith),
      );
    }

    async #associate(
      association: Association,
      rejectWith: (result: number, source: number, reason: number) => void,
    ): Promise<void> {
      this.#association = association;
      this.#calling = association.getCallingAeTitle().trim();
      const called = association.getCalledAeTitle().trim();
      const reject = async (result: number, source: number, reason: number, why: string) => {
        await audit(this.#event('dicom-associate', 'deny', { detail: why }));
        rejectWith(result, source, reason);
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
      negotiate(association);
      if (!(await audit(this.#event('dicom-associate', 'allow'))))
        return rejectWith(RejectResult.Transient, RejectSource.ServiceProviderPresentation, RejectReason.TemporaryCongestion);
      metrics.association('accepted');
      this.sendAssociationAccept();
    }

    override abort(): void {
      // The peer aborted (PS3.8 7.3.2): the connection is closed at once, so the peer does not
      // wait out its own timer for it; the slot and any data set in flight are freed on close.
      metrics.aborted('peer');
      this.#socket.destroy();
    }

    override associationReleaseRequested(): void {
      this.#contain(
        (e) => this.#abortAssociation('operation', e),
        () => this.sendAssociationReleaseResponse(),
      );
    }

    override cEchoRequest(
      request: Parameters<InstanceType<typeof Scp>['cEchoRequest']>[0],
      callback: (r: InstanceType<typeof CEchoResponse>) => void,
    ): void {
      const response = CEchoResponse.fromRequest(request);
      const answer = (status: number) => {
        response.setStatus(status);
        callback(response);
      };
      this.#contain(
        () => answer(Status.ProcessingFailure),
        async () => answer((await audit(this.#event('dicom-echo', 'success'))) ? Status.Success : Status.ProcessingFailure),
      );
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
      const feeds = this.#feeds;
      // A feed ended early (the association gone) takes nothing more and holds nothing up.
      const pass = (feed: PassThrough, chunk: Buffer, done: () => void) => {
        if (feed.destroyed || feed.write(chunk)) return done();
        const go = () => {
          feed.off('drain', go).off('close', go);
          done();
        };
        feed.on('drain', go).on('close', go);
      };
      return new Writable({
        write(chunk: Buffer, _enc, done) {
          slot.bytes += chunk.length;
          if (slot.feed) return pass(slot.feed, chunk, () => done());
          if (slot.bytes > streamAbove) {
            // A large instance: from here on it streams into the store (checked, hashed and
            // encrypted on the way) behind the File Meta group built from the command. The
            // ingestion has its handler from the start: it may fail (the blob store) while the
            // sender is still sending, long before the request is answered.
            const feed = new PassThrough();
            feed.on('error', () => undefined); // seen by the ingestion reading it
            feeds.add(feed);
            slot.feed = feed;
            slot.result = settle(o.store.ingestStream(feed, { source: `ae:${calling}` })).finally(() => feeds.delete(feed));
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
          if (slot.feed && !slot.feed.destroyed) slot.feed.end();
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
      let answered = false;
      const answer = (status: number, comment?: string) => {
        if (answered) return;
        answered = true;
        response.setStatus(status);
        if (comment) response.setErrorComment(comment.slice(0, 64));
        callback(response);
      };
      const slot = this.#incoming.get(request);
      this.#incoming.delete(request);
      const sopInstanceUid = request.getAffectedSopInstanceUid();
      const resource = `dicom:instance/${sopInstanceUid}`;
      // Whatever happens to a streamed data set, its ingestion is waited for (its blob removed).
      const stream = slot?.result;
      this.#contain(
        (comment) => void (stream ?? Promise.resolve()).finally(() => answer(Status.ProcessingFailure, comment)),
        async () => {
          if (!slot || slot.overflow) {
            await audit(this.#event('dicom-store', 'failure', { resource, detail: 'larger than this site accepts' }));
            return answer(STORE_OUT_OF_RESOURCES, 'instance larger than this site accepts');
          }
          const ts = request.getDataset()?.getTransferSyntaxUid() ?? TransferSyntax.ImplicitVRLittleEndian;
          const r = await (stream ??
            settle(
              o.store.ingest(
                part10File(
                  {
                    sopClassUid: request.getAffectedSopClassUid(),
                    sopInstanceUid,
                    transferSyntaxUid: ts,
                    sourceAe: this.#calling,
                  },
                  slot.chunks,
                ),
                { source: `ae:${this.#calling}` },
              ),
            ));
          if ('thrown' in r) {
            // The index or the association failed under the store: counted, answered, not thrown.
            metrics.error('operation', r.thrown);
            await audit(this.#event('dicom-store', 'failure', { resource, detail: message(r.thrown) }));
            return answer(Status.ProcessingFailure, 'the site could not store the instance');
          }
          const logged = await audit(
            this.#event('dicom-store', r.ok ? 'success' : 'failure', {
              resource,
              ...(r.ok ? { detail: r.value.status } : { detail: r.error.message }),
            }),
          );
          if (!r.ok) {
            // The site's own failure (not the sender's): counted and logged, beside the failure status.
            if (r.error.kind === 'storage-failed' || r.error.kind === 'sealed') {
              metrics.error('storage', r.error.message);
              o.log?.warn({ calling: this.#calling, resource }, `C-STORE from ${this.#calling} not kept: ${r.error.message}`);
            }
            return answer(storeFailureStatus(r.error.kind), r.error.message);
          }
          answer(logged ? Status.Success : Status.ProcessingFailure);
        },
      );
    }

    override cFindRequest(request: FindRequest, callback: (r: Array<InstanceType<typeof CFindResponse>>) => void): void {
      const fail = (status: number, comment: string) => {
        const r = CFindResponse.fromRequest(request);
        r.setStatus(status);
        r.setErrorComment(comment.slice(0, 64));
        callback([r]);
      };
      this.#contain(
        (comment) => fail(FIND_UNABLE_TO_PROCESS, comment),
        () => answerFind(this.#operations, request, fail, callback),
      );
    }

    override cMoveRequest(request: MoveRequest, callback: (r: Array<InstanceType<typeof CMoveResponse>>) => void): void {
      // dcmjs-dimse takes the responses through one callback call: no pending responses, the final one only.
      const respond = finalResponse(() => CMoveResponse.fromRequest(request), callback);
      this.#contain(
        (comment) => respond(MOVE_UNABLE_TO_PROCESS, {}, comment),
        () => answerMove(this.#operations, request, respond),
      );
    }

    override cGetRequest(request: GetRequest, callback: (r: Array<InstanceType<typeof CGetResponse>>) => void): void {
      const respond = finalResponse(() => CGetResponse.fromRequest(request), callback);
      this.#contain(
        (comment) => respond(MOVE_UNABLE_TO_PROCESS, {}, comment),
        () => answerGet(this.#operations, request, respond),
      );
    }

    /**
     * One C-GET sub-operation on this association. dcmjs-dimse drops a request no accepted
     * presentation context can carry without ever settling it, so that is checked first (the
     * caller proposed no context for the SOP class); one still unanswered when the association
     * ends is failed.
     */
    #subStore(
      f: Parameters<typeof storeRequestFor>[0],
      counts: { completed: number; failed: number; warnings: number },
      why: string[],
    ): Promise<void> {
      return new Promise<void>((resolve) => {
        const sub = storeRequestFor(f);
        if (!sub.ok) {
          counts.failed++;
          why.push(sub.error);
          return resolve();
        }
        if (!this.#association?.getAcceptedPresentationContextFromRequest(sub.value)) {
          counts.failed++;
          why.push(`no presentation context accepted for SOP class ${f.sopClassUid}`);
          return resolve();
        }
        let settled = false;
        const settle = (kind: 'stored' | 'warning' | 'failed') => {
          if (settled) return;
          settled = true;
          this.#subops.delete(lost);
          if (kind === 'failed') counts.failed++;
          else counts.completed++;
          if (kind === 'warning') counts.warnings++;
          resolve();
        };
        const lost = () => settle('failed');
        this.#subops.add(lost);
        onStoreSettled(sub.value, (r) => {
          if (r.kind === 'failed' && r.status === undefined)
            why.push(`instance ${f.sopInstanceUid} could not be sent in ${f.transferSyntaxUid} (medmesh does not transcode it)`);
          settle(r.kind);
        });
        this.sendRequests(sub.value);
      });
    }
  };
}

/** An ingestion whose rejection is kept as a value: handled from the moment it exists. */
function settle(p: Promise<ImagingResult<IngestOutcome>>): Promise<Stored> {
  return p.then(
    (r) => r,
    (thrown: unknown) => ({ ok: false as const, thrown }),
  );
}
