// The attributes medmesh indexes and answers queries with, read from a file that passed the
// structural check. Pixel data is not read: parsing stops at (7FE0,0010).
import dcmjs from 'dcmjs';
import { checkStructure, type Structure } from './dicom-structure.ts';

// dcmjs logs every oddity of real-world files to the console; the caller reports what matters.
dcmjs.log.setLevel('error');

/** The DICOM JSON model (PS3.18 F.2) of the header: tag -> { vr, Value }. */
export type DicomJson = Record<string, { vr: string; Value?: unknown[] }>;

export interface InstanceAttributes {
  transferSyntaxUid: string;
  sopClassUid: string;
  sopInstanceUid: string;
  studyInstanceUid: string;
  seriesInstanceUid: string;
  patientId: string | null;
  patientName: string | null;
  patientBirthDate: string | null;
  patientSex: string | null;
  studyDate: string | null;
  studyTime: string | null;
  accessionNumber: string | null;
  studyDescription: string | null;
  studyId: string | null;
  referringPhysicianName: string | null;
  modality: string | null;
  seriesNumber: number | null;
  seriesDescription: string | null;
  instanceNumber: number | null;
  numberOfFrames: number | null;
  rows: number | null;
  columns: number | null;
  specificCharacterSet: string | null;
  /** Header attributes (bulk data left out) for QIDO `includefield` and WADO-RS metadata. */
  json: DicomJson;
}

export type AttributesResult = { ok: true; value: InstanceAttributes } | { ok: false; error: string };

const BULK_VRS = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'UN']);
const UID = /^[0-9]+(\.[0-9]+)*$/;

/** Checks the file's structure, then reads its attributes; a refusal says what is wrong. */
export function readInstance(file: Uint8Array): AttributesResult {
  const structure = checkStructure(file);
  if (!structure.ok) return structure;
  return attributesOf(file, structure.value);
}

/**
 * The attributes of a file whose structure has been checked, from its first bytes: `head`
 * must reach the pixel data value (or hold the whole file when it has none).
 */
export function attributesOf(head: Uint8Array, structure: Structure): AttributesResult {
  // dcmjs copies what it is given: hand it the header only (up to the pixel data value).
  const end = structure.pixelData?.offset ?? head.byteLength;
  if (end > head.byteLength)
    return { ok: false, error: `the header before the pixel data is larger than the ${head.byteLength} bytes read ahead` };
  const ab = head.buffer.slice(head.byteOffset, head.byteOffset + end) as ArrayBuffer;
  let parsed: ReturnType<typeof dcmjs.data.DicomMessage.readFile>;
  try {
    parsed = dcmjs.data.DicomMessage.readFile(ab, { untilTag: '7FE00010', includeUntilTagValue: false });
  } catch (e) {
    // Several character sets (ISO 2022 escapes) are beyond dcmjs: read what it can decode; the
    // structure has been checked already, so nothing is silently cut off.
    if (!(e instanceof Error && /character set/i.test(e.message)))
      return { ok: false, error: `unreadable data set: ${e instanceof Error ? e.message : String(e)}` };
    parsed = dcmjs.data.DicomMessage.readFile(ab, { untilTag: '7FE00010', includeUntilTagValue: false, ignoreErrors: true });
  }
  const meta = dcmjs.data.DicomMetaDictionary.naturalizeDataset(parsed.meta);
  const ds = dcmjs.data.DicomMetaDictionary.naturalizeDataset(parsed.dict);
  const str = (k: string): string | null => {
    const v: unknown = ds[k];
    const x: unknown = Array.isArray(v) ? (v as unknown[])[0] : v;
    if (x === undefined || x === null || x === '') return null;
    if (typeof x === 'object') return personName(x as Record<string, string>);
    return typeof x === 'string' || typeof x === 'number' ? String(x).trim() || null : null;
  };
  const num = (k: string): number | null => {
    const s = str(k);
    return s === null || !Number.isFinite(Number(s)) ? null : Math.trunc(Number(s));
  };
  const uids = {
    sopClassUid: str('SOPClassUID') ?? (meta.MediaStorageSOPClassUID as string | undefined) ?? null,
    sopInstanceUid: str('SOPInstanceUID'),
    studyInstanceUid: str('StudyInstanceUID'),
    seriesInstanceUid: str('SeriesInstanceUID'),
  };
  for (const [name, v] of Object.entries(uids)) {
    if (!v)
      return { ok: false, error: `the data set has no ${name.replace(/^./, (c) => c.toUpperCase()).replace('Uid', 'UID')}` };
    if (!UID.test(v) || v.length > 64) return { ok: false, error: `${name}: ${JSON.stringify(v)} is not a valid UID` };
  }
  const metaUid = typeof meta.MediaStorageSOPInstanceUID === 'string' ? meta.MediaStorageSOPInstanceUID.trim() : '';
  if (metaUid && metaUid !== uids.sopInstanceUid) {
    return { ok: false, error: `the File Meta SOP Instance UID ${metaUid} differs from the data set's ${uids.sopInstanceUid!}` };
  }
  const json: DicomJson = {};
  for (const [tag, el] of Object.entries(parsed.dict)) {
    // Bulk data (and the pixel data tag dcmjs stops at) stays out of the metadata.
    if (!el.vr || BULK_VRS.has(el.vr) || tag === '7FE00010') continue;
    json[tag] = el.Value === undefined ? { vr: el.vr } : { vr: el.vr, Value: el.Value };
  }
  return {
    ok: true,
    value: {
      transferSyntaxUid: structure.transferSyntaxUid,
      sopClassUid: uids.sopClassUid!,
      sopInstanceUid: uids.sopInstanceUid!,
      studyInstanceUid: uids.studyInstanceUid!,
      seriesInstanceUid: uids.seriesInstanceUid!,
      patientId: str('PatientID'),
      patientName: str('PatientName'),
      patientBirthDate: str('PatientBirthDate'),
      patientSex: str('PatientSex'),
      studyDate: str('StudyDate'),
      studyTime: str('StudyTime'),
      accessionNumber: str('AccessionNumber'),
      studyDescription: str('StudyDescription'),
      studyId: str('StudyID'),
      referringPhysicianName: str('ReferringPhysicianName'),
      modality: str('Modality'),
      seriesNumber: num('SeriesNumber'),
      seriesDescription: str('SeriesDescription'),
      instanceNumber: num('InstanceNumber'),
      numberOfFrames: num('NumberOfFrames'),
      rows: num('Rows'),
      columns: num('Columns'),
      // dcmjs relabels decoded text as UTF-8; the index keeps what the file declares.
      specificCharacterSet: declaredCharset(parsed.dict['00080005']),
      json,
    },
  };
}

function declaredCharset(el: { _rawValue?: unknown[]; Value?: unknown[] } | undefined): string | null {
  const raw = (el?._rawValue ?? el?.Value ?? []).map((v) => String(v).trim());
  return raw.length ? raw.join('\\') : null;
}

/** PN as DICOM writes it: alphabetic=ideographic=phonetic, trailing empty groups dropped. */
function personName(pn: Record<string, string>): string | null {
  const group = (g: string | undefined) => (g ?? '').replace(/\^+$/, '');
  const s = [group(pn.Alphabetic), group(pn.Ideographic), group(pn.Phonetic)].join('=').replace(/=+$/, '');
  return s || null;
}
