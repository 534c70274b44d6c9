// Searches as probes: a search parameter, sort or value that would tell the caller what their
// masking hides is refused (403) before the query runs. The same checks decide whether a
// caller may find a patient by identifier in the EMPI directory (`mayFindBy`).
import { fail, ok, type IndexedParam, type Result, type SearchRequest } from '../../records/index.ts';
import type { FieldRule, Purpose, Transform } from './policy.ts';
import { isResidentId } from './whole-resource.ts';

export interface ProbeContext {
  type: string;
  purpose: Purpose;
  plan: ReadonlyMap<string, Transform>;
  fields: ReadonlyMap<string, FieldRule>;
  params: ReadonlyMap<string, IndexedParam> | undefined;
  /** research and statistics: ids, version ids and dates are generalized in the answers. */
  deidentified: boolean;
  /** Values the caller sees masked wherever they appear (resident IDs, mobile numbers). */
  scrub: { residentIds: boolean; phones: boolean };
  /** Under break-glass: the patients it opened; a search must name one of them. */
  breakGlassPatients?: readonly string[] | undefined;
}

const refused = (message: string) => fail('forbidden', message, { code: 'forbidden' });

/** Whether searching `type` by the parameter `code` (reading `fields`) would reveal a masked field. */
export function mayFindBy(c: ProbeContext, code: string, fields: readonly string[], reference: boolean): Result<void> {
  if (reference && c.plan.has('references') && c.plan.get('references') !== 'keep')
    return refused(`search parameter ${code} matches references, which are pseudonymized for purpose ${c.purpose}`);
  for (const f of fields) {
    const t = c.plan.get(f);
    if (t !== undefined && t !== 'keep')
      return refused(
        `search parameter ${code} reads ${c.type}.${f}, which is ${c.fields.get(f) ?? t} for you; ` +
          'searching by it would reveal what you may not see',
      );
  }
  return ok(undefined);
}

export function probeSearch(c: ProbeContext, req: SearchRequest): Result<void> {
  const param = (code: string) => fieldsOf(c.params?.get(code)?.expression ?? '');
  for (const f of req.filters) {
    const r =
      f.kind === 'id'
        ? mayFindBy(c, '_id', ['id'], false)
        : f.kind === 'lastUpdated'
          ? ok(undefined)
          : mayFindBy(c, f.code, param(f.code), f.kind === 'reference');
    if (!r.ok) return r;
    if (c.deidentified && (f.kind === 'date' || f.kind === 'lastUpdated')) {
      const code = f.kind === 'date' ? f.code : '_lastUpdated';
      if (f.preds.some((p) => p.prefix === 'ap' || !monthAligned(p.range.lo) || !monthAligned(p.range.hi)))
        return refused(
          `search parameter ${code}: dates are given to the month for purpose ${c.purpose}; ` +
            'search by whole months (yyyy or yyyy-mm, without ap), finer bounds would reveal what the answers generalize',
        );
    }
    const values = f.kind === 'string' ? f.values : f.kind === 'token' ? f.values.map((v) => v.value ?? '') : [];
    if (
      values.some(
        (v) =>
          (c.scrub.residentIds && hasResidentId(v)) ||
          (c.scrub.phones && /(?<!\d)1[3-9]\d{9}(?!\d)/.test(v.replace(/[\s-]/g, ''))),
      )
    )
      return refused(
        `search parameter ${f.kind === 'string' || f.kind === 'token' ? f.code : ''}: ` +
          'the value is a resident ID or phone number, which you see masked; searching for it would reveal what you may not see',
      );
  }
  for (const s of req.sort) {
    if (typeof s.key === 'object') {
      const r = mayFindBy(c, `_sort=${s.key.code}`, param(s.key.code), false);
      if (!r.ok) return r;
    }
    // Ordered by a real id, a real time or an exact date, pages would tell what the answers hide.
    if (c.deidentified && (typeof s.key === 'string' || s.key.type === 'date'))
      return refused(
        `_sort=${typeof s.key === 'string' ? s.key : s.key.code}: ` +
          `ids, times and dates are pseudonymized or generalized for purpose ${c.purpose}; ` +
          'sort by a string parameter, or not at all',
      );
  }
  if (c.breakGlassPatients) return namesBreakGlassPatient(c.type, req, c.breakGlassPatients);
  return ok(undefined);
}

/**
 * Break-glass reaches the patients it opened, one at a time: a search must be scoped to one of
 * them (Patient by `_id`, other records by `patient` or `subject`), never a general search.
 */
function namesBreakGlassPatient(type: string, req: SearchRequest, patients: readonly string[]): Result<void> {
  const mine = (t: { exact?: string; idOnly?: string }) => patients.some((p) => t.exact === `Patient/${p}` || t.idOnly === p);
  const scoped = req.filters.some((f) =>
    type === 'Patient'
      ? f.kind === 'id' && f.ids.length > 0 && f.ids.every((id) => patients.includes(id))
      : f.kind === 'reference' && (f.code === 'patient' || f.code === 'subject') && f.targets.length > 0 && f.targets.every(mine),
  );
  if (scoped) return ok(undefined);
  return refused(
    'under break-glass (purpose emergency) a search reaches only the patient you opened it for and must name them: ' +
      `${type === 'Patient' ? 'Patient?_id=<id>' : `${type}?patient=<id>`}; other patients in your care: purpose treatment`,
  );
}

function monthAligned(d: Date): boolean {
  return (
    d.getUTCDate() === 1 &&
    d.getUTCHours() === 0 &&
    d.getUTCMinutes() === 0 &&
    d.getUTCSeconds() === 0 &&
    d.getUTCMilliseconds() === 0
  );
}

function hasResidentId(v: string): boolean {
  return [...v.matchAll(/\d{17}[\dXx]/g)].some((m) => isResidentId(m[0]));
}

/** Top-level elements a search parameter's FHIRPath reads, e.g. `Patient.telecom.where(...)` -> telecom. */
export function fieldsOf(expression: string): string[] {
  return [...new Set([...expression.matchAll(/(?:^|[\s(|])[A-Z][A-Za-z]+\.([a-z][A-Za-z]*)/g)].map((m) => m[1]!))];
}
