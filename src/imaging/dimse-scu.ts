// medmesh as a DIMSE service user: C-ECHO, C-FIND and C-MOVE against a remote AE (a
// hospital PACS for active collection), each call one association, with a time limit.
import dimse from './dimse.ts';
import { TS } from './dicom-structure.ts';

const { Client } = dimse;
const { CEchoRequest, CFindRequest, CMoveRequest } = dimse.requests;
const { Status } = dimse.constants;

export interface DicomPeer {
  aeTitle: string;
  host: string;
  port: number;
}

export interface ScuOptions {
  /** Our AE title as the calling AE. */
  callingAe: string;
  /** Whole-operation limit (default 60 s). */
  timeoutMs?: number;
}

export type ScuResult<T> = { ok: true; value: T } | { ok: false; error: string };

type Req = InstanceType<typeof CFindRequest> | InstanceType<typeof CMoveRequest> | InstanceType<typeof CEchoRequest>;
interface Resp {
  getStatus(): number;
  getDataset(): { getElements(): Record<string, unknown> } | undefined;
  getCompleted?(): number;
  getFailures?(): number;
  getWarnings?(): number;
  getRemaining?(): number;
}

/** Runs one request on its own association; collects every response until the final one. */
function exchange(peer: DicomPeer, o: ScuOptions, request: Req): Promise<ScuResult<Resp[]>> {
  return new Promise((resolve) => {
    const responses: Resp[] = [];
    const client = new Client();
    let settled = false;
    const finish = (r: ScuResult<Resp[]>) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(r);
    };
    const timer = setTimeout(
      () =>
        finish({
          ok: false,
          error: `${peer.aeTitle} at ${peer.host}:${peer.port} did not answer within ${(o.timeoutMs ?? 60_000) / 1000} s`,
        }),
      o.timeoutMs ?? 60_000,
    );
    request.on('response', (r: Resp) => {
      responses.push(r);
      if (r.getStatus() !== Status.Pending) finish({ ok: true, value: responses });
    });
    client.on('associationRejected', (e: { result: number; source: number; reason: number }) =>
      finish({
        ok: false,
        error: `${peer.aeTitle} rejected the association (result ${e.result}, source ${e.source}, reason ${e.reason})`,
      }),
    );
    client.on('networkError', (e: Error) =>
      finish({ ok: false, error: `${peer.aeTitle} at ${peer.host}:${peer.port}: ${e.message}` }),
    );
    client.on('closed', () =>
      finish(
        responses.length
          ? { ok: true, value: responses }
          : { ok: false, error: `${peer.aeTitle} closed the association without answering` },
      ),
    );
    client.addRequest(request);
    send(client, peer, o, finish);
  });
}

export async function cEcho(peer: DicomPeer, o: ScuOptions): Promise<ScuResult<void>> {
  const r = await exchange(peer, o, new CEchoRequest());
  if (!r.ok) return r;
  const status = r.value.at(-1)!.getStatus();
  return status === Status.Success
    ? { ok: true, value: undefined }
    : { ok: false, error: `C-ECHO answered status 0x${status.toString(16)}` };
}

/** C-FIND at study level (study root): each match's attributes, naturalized. */
export async function cFindStudies(
  peer: DicomPeer,
  o: ScuOptions,
  keys: Record<string, unknown>,
): Promise<ScuResult<Array<Record<string, unknown>>>> {
  const r = await exchange(peer, o, CFindRequest.createStudyFindRequest(keys));
  if (!r.ok) return r;
  const final = r.value.at(-1)!.getStatus();
  if (final !== Status.Success) return { ok: false, error: `C-FIND ended with status 0x${final.toString(16)}` };
  return {
    ok: true,
    value: r.value.filter((x) => x.getStatus() === Status.Pending).map((x) => x.getDataset()?.getElements() ?? {}),
  };
}

export interface MoveOutcome {
  completed: number;
  failed: number;
  warnings: number;
  status: number;
}

/** C-MOVE of a whole study to `destinationAe` (which the peer must know). */
export async function cMoveStudy(
  peer: DicomPeer,
  o: ScuOptions,
  destinationAe: string,
  studyInstanceUid: string,
): Promise<ScuResult<MoveOutcome>> {
  const r = await exchange(peer, o, CMoveRequest.createStudyMoveRequest(destinationAe, studyInstanceUid));
  if (!r.ok) return r;
  const last = r.value.at(-1)!;
  const status = last.getStatus();
  const outcome = {
    completed: last.getCompleted?.() ?? 0,
    failed: last.getFailures?.() ?? 0,
    warnings: last.getWarnings?.() ?? 0,
    status,
  };
  if (status !== Status.Success && status !== 0xb000)
    return {
      ok: false,
      error:
        `C-MOVE of ${studyInstanceUid} ended with status 0x${status.toString(16)} ` +
        `(${outcome.completed} moved, ${outcome.failed} failed)`,
    };
  return { ok: true, value: outcome };
}

const { Dataset } = dimse;
const { CStoreRequest } = dimse.requests;

/**
 * A data set sent as the bytes medmesh holds. dcmjs-dimse re-encodes data sets from parsed
 * elements; this one hands over the stored bytes unless the peer accepted another transfer
 * syntax, in which case the parsed elements are converted (between uncompressed syntaxes
 * only: compressed data is never transcoded, the sub-operation fails instead).
 */
class StoredDataset extends Dataset {
  readonly #raw: Buffer;

  constructor(raw: Buffer, transferSyntaxUid: string, elements: Record<string, unknown>) {
    super(elements, transferSyntaxUid);
    // A deflated data set may be of odd length; on the wire it is padded to even length
    // (PS3.5 A.5), or DCMTK refuses the odd fragment and aborts the association.
    this.#raw = raw.length % 2 ? Buffer.concat([raw, Buffer.alloc(1)]) : raw;
  }

  override getDenaturalizedDataset(): Buffer {
    return this.#raw;
  }
}

export interface StoredFile {
  file: Buffer;
  sopClassUid: string;
  sopInstanceUid: string;
  transferSyntaxUid: string;
  /** Where the data set starts (after the File Meta group). */
  datasetOffset: number;
}

const UID = /^[0-9]+(\.[0-9]+)*$/;
/** Transfer syntaxes dcmjs can parse (and so convert between); anything else is sent as held or not at all. */
const PARSEABLE = new Set<string>([TS.implicitLE, TS.explicitLE, TS.explicitBE]);

/**
 * A C-STORE request carrying a stored file's data set (for C-MOVE and C-GET sub-operations
 * too), or why it cannot be sent. Its SOP class, instance and transfer syntax are the index's,
 * never what a parse of the bytes yields: dcmjs reads a deflated or compressed data set as
 * garbage without failing, and a request without its SOP class throws inside dcmjs-dimse's
 * event handlers, out of reach of any caller (the process ends).
 */
export function storeRequestFor(f: StoredFile): ScuResult<InstanceType<typeof CStoreRequest>> {
  for (const [name, uid] of [
    ['SOP Class UID', f.sopClassUid],
    ['SOP Instance UID', f.sopInstanceUid],
    ['transfer syntax', f.transferSyntaxUid],
  ] as const)
    if (typeof uid !== 'string' || !UID.test(uid) || uid.length > 64)
      return { ok: false, error: `instance ${f.sopInstanceUid}: its ${name} ${JSON.stringify(uid)} is not a UID` };
  const identity = { SOPClassUID: f.sopClassUid, SOPInstanceUID: f.sopInstanceUid };
  // Parsed elements only matter if the peer forces a conversion between uncompressed syntaxes.
  let elements: Record<string, unknown> = identity;
  if (PARSEABLE.has(f.transferSyntaxUid)) {
    try {
      elements = { ...new Dataset(f.file.subarray(f.datasetOffset), f.transferSyntaxUid).getElements(), ...identity };
    } catch {
      // keep the identifying elements (no conversion is possible then)
    }
  }
  try {
    return {
      ok: true,
      value: new CStoreRequest(new StoredDataset(f.file.subarray(f.datasetOffset), f.transferSyntaxUid, elements)),
    };
  } catch (e) {
    return { ok: false, error: `instance ${f.sopInstanceUid}: ${e instanceof Error ? e.message : String(e)}` };
  }
}

/**
 * Calls back once with how a C-STORE ended: stored, stored with a warning (Bxxx), or failed
 * (an error status, or never sent because no presentation context took its transfer syntax).
 */
export function onStoreSettled(
  request: InstanceType<typeof CStoreRequest>,
  settled: (r: { kind: 'stored' | 'warning' | 'failed'; status?: number }) => void,
): void {
  let status: number | undefined;
  request.on('response', (r: Resp) => {
    status = r.getStatus();
  });
  request.on('done', () => {
    if (status === undefined) settled({ kind: 'failed' });
    else if (status === Status.Success) settled({ kind: 'stored', status });
    else if ((status & 0xf000) === 0xb000) settled({ kind: 'warning', status });
    else settled({ kind: 'failed', status });
  });
}

export interface StoreOutcome {
  completed: number;
  failed: Array<{ sopInstanceUid: string; error: string }>;
  warnings: number;
}

/** C-STORE of stored Part 10 files to a peer, on one association. */
export function cStoreFiles(peer: DicomPeer, o: ScuOptions, files: StoredFile[]): Promise<ScuResult<StoreOutcome>> {
  return new Promise((resolve) => {
    const outcome: StoreOutcome = { completed: 0, failed: [], warnings: 0 };
    /** Sub-operations sent and not yet answered: failed if the association ends first. */
    const unsettled = new Map<string, string>();
    /** Why the sub-operations still unanswered failed, when the association ended early. */
    let lost: string | undefined;
    const client = new Client();
    let settled = false;
    const finish = (r: ScuResult<StoreOutcome>) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      for (const [sopInstanceUid, ts] of unsettled)
        outcome.failed.push({
          sopInstanceUid,
          error: lost ?? `not sent: ${peer.aeTitle} accepted no presentation context for it in ${ts}`,
        });
      unsettled.clear();
      resolve(r);
    };
    const timer = setTimeout(
      () =>
        finish({
          ok: false,
          error: `${peer.aeTitle} did not take ${unsettled.size} instance(s) within ${(o.timeoutMs ?? 600_000) / 1000} s`,
        }),
      o.timeoutMs ?? 600_000,
    );
    for (const f of files) {
      const request = storeRequestFor(f);
      if (!request.ok) {
        outcome.failed.push({ sopInstanceUid: f.sopInstanceUid, error: request.error });
        continue;
      }
      unsettled.set(f.sopInstanceUid, f.transferSyntaxUid);
      onStoreSettled(request.value, (result) => {
        if (!unsettled.delete(f.sopInstanceUid)) return;
        if (result.kind === 'failed')
          outcome.failed.push({
            sopInstanceUid: f.sopInstanceUid,
            error:
              result.status === undefined
                ? `not sent: ${peer.aeTitle} accepted no presentation context for it in ${f.transferSyntaxUid}`
                : `status 0x${result.status.toString(16)}`,
          });
        else outcome.completed++;
        if (result.kind === 'warning') outcome.warnings++;
      });
      client.addRequest(request.value);
    }
    if (!unsettled.size) return finish({ ok: true, value: outcome });
    client.on('associationRejected', (e: { result: number; source: number; reason: number }) =>
      finish({
        ok: false,
        error: `${peer.aeTitle} rejected the association (result ${e.result}, source ${e.source}, reason ${e.reason})`,
      }),
    );
    client.on('networkError', (e: Error) =>
      finish({ ok: false, error: `${peer.aeTitle} at ${peer.host}:${peer.port}: ${e.message}` }),
    );
    client.on('closed', () => finish({ ok: true, value: outcome }));
    send(client, peer, o, finish, () => {
      lost = `${peer.aeTitle} aborted the association`;
      finish({ ok: true, value: outcome });
    });
  });
}

/** The part of dcmjs-dimse's Client internals that medmesh reaches into (dcmjs-dimse is pinned exactly for it). */
interface ClientNetwork {
  on(event: 'abort', listener: () => void): void;
  socket: { destroy(): void };
}

/**
 * Opens the association; a request dcmjs-dimse cannot encode is a failure here, not an
 * exception in its event handlers. An A-ABORT from the peer closes the connection at once
 * (PS3.8 7.3.2): dcmjs-dimse's Client ignores it, and a DCMTK peer then waits 30 s for the
 * close while this side waits for an answer that will not come.
 */
function send(
  client: InstanceType<typeof Client>,
  peer: DicomPeer,
  o: ScuOptions,
  fail: (r: { ok: false; error: string }) => void,
  aborted: () => void = () => fail({ ok: false, error: `${peer.aeTitle} aborted the association` }),
) {
  try {
    client.send(peer.host, peer.port, o.callingAe, peer.aeTitle);
  } catch (e) {
    return fail({
      ok: false,
      error: `${peer.aeTitle}: the association could not be opened: ${e instanceof Error ? e.message : String(e)}`,
    });
  }
  const network = (client as unknown as { network?: ClientNetwork }).network;
  if (!network || typeof network.on !== 'function' || typeof network.socket?.destroy !== 'function')
    throw new Error('dcmjs-dimse: Client.network is not what medmesh expects (an incompatible version?)');
  network.on('abort', () => {
    aborted();
    network.socket.destroy();
  });
}
