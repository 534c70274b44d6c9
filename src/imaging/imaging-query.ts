// Attribute matching over the imaging index, shared by C-FIND and QIDO-RS (PS3.4 C.2.2.2):
// single value, UID list (backslash-separated), wildcards (* and ?), date and time ranges
// (a-b, a-, -b) and universal matching (an empty key is returned, not matched).
import type { Queryable } from '../db/index.ts';
import { rowScopeSql, type RowScope } from '../records/index.ts';

export type QueryLevel = 'PATIENT' | 'STUDY' | 'SERIES' | 'IMAGE';

type Kind = 'text' | 'uid' | 'date' | 'time' | 'pn' | 'int';
interface Attr {
  level: QueryLevel;
  tag: string;
  vr: string;
  sql: string;
  kind: Kind;
  /** Only returned, never matched (computed). */
  computed?: boolean;
}

const ATTRS: Record<string, Attr> = {
  PatientID: { level: 'PATIENT', tag: '00100020', vr: 'LO', sql: 's.patient_id', kind: 'text' },
  PatientName: { level: 'PATIENT', tag: '00100010', vr: 'PN', sql: 's.patient_name', kind: 'pn' },
  PatientBirthDate: { level: 'PATIENT', tag: '00100030', vr: 'DA', sql: 's.patient_birth_date', kind: 'date' },
  PatientSex: { level: 'PATIENT', tag: '00100040', vr: 'CS', sql: 's.patient_sex', kind: 'text' },
  StudyInstanceUID: { level: 'STUDY', tag: '0020000D', vr: 'UI', sql: 's.study_uid', kind: 'uid' },
  StudyDate: { level: 'STUDY', tag: '00080020', vr: 'DA', sql: 's.study_date', kind: 'date' },
  StudyTime: { level: 'STUDY', tag: '00080030', vr: 'TM', sql: 's.study_time', kind: 'time' },
  AccessionNumber: { level: 'STUDY', tag: '00080050', vr: 'SH', sql: 's.accession_number', kind: 'text' },
  StudyDescription: { level: 'STUDY', tag: '00081030', vr: 'LO', sql: 's.study_description', kind: 'text' },
  StudyID: { level: 'STUDY', tag: '00200010', vr: 'SH', sql: 's.study_id', kind: 'text' },
  ReferringPhysicianName: { level: 'STUDY', tag: '00080090', vr: 'PN', sql: 's.referring_physician', kind: 'pn' },
  ModalitiesInStudy: {
    level: 'STUDY',
    tag: '00080061',
    vr: 'CS',
    sql: `(SELECT string_agg(DISTINCT m.modality, '\\') FROM imaging_series m WHERE m.study_uid = s.study_uid)`,
    kind: 'text',
  },
  NumberOfStudyRelatedSeries: {
    level: 'STUDY',
    tag: '00201206',
    vr: 'IS',
    sql: '(SELECT count(*) FROM imaging_series m WHERE m.study_uid = s.study_uid)',
    kind: 'int',
    computed: true,
  },
  NumberOfStudyRelatedInstances: {
    level: 'STUDY',
    tag: '00201208',
    vr: 'IS',
    sql: '(SELECT count(*) FROM imaging_instance m WHERE m.study_uid = s.study_uid AND m.current)',
    kind: 'int',
    computed: true,
  },
  SeriesInstanceUID: { level: 'SERIES', tag: '0020000E', vr: 'UI', sql: 'se.series_uid', kind: 'uid' },
  Modality: { level: 'SERIES', tag: '00080060', vr: 'CS', sql: 'se.modality', kind: 'text' },
  SeriesNumber: { level: 'SERIES', tag: '00200011', vr: 'IS', sql: 'se.series_number', kind: 'int' },
  SeriesDescription: { level: 'SERIES', tag: '0008103E', vr: 'LO', sql: 'se.series_description', kind: 'text' },
  NumberOfSeriesRelatedInstances: {
    level: 'SERIES',
    tag: '00201209',
    vr: 'IS',
    sql: '(SELECT count(*) FROM imaging_instance m WHERE m.series_uid = se.series_uid AND m.current)',
    kind: 'int',
    computed: true,
  },
  SOPInstanceUID: { level: 'IMAGE', tag: '00080018', vr: 'UI', sql: 'i.sop_instance_uid', kind: 'uid' },
  SOPClassUID: { level: 'IMAGE', tag: '00080016', vr: 'UI', sql: 'i.sop_class_uid', kind: 'uid' },
  InstanceNumber: { level: 'IMAGE', tag: '00200013', vr: 'IS', sql: 'i.instance_number', kind: 'int' },
  NumberOfFrames: { level: 'IMAGE', tag: '00280008', vr: 'IS', sql: 'i.number_of_frames', kind: 'int' },
  Rows: { level: 'IMAGE', tag: '00280010', vr: 'US', sql: 'i.rows', kind: 'int' },
  Columns: { level: 'IMAGE', tag: '00280011', vr: 'US', sql: 'i.columns', kind: 'int' },
};

const RANK: Record<QueryLevel, number> = { PATIENT: 0, STUDY: 1, SERIES: 2, IMAGE: 3 };

const BY_TAG = new Map(Object.entries(ATTRS).map(([k, a]) => [a.tag, k]));

/** The keyword of an indexed attribute named by keyword or by 8-digit tag; undefined when not indexed. */
export function attributeKeyword(nameOrTag: string): string | undefined {
  if (ATTRS[nameOrTag]) return nameOrTag;
  return BY_TAG.get(nameOrTag.toUpperCase());
}

/** The default attributes a level answers with (PS3.18 Table 10.6.3-x, the indexed subset). */
export const DEFAULT_RETURN: Record<QueryLevel, string[]> = {
  PATIENT: ['PatientID', 'PatientName', 'PatientBirthDate', 'PatientSex'],
  STUDY: [
    'StudyInstanceUID',
    'StudyDate',
    'StudyTime',
    'AccessionNumber',
    'ReferringPhysicianName',
    'PatientName',
    'PatientID',
    'PatientBirthDate',
    'PatientSex',
    'StudyID',
    'StudyDescription',
    'ModalitiesInStudy',
    'NumberOfStudyRelatedSeries',
    'NumberOfStudyRelatedInstances',
  ],
  SERIES: [
    'StudyInstanceUID',
    'SeriesInstanceUID',
    'Modality',
    'SeriesNumber',
    'SeriesDescription',
    'NumberOfSeriesRelatedInstances',
  ],
  IMAGE: [
    'StudyInstanceUID',
    'SeriesInstanceUID',
    'SOPClassUID',
    'SOPInstanceUID',
    'InstanceNumber',
    'Rows',
    'Columns',
    'NumberOfFrames',
  ],
};

/** A match as a DICOM JSON object (PS3.18 F.2): tag -> { vr, Value }. */
export function toDicomJson(m: Match): Record<string, { vr: string; Value?: unknown[] }> {
  const out: Record<string, { vr: string; Value?: unknown[] }> = {};
  for (const [k, v] of Object.entries(m)) {
    const a = ATTRS[k];
    if (!a) continue;
    if (v === null || v === '') {
      out[a.tag] = { vr: a.vr };
      continue;
    }
    let value: unknown[];
    if (a.vr === 'PN') {
      const [Alphabetic = '', Ideographic, Phonetic] = String(v).split('=');
      value = [{ Alphabetic, ...(Ideographic ? { Ideographic } : {}), ...(Phonetic ? { Phonetic } : {}) }];
    } else if (a.vr === 'IS' || a.vr === 'US') value = [Number(v)];
    else value = String(v).split('\\');
    out[a.tag] = { vr: a.vr, Value: value };
  }
  return Object.fromEntries(Object.entries(out).sort(([x], [y]) => (x < y ? -1 : 1)));
}

export const queryableAttributes = (level: QueryLevel): string[] =>
  Object.entries(ATTRS)
    .filter(([, a]) => RANK[a.level] <= RANK[level])
    .map(([k]) => k);

export type Match = Record<string, string | number | null>;

export type FindResult = { ok: true; value: Match[] } | { ok: false; error: string };

export interface FindOptions {
  limit?: number;
  offset?: number;
  include?: string[];
  /**
   * Only studies of the patients in this scope (the access layer's): a study counts as its
   * FHIR Patient's once linked; until then it is in a patients-scope of nobody.
   */
  rows?: RowScope;
}

/** Finds entities at `level` matching `keys` (keyword -> value); returns the keys asked for plus the level's unique key. */
export async function findImaging(
  q: Queryable,
  level: QueryLevel,
  keys: Record<string, string>,
  opts: FindOptions = {},
): Promise<FindResult> {
  const where: string[] = [];
  const params: unknown[] = [];
  const p = (v: unknown) => {
    params.push(v);
    return `$${params.length}`;
  };
  for (const [name, raw] of Object.entries(keys)) {
    const attr = ATTRS[name];
    if (!attr) return { ok: false, error: `${name} is not a matching key medmesh supports` };
    if (RANK[attr.level] > RANK[level])
      return { ok: false, error: `${name} is a ${attr.level} attribute; it cannot be matched at ${level} level` };
    const value = raw.trim();
    // No text column holds a NUL (PostgreSQL refuses one in text): a key with one matches nothing
    // and is refused as malformed, not passed to the database.
    if (value.includes('\u0000')) return { ok: false, error: `${name}: the value contains a NUL character` };
    if (value === '' || value === '*' || attr.computed) continue;
    const m = condition(attr, value, p);
    if (!m.ok) return { ok: false, error: `${name}: ${m.error}` };
    where.push(m.sql);
  }
  const unique = { PATIENT: 'PatientID', STUDY: 'StudyInstanceUID', SERIES: 'SeriesInstanceUID', IMAGE: 'SOPInstanceUID' }[level];
  const wanted = [...new Set([unique, ...Object.keys(keys), ...(opts.include ?? [])])].filter(
    (k) => ATTRS[k] && RANK[ATTRS[k].level] <= RANK[level],
  );
  const select = wanted.map((k) => `${ATTRS[k]!.sql} AS "${k}"`).join(', ');
  const from = {
    PATIENT: 'imaging_study s',
    STUDY: 'imaging_study s',
    SERIES: 'imaging_series se JOIN imaging_study s ON s.study_uid = se.study_uid',
    IMAGE:
      'imaging_instance i JOIN imaging_series se ON se.series_uid = i.series_uid ' +
      'JOIN imaging_study s ON s.study_uid = i.study_uid',
  }[level];
  if (level === 'IMAGE') where.push('i.current');
  if (opts.rows && opts.rows.kind !== 'all') where.push(studyInScope(opts.rows, 's', p));
  const whereSql = where.length ? `WHERE ${where.join(' AND ')}` : '';
  const order = {
    PATIENT: '1',
    STUDY: 's.study_date NULLS LAST, s.study_uid',
    SERIES: 'se.series_number NULLS LAST, se.series_uid',
    IMAGE: 'i.instance_number NULLS LAST, i.sop_instance_uid',
  }[level];
  const page = `LIMIT ${Math.max(0, Math.min(opts.limit ?? 1000, 10_000))} OFFSET ${Math.max(0, opts.offset ?? 0)}`;
  // A patient appears in several studies: one answer per patient.
  const sql =
    level === 'PATIENT'
      ? `SELECT DISTINCT ON ("PatientID") * FROM (SELECT ${select} FROM ${from} ${whereSql}) x ORDER BY "PatientID" ${page}`
      : `SELECT ${select} FROM ${from} ${whereSql} ORDER BY ${order} ${page}`;
  const { rows } = await q.query<Match>(sql, params);
  return {
    ok: true,
    value: rows.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, typeof v === 'bigint' ? Number(v) : v]))),
  };
}

/** SQL: the study at `alias` is linked to a patient inside `rows`. */
function studyInScope(rows: RowScope, alias: string, p: (v: unknown) => string): string {
  return (
    `EXISTS (SELECT 1 FROM (SELECT substr(${alias}.patient_ref, 9) AS patient_id ` +
    `WHERE ${alias}.patient_ref LIKE 'Patient/%') linked WHERE ${rowScopeSql(rows, 'linked', p)})`
  );
}

function condition(
  attr: Attr,
  value: string,
  p: (v: unknown) => string,
): { ok: true; sql: string } | { ok: false; error: string } {
  switch (attr.kind) {
    case 'uid': {
      const uids = value.split('\\').filter(Boolean);
      if (!uids.every((u) => /^[0-9.]+$/.test(u)))
        return { ok: false, error: `${JSON.stringify(value)} is not a UID or list of UIDs` };
      return { ok: true, sql: `${attr.sql} = ANY(${p(uids)}::text[])` };
    }
    case 'date':
    case 'time': {
      const re = attr.kind === 'date' ? /^(\d{8})?(-)?(\d{8})?$/ : /^(\d{2,6}(?:\.\d+)?)?(-)?(\d{2,6}(?:\.\d+)?)?$/;
      const m = re.exec(value);
      if (!m || (!m[1] && !m[3]))
        return { ok: false, error: `${JSON.stringify(value)} is not a ${attr.kind} or ${attr.kind} range` };
      if (!m[2]) return { ok: true, sql: `${attr.sql} = ${p(m[1])}` };
      const parts = [
        m[1] ? `${attr.sql} >= ${p(m[1])}` : '',
        m[3] ? `${attr.sql} <= ${p(attr.kind === 'time' ? `${m[3]}~` : m[3])}` : '',
      ].filter(Boolean);
      return { ok: true, sql: `(${parts.join(' AND ')})` };
    }
    case 'int': {
      if (!/^-?\d+$/.test(value)) return { ok: false, error: `${JSON.stringify(value)} is not an integer` };
      return { ok: true, sql: `${attr.sql} = ${p(Number(value))}` };
    }
    case 'text':
    case 'pn': {
      if (attr.sql.includes('string_agg'))
        return {
          ok: true,
          sql:
            'EXISTS (SELECT 1 FROM imaging_series m WHERE m.study_uid = s.study_uid ' +
            `AND m.modality = ANY(${p(value.split('\\'))}::text[]))`,
        };
      if (!/[*?]/.test(value))
        return { ok: true, sql: attr.kind === 'pn' ? `lower(${attr.sql}) = lower(${p(value)})` : `${attr.sql} = ${p(value)}` };
      const like = value
        .replace(/[\\%_]/g, (c) => `\\${c}`)
        .replace(/\*/g, '%')
        .replace(/\?/g, '_');
      return { ok: true, sql: `${attr.sql} ${attr.kind === 'pn' ? 'ILIKE' : 'LIKE'} ${p(like)}` };
    }
  }
}
