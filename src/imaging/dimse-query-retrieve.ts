// C-FIND, C-MOVE and C-GET of the DIMSE provider (dimse-server.ts runs them under its
// containment): the query matched against the index, retrievals audited before anything is
// sent, the outcome of every sub-operation counted and audited after.
import dimse from './dimse.ts';
import type { AuditEvent } from '../security/audit/index.ts';
import { findImaging, type QueryLevel } from './imaging-query.ts';
import type { ImagingStore } from './imaging-store.ts';
import { cStoreFiles, type storeRequestFor } from './dimse-scu.ts';
import { dicomString, filesFor, naturalized, retrieveKeys } from './dimse-datasets.ts';

const { Dataset } = dimse;
type Scp = InstanceType<typeof dimse.Scp>;
const { CFindResponse } = dimse.responses;
const { Status } = dimse.constants;
export type FindRequest = Parameters<Scp['cFindRequest']>[0];
export type MoveRequest = Parameters<Scp['cMoveRequest']>[0];
export type GetRequest = Parameters<Scp['cGetRequest']>[0];

/** Status codes medmesh answers with (PS3.4 Annex C). */
export const FIND_UNABLE_TO_PROCESS = 0xc000;
export const FIND_IDENTIFIER_MISMATCH = 0xa900;
export const MOVE_DESTINATION_UNKNOWN = 0xa801;
export const MOVE_SUBOPS_FAILED = 0xb000;
export const MOVE_UNABLE_TO_PROCESS = 0xc000;

/** What an operation needs of its association. */
export interface OperationContext {
  o: { store: ImagingStore; aeTitle: string; remoteAes?: Record<string, { host: string; port: number }> };
  /** Appends an audit entry; false when it could not be written (the operation is then refused). */
  audit(e: AuditEvent): Promise<boolean>;
  event(action: string, outcome: AuditEvent['outcome'], extra?: Partial<AuditEvent>): AuditEvent;
  /** One C-STORE sub-operation back to the caller (C-GET). */
  subStore(
    f: Parameters<typeof storeRequestFor>[0],
    counts: { completed: number; failed: number; warnings: number },
    why: string[],
  ): Promise<void>;
  /** The association's connection is gone. */
  closed(): boolean;
}

type Respond = (status: number, counts: { completed?: number; failed?: number; warnings?: number }, comment?: string) => void;

export async function answerFind(
  ctx: OperationContext,
  request: FindRequest,
  fail: (status: number, comment: string) => void,
  callback: (r: Array<InstanceType<typeof CFindResponse>>) => void,
): Promise<void> {
  const elements = request.getDataset()?.getElements() ?? {};
  const level = dicomString(elements.QueryRetrieveLevel).trim().toUpperCase();
  if (!['PATIENT', 'STUDY', 'SERIES', 'IMAGE'].includes(level))
    return fail(FIND_IDENTIFIER_MISMATCH, `QueryRetrieveLevel ${level || '(none)'} is not PATIENT, STUDY, SERIES or IMAGE`);
  const keys: Record<string, string> = {};
  for (const [k, v] of Object.entries(elements)) {
    if (k === 'QueryRetrieveLevel' || k === 'SpecificCharacterSet' || k === '_vrMap') continue;
    keys[k] = dicomString(v);
  }
  const found = await findImaging(ctx.o.store.db, level as QueryLevel, keys);
  if (!found.ok) {
    await ctx.audit(ctx.event('dicom-find', 'failure', { detail: found.error }));
    return fail(FIND_UNABLE_TO_PROCESS, found.error);
  }
  const logged = await ctx.audit(
    ctx.event('dicom-find', 'success', { detail: `${level} ${JSON.stringify(keys)} -> ${found.value.length}` }),
  );
  if (!logged) return fail(Status.ProcessingFailure, 'the audit log cannot record this query');
  const responses = found.value.map((m) => {
    const r = CFindResponse.fromRequest(request);
    r.setDataset(
      new Dataset({
        SpecificCharacterSet: 'ISO_IR 192',
        QueryRetrieveLevel: level,
        RetrieveAETitle: ctx.o.aeTitle,
        ...naturalized(m),
      }),
    );
    r.setStatus(Status.Pending);
    return r;
  });
  const done = CFindResponse.fromRequest(request);
  done.setStatus(Status.Success);
  callback([...responses, done]);
}

export async function answerMove(ctx: OperationContext, request: MoveRequest, respond: Respond): Promise<void> {
  const destination = (request.getCommandDataset().getElement('MoveDestination') ?? '').trim();
  const keys = retrieveKeys(request.getDataset()?.getElements() ?? {});
  const resource = keys.StudyInstanceUID ? { resource: `dicom:study/${keys.StudyInstanceUID}` } : {};
  const target = ctx.o.remoteAes?.[destination];
  if (!target) {
    await ctx.audit(
      ctx.event('dicom-move', 'failure', {
        ...resource,
        detail: `move destination ${destination || '(none)'} is not known`,
      }),
    );
    return respond(MOVE_DESTINATION_UNKNOWN, {}, `move destination ${destination} is not known`);
  }
  if (!Object.keys(keys).length) return respond(FIND_IDENTIFIER_MISMATCH, {}, 'no Study, Series or SOP Instance UID to move');
  const gathered = await filesFor(ctx.o.store, keys);
  if (!gathered.ok) return respond(MOVE_UNABLE_TO_PROCESS, {}, gathered.error);
  const { files, failed } = gathered;
  const logged = await ctx.audit(
    ctx.event('dicom-move', 'allow', {
      ...resource,
      detail: `${files.length + failed.length} instance(s) to ${destination}`,
    }),
  );
  if (!logged) return respond(Status.ProcessingFailure, {}, 'the audit log cannot record this retrieval');
  const sent = files.length
    ? await cStoreFiles({ aeTitle: destination, ...target }, { callingAe: ctx.o.aeTitle }, files)
    : { ok: true as const, value: { completed: 0, failed: [], warnings: 0 } };
  const completed = sent.ok ? sent.value.completed : 0;
  const failures = failed.length + (sent.ok ? sent.value.failed.length : files.length);
  const why = sent.ok ? sent.value.failed[0]?.error : sent.error;
  await ctx.audit(
    ctx.event('dicom-move', failures ? 'failure' : 'success', {
      ...resource,
      detail: `${completed} sent to ${destination}, ${failures} failed${why ? `: ${why}` : ''}`,
    }),
  );
  respond(
    failures ? MOVE_SUBOPS_FAILED : Status.Success,
    { completed, failed: failures, warnings: sent.ok ? sent.value.warnings : 0 },
    why,
  );
}

export async function answerGet(ctx: OperationContext, request: GetRequest, respond: Respond): Promise<void> {
  const keys = retrieveKeys(request.getDataset()?.getElements() ?? {});
  const resource = keys.StudyInstanceUID ? { resource: `dicom:study/${keys.StudyInstanceUID}` } : {};
  if (!Object.keys(keys).length) return respond(FIND_IDENTIFIER_MISMATCH, {}, 'no Study, Series or SOP Instance UID to get');
  const gathered = await filesFor(ctx.o.store, keys);
  if (!gathered.ok) return respond(MOVE_UNABLE_TO_PROCESS, {}, gathered.error);
  const logged = await ctx.audit(
    ctx.event('dicom-get', 'allow', {
      ...resource,
      detail: `${gathered.files.length + gathered.failed.length} instance(s)`,
    }),
  );
  if (!logged) return respond(Status.ProcessingFailure, {}, 'the audit log cannot record this retrieval');
  // The C-STORE sub-operations go back on this association, to the caller.
  const counts = { completed: 0, failed: gathered.failed.length, warnings: 0 };
  const why: string[] = [];
  await Promise.all(gathered.files.map((f) => ctx.subStore(f, counts, why)));
  await ctx.audit(
    ctx.event('dicom-get', counts.failed ? 'failure' : 'success', {
      ...resource,
      detail: `${counts.completed} sent, ${counts.failed} failed${why.length ? `: ${why[0]!}` : ''}`,
    }),
  );
  if (!ctx.closed()) respond(counts.failed ? MOVE_SUBOPS_FAILED : Status.Success, counts, why[0]);
}
