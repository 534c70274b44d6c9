// What the DIMSE provider accepts and answers with: the presentation contexts it takes,
// C-FIND matches as naturalized elements, the UIDs a retrieval names, the stored files it
// sends, and its one final response.
import dimse from './dimse.ts';
import { checkStructure } from './dicom-structure.ts';
import type { StoredFile } from './dimse-scu.ts';
import { findImaging } from './imaging-query.ts';
import type { ImagingStore } from './imaging-store.ts';

const { PresentationContextResult, TransferSyntax } = dimse.constants;
type Association = Parameters<InstanceType<typeof dimse.Scp>['associationRequested']>[0];
type Counts = { completed?: number; failed?: number; warnings?: number };

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

/** Which proposed presentation contexts this site accepts, and in which transfer syntax. */
export function negotiate(association: Association): void {
  for (const { id } of association.getPresentationContexts()) {
    const pc = association.getPresentationContext(id);
    const abstract = pc.getAbstractSyntaxUid();
    const offered = pc.getTransferSyntaxUids();
    if (abstract === UIDS.verification || QUERY_MODELS.has(abstract)) {
      const ts = [TransferSyntax.ExplicitVRLittleEndian, TransferSyntax.ImplicitVRLittleEndian].find((t) => offered.includes(t));
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
}

/** A responder that sends one final retrieve response, whatever path gets there first. */
export function finalResponse<
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
export function retrieveKeys(elements: Record<string, unknown>): Record<string, string> {
  const keys: Record<string, string> = {};
  for (const k of ['StudyInstanceUID', 'SeriesInstanceUID', 'SOPInstanceUID']) {
    const v = dicomString(elements[k]).trim();
    if (v) keys[k] = v;
  }
  return keys;
}

/** The stored files a retrieval names, read and checked; the ones that cannot be read are counted as failed. */
export async function filesFor(
  store: ImagingStore,
  keys: Record<string, string>,
): Promise<{ ok: true; files: StoredFile[]; failed: string[] } | { ok: false; error: string }> {
  const found = await findImaging(store.db, 'IMAGE', keys, { limit: 10_000 });
  if (!found.ok) return found;
  const files: StoredFile[] = [];
  const failed: string[] = [];
  for (const m of found.value) {
    const sop = String(m.SOPInstanceUID);
    const r = await store.read(sop);
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
export function dicomString(v: unknown): string {
  if (v === undefined || v === null) return '';
  if (Array.isArray(v)) return v.map(dicomString).join('\\');
  if (typeof v === 'object') {
    const pn = v as Record<string, string>;
    return [pn.Alphabetic ?? '', pn.Ideographic ?? '', pn.Phonetic ?? ''].join('=').replace(/=+$/, '');
  }
  return typeof v === 'string' || typeof v === 'number' ? String(v) : '';
}

const PN_KEYS = new Set(['PatientName', 'ReferringPhysicianName']);

export function naturalized(m: Record<string, string | number | null>): Record<string, unknown> {
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
