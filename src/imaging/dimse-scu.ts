// medmesh as a DIMSE service user: C-ECHO, C-FIND and C-MOVE against a remote AE (a
// hospital PACS for active collection), each call one association, with a time limit.
import dimse from './dimse.ts';

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
    client.send(peer.host, peer.port, o.callingAe, peer.aeTitle);
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
      error: `C-MOVE of ${studyInstanceUid} ended with status 0x${status.toString(16)} (${outcome.completed} moved, ${outcome.failed} failed)`,
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
    this.#raw = raw;
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

/** A C-STORE request carrying a stored file's data set (for C-MOVE and C-GET sub-operations too). */
export function storeRequestFor(f: StoredFile): InstanceType<typeof CStoreRequest> {
  // Parsed elements only matter if the peer forces a conversion; parsing may fail for data
  // dcmjs cannot read (then only the identifying elements are there, and no conversion works).
  let elements: Record<string, unknown> = { SOPClassUID: f.sopClassUid, SOPInstanceUID: f.sopInstanceUid };
  try {
    elements = new Dataset(f.file.subarray(f.datasetOffset), f.transferSyntaxUid).getElements();
  } catch {
    // keep the identifying elements
  }
  return new CStoreRequest(new StoredDataset(f.file.subarray(f.datasetOffset), f.transferSyntaxUid, elements));
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
    let pending = files.length;
    const client = new Client();
    let settled = false;
    const finish = (r: ScuResult<StoreOutcome>) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(r);
    };
    const timer = setTimeout(
      () =>
        finish({
          ok: false,
          error: `${peer.aeTitle} did not take ${pending} instance(s) within ${(o.timeoutMs ?? 600_000) / 1000} s`,
        }),
      o.timeoutMs ?? 600_000,
    );
    for (const f of files) {
      const request = storeRequestFor(f);
      onStoreSettled(request, (result) => {
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
        pending--;
      });
      client.addRequest(request);
    }
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
    client.send(peer.host, peer.port, o.callingAe, peer.aeTitle);
  });
}
