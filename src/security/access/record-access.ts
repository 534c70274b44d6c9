// The access-controlled view of the record store for one request. Every read, search,
// history, write and Bundle entry passes here: the decision (role, purpose, ABAC), the row
// scope applied inside the store's SQL (so counts and pages never include what the caller
// may not see), field rules on writes, and masking of everything returned. Each decision is
// collected for the audit log.
import type { Bundle, BundleEntry, Resource } from '@medplum/fhirtypes';
import type { Queryable } from '../../db/index.ts';
import {
  fail,
  inPatientCompartment,
  ok,
  type AccessFilter,
  type BundleStore,
  type HistoryOptions,
  type RecordError,
  type RecordStore,
  type Result,
  type RowScope,
  type SearchParamTable,
  type WriteOutcome,
} from '../../records/index.ts';
import { decide, type Caller } from './decide.ts';
import { BREAK_GLASS_PREDICATE, CARE_PREDICATE } from './grants.ts';
import { maskResource, type MaskKeys, type MaskOptions } from './masking.ts';
import type { AccessDocuments } from './documents.ts';
import { admitWrite, restoreMasked } from './write-rules.ts';
import { mayFindBy, probeSearch, type ProbeContext } from './search-probe.ts';
import {
  scenarioOf,
  type Action,
  type FieldRule,
  type MaskingRules,
  type Purpose,
  type Scenario,
  type Transform,
} from './policy.ts';

export interface DecisionRecord {
  action: Action;
  resource: string;
  /** allow: served; deny: refused by policy or scope; failure: allowed but the store answered an error. */
  outcome: 'allow' | 'deny' | 'failure';
  fields?: string[];
  reason?: string;
  /** An access through break-glass (a record of the patient it opened): audited with its reason. */
  breakGlass?: boolean;
}

export interface Requester {
  caller: Caller;
  purpose: Purpose;
  /** The reasons of the caller's active break-glass grants (emergency purpose only). */
  breakGlass?: string;
  /** The patients those grants opened (emergency purpose only). */
  breakGlassPatients?: readonly string[];
  /** Every decision taken for this request, in order; the audit hook writes them. */
  decisions: DecisionRecord[];
}

export interface RecordAccessContext {
  store: RecordStore;
  siteId: string;
  searchParams: SearchParamTable;
  documents: AccessDocuments;
  /** The HMAC-SM3 pseudonym function of a scenario (research: per project key). */
  pseudonyms(scenario: Scenario, caller: Caller): (value: string) => string;
  now(): Date;
}

interface Gate {
  filter: AccessFilter;
  plan: ReadonlyMap<string, Transform>;
  fields: ReadonlyMap<string, FieldRule>;
  /** The rows are those break-glass opened (emergency purpose, care scope). */
  breakGlass: boolean;
}

type Failure = { ok: false; error: RecordError };

export class RecordAccess implements BundleStore {
  readonly #c: RecordAccessContext;
  readonly #r: Requester;
  readonly #keys: MaskKeys;
  #options: MaskOptions | undefined;
  #scrubbing: { residentIds: boolean; phones: boolean } | undefined;

  constructor(ctx: RecordAccessContext, requester: Requester) {
    this.#c = ctx;
    this.#r = requester;
    // One scenario per request (the purpose decides it); its key is looked up on first use.
    let pseudonym: ((v: string) => string) | undefined;
    this.#keys = {
      now: ctx.now(),
      pseudonym: (v) => (pseudonym ??= ctx.pseudonyms(scenarioOf(requester.purpose), requester.caller))(v),
    };
  }

  get requester(): Requester {
    return this.#r;
  }

  inTransaction<T>(fn: (tx: Queryable) => Promise<Result<T>>): Promise<Result<T>> {
    return this.#c.store.inTransaction(fn);
  }

  async create(type: string, body: unknown, opts: { ifNoneExist?: string } = {}): Promise<Result<WriteOutcome>> {
    const g = this.#gate('create', type, type);
    if (!g.ok) return g;
    return this.#written('create', type, g.value, await this.#c.store.create(type, body, { ...opts, access: g.value.filter }));
  }

  async createIn(
    tx: Queryable,
    type: string,
    body: unknown,
    opts: { ifNoneExist?: string; id: string | undefined },
  ): Promise<Result<WriteOutcome>> {
    const g = this.#gate('create', type, type);
    if (!g.ok) return g;
    return this.#written(
      'create',
      type,
      g.value,
      await this.#c.store.createIn(tx, type, body, { ...opts, access: g.value.filter }),
    );
  }

  async conditionalMatch(tx: Queryable, type: string, criteria: string): Promise<Result<Resource | undefined>> {
    const g = this.#gate('create', type, type);
    if (!g.ok) return g;
    const parsed = this.#c.store.parseSearch(type, [...new URLSearchParams(criteria.replace(/^[A-Za-z]*\?/, ''))]);
    const probe = parsed.ok
      ? probeSearch({ ...this.#probeContext(type, g.value), breakGlassPatients: undefined }, parsed.value)
      : parsed;
    if (!probe.ok) return probe;
    const r = await this.#c.store.conditionalMatch(tx, type, criteria, g.value.filter);
    return r.ok && r.value ? ok(this.#mask(r.value, g.value).resource) : r;
  }

  async update(type: string, id: string, body: unknown, opts: { ifMatch?: string } = {}): Promise<Result<WriteOutcome>> {
    const g = this.#gate('update', type, `${type}/${id}`);
    if (!g.ok) return g;
    return this.#written(
      'update',
      `${type}/${id}`,
      g.value,
      await this.#c.store.update(type, id, body, { ...opts, access: g.value.filter }),
    );
  }

  async updateIn(
    tx: Queryable,
    type: string,
    id: string,
    body: unknown,
    opts: { ifMatch?: string },
  ): Promise<Result<WriteOutcome>> {
    const g = this.#gate('update', type, `${type}/${id}`);
    if (!g.ok) return g;
    return this.#written(
      'update',
      `${type}/${id}`,
      g.value,
      await this.#c.store.updateIn(tx, type, id, body, { ...opts, access: g.value.filter }),
    );
  }

  async delete(type: string, id: string): Promise<Result<{ deleted: boolean }>> {
    const g = this.#gate('delete', type, `${type}/${id}`);
    if (!g.ok) return g;
    return this.#settled('delete', `${type}/${id}`, await this.#c.store.delete(type, id, { access: g.value.filter }));
  }

  async deleteIn(tx: Queryable, type: string, id: string): Promise<Result<{ deleted: boolean }>> {
    const g = this.#gate('delete', type, `${type}/${id}`);
    if (!g.ok) return g;
    return this.#settled('delete', `${type}/${id}`, await this.#c.store.deleteIn(tx, type, id, { access: g.value.filter }));
  }

  async read(type: string, id: string, opts: { q?: Queryable } = {}): Promise<Result<Resource>> {
    const g = this.#gate('read', type, `${type}/${id}`);
    if (!g.ok) return g;
    const r = await this.#c.store.read(type, id, { ...opts, access: g.value.filter });
    return this.#shown('read', `${type}/${id}`, g.value, r);
  }

  async vread(type: string, id: string, versionId: string, opts: { q?: Queryable } = {}): Promise<Result<Resource>> {
    const g = this.#gate('vread', type, `${type}/${id}/_history/${versionId}`);
    if (!g.ok) return g;
    const r = await this.#c.store.vread(type, id, versionId, { ...opts, access: g.value.filter });
    return this.#shown('vread', `${type}/${id}/_history/${versionId}`, g.value, r);
  }

  async history(type: string, id: string | undefined, opts: HistoryOptions): Promise<Result<Bundle>> {
    const target = id ? `${type}/${id}` : type;
    const g = this.#gate('history', type, target);
    if (!g.ok) return g;
    const r = await this.#c.store.history(type, id, { ...opts, access: g.value.filter });
    if (!r.ok) return this.#settled('history', target, r);
    return ok(this.#maskBundle('history', target, g.value, r.value, false));
  }

  async search(
    type: string,
    query: ReadonlyArray<readonly [string, string]>,
    opts: { baseUrl: string; q?: Queryable },
  ): Promise<Result<Bundle>> {
    const g = this.#gate('search', type, type);
    if (!g.ok) return g;
    const parsed = this.#c.store.parseSearch(type, query);
    const probe = parsed.ok ? probeSearch(this.#probeContext(type, g.value), parsed.value) : parsed;
    if (!probe.ok) return this.#deny('search', type, probe.error.issues[0]?.message ?? 'refused', probe);
    const r = await this.#c.store.search(type, query, { ...opts, access: g.value.filter });
    if (!r.ok) return this.#settled('search', type, r, g.value);
    return ok(this.#maskBundle('search', type, g.value, r.value, true));
  }

  /**
   * Whether the caller may find patients by `identifier` in the EMPI directory: the same
   * decision and the same rule as `Patient?identifier=` (one function, `mayFindBy`), so the
   * directory tells nobody the home of an identifier their FHIR search would refuse.
   */
  /**
   * Whether this requester may find patients by identifier, as a FHIR search would let them; the
   * answer is the scope of the patients such a search would return (a doctor's care scope).
   */
  mayFindPatientsByIdentifier(): Result<RowScope> {
    const g = this.#decide('search', 'Patient', 'Patient');
    if (!g.ok) return fail('forbidden', g.reason, { code: 'forbidden' });
    if (g.value.aggregate)
      return fail('forbidden', `you may search Patient only in aggregate for purpose ${this.#r.purpose}`, { code: 'forbidden' });
    if (g.value.breakGlass)
      return fail('forbidden', 'under break-glass (purpose emergency) only the patient you opened it for is reachable', {
        code: 'forbidden',
      });
    const may = mayFindBy(this.#probeContext('Patient', g.value), 'identifier', ['identifier'], false);
    return may.ok ? ok(g.value.filter.rows) : may;
  }

  /**
   * For data kept beside the record store that cannot be masked (a DICOM file carries its
   * patient's name and IDs in its own headers): which patients' rows of `type` the requester
   * may touch for `action`. Refused when the caller's rules would mask or pseudonymize any part
   * of `type`, or reach it only in aggregate. Nothing is recorded: the caller audits what it
   * serves or refuses.
   */
  unmaskedScope(action: Action, type: string, target: string): Result<AccessFilter> {
    const g = this.#decide(action, type, target);
    if (!g.ok) return fail('forbidden', g.reason, { code: 'forbidden' });
    const masked = [...g.value.plan].filter(([, t]) => t !== 'keep').map(([f]) => f);
    if (g.value.aggregate || masked.length) {
      const why = g.value.aggregate ? 'only in aggregate' : `with ${masked.join(', ')} masked`;
      return fail(
        'forbidden',
        `you may see ${type} ${why} for purpose ${this.#r.purpose}; ` +
          "images carry their patient's details in their headers, which medmesh does not mask",
        { code: 'forbidden' },
      );
    }
    return ok(g.value.filter);
  }

  /** Decision for (action, type); on allow, the store filter and the masking plan. */
  #gate(action: Action, type: string, target: string): Result<Gate> {
    const g = this.#decide(action, type, target);
    return g.ok ? g : this.#deny(action, target, g.reason, fail('forbidden', g.reason, { code: 'forbidden' }));
  }

  #decide(
    action: Action,
    type: string,
    target: string,
  ): { ok: true; value: Gate & { aggregate: boolean } } | { ok: false; reason: string } {
    const { caller, purpose } = this.#r;
    const d = decide({ caller, purpose, action, resourceType: type, siteId: this.#c.siteId }, this.#c.documents.policies());
    if (!d.allowed) return { ok: false, reason: d.reason };
    // De-identified answers are only ever searches: one record by id, its history or a write
    // would carry what no pseudonym can hide (its version, its times, the record itself).
    if (d.scenario !== 'clinical' && action !== 'search')
      return {
        ok: false,
        reason: `purpose ${purpose} is search-only and de-identified: no ${action} of individual ${type} records`,
      };
    const rows = rowScope(d.scope, type, caller, purpose);
    if (!rows.ok) return rows;
    const breakGlass = purpose === 'emergency' && d.scope === 'care';
    const denied =
      d.scope === 'own'
        ? `${target} is not part of your own record`
        : breakGlass
          ? `${target} does not belong to the patient your break-glass opened; break-glass reaches that patient only`
          : `${target} belongs to a patient outside your care relationship ` +
            '(no encounter at your department or with you, no valid grant); ' +
            'in an emergency, start break-glass (POST /access/break-glass) ' +
            'and send the header x-medmesh-purpose: emergency with each request it covers';
    const filter: AccessFilter = { rows: rows.value, denied };
    const plan = maskPlan(type, d.scenario, d.fields, this.#c.documents.masking());
    // What the caller saw of the stored version masked comes back as the stored value (restoreMasked).
    const scrubbed = inPatientCompartment(type) && (this.#scrub().residentIds || this.#scrub().phones);
    if (d.fields.size > 0 || plan.size > 0 || scrubbed)
      filter.admitWrite = (next, previous) => {
        const admitted = d.fields.size > 0 ? admitWrite(type, d.fields, next, previous) : ok(next);
        if (!admitted.ok || !previous) return admitted;
        const seen = this.#mask(previous, { filter, plan, fields: d.fields, breakGlass: false }).resource;
        return ok(seen === previous ? admitted.value : restoreMasked(admitted.value, previous, seen));
      };
    // De-identified pages are ordered by a keyed hash: the order of real ids or times would link them.
    if (d.scenario !== 'clinical') filter.orderSalt = this.#keys.pseudonym('search-order');
    return {
      ok: true,
      value: {
        filter,
        fields: d.fields,
        plan,
        aggregate: d.scope === 'aggregate',
        breakGlass,
      },
    };
  }

  #probeContext(type: string, g: Gate): ProbeContext {
    const o = this.#maskOptions();
    return {
      type,
      purpose: this.#r.purpose,
      plan: g.plan,
      fields: g.fields,
      params: this.#c.searchParams.get(type),
      deidentified: o.deidentify ?? false,
      scrub: o.scrub ?? { residentIds: false, phones: false },
      breakGlassPatients: g.breakGlass ? (this.#r.breakGlassPatients ?? []) : undefined,
    };
  }

  /**
   * What masking needs beyond one type's plan, once per request: contained resources get
   * their own type's plan, resident IDs and phones are masked in every string for callers who
   * see them masked on Patient, and research and statistics answers are de-identified whole.
   */
  #maskOptions(): MaskOptions {
    if (this.#options) return this.#options;
    const planOf = (type: string) => {
      for (const action of ['read', 'search'] as const) {
        const d = this.#decide(action, type, type);
        if (d.ok) return d.value.plan;
      }
      return undefined;
    };
    this.#options = { planOf, scrub: this.#scrub(), deidentify: scenarioOf(this.#r.purpose) !== 'clinical' };
    return this.#options;
  }

  /** Whether the caller sees a patient's resident ID and phone only masked (or not at all). */
  #scrub(): { residentIds: boolean; phones: boolean } {
    if (this.#scrubbing) return this.#scrubbing;
    const { caller, purpose } = this.#r;
    let patient: ReadonlyMap<string, Transform> | undefined;
    for (const action of ['read', 'search'] as const) {
      const d = decide(
        { caller, purpose, action, resourceType: 'Patient', siteId: this.#c.siteId },
        this.#c.documents.policies(),
      );
      if (d.allowed) {
        patient = maskPlan('Patient', d.scenario, d.fields, this.#c.documents.masking());
        break;
      }
    }
    const clear = (field: string) => patient !== undefined && (patient.get(field) ?? 'keep') === 'keep';
    this.#scrubbing = { residentIds: !clear('identifier'), phones: !clear('telecom') };
    return this.#scrubbing;
  }

  #mask(resource: Resource, g: Gate): { resource: Resource; changed: string[] } {
    const o = this.#maskOptions();
    // A practitioner's or an organization's phone is directory data, not a patient's.
    const patientData = inPatientCompartment(resource.resourceType);
    return maskResource(resource, g.plan, this.#keys, patientData ? o : { ...o, scrub: { residentIds: false, phones: false } });
  }

  #shown(action: Action, target: string, g: Gate, r: Result<Resource>): Result<Resource> {
    if (!r.ok) return this.#settled(action, target, r, g);
    const m = this.#mask(r.value, g);
    this.#record({ action, resource: target, outcome: 'allow', ...(m.changed.length ? { fields: m.changed } : {}) }, g);
    return ok(m.resource);
  }

  #written(action: Action, target: string, g: Gate, r: Result<WriteOutcome>): Result<WriteOutcome> {
    if (!r.ok) return this.#settled(action, target, r, g);
    const m = this.#mask(r.value.resource, g);
    const written = `${r.value.resource.resourceType}/${r.value.resource.id ?? ''}`;
    this.#record({ action, resource: written, outcome: 'allow', ...(m.changed.length ? { fields: m.changed } : {}) }, g);
    return ok({ ...r.value, resource: m.resource });
  }

  #maskBundle(action: Action, target: string, g: Gate, b: Bundle, rewriteFullUrl: boolean): Bundle {
    const changed = new Set<string>();
    const entry = (b.entry ?? []).map((e): BundleEntry => {
      if (!e.resource) return e;
      const m = this.#mask(e.resource, g);
      for (const c of m.changed) changed.add(c);
      const fullUrl =
        rewriteFullUrl && e.fullUrl && m.resource.id !== e.resource.id
          ? e.fullUrl.replace(/[^/]+$/, m.resource.id ?? '')
          : e.fullUrl;
      return { ...e, ...(fullUrl ? { fullUrl } : {}), resource: m.resource };
    });
    this.#record({ action, resource: target, outcome: 'allow', ...(changed.size ? { fields: [...changed] } : {}) }, g);
    return b.entry ? { ...b, entry } : b;
  }

  /** A store answer after an allow: refused rows are recorded as denials, other errors as failures. */
  #settled<T>(action: Action, target: string, r: Result<T>, g?: Gate): Result<T> {
    if (r.ok) this.#record({ action, resource: target, outcome: 'allow' }, g);
    else if (r.error.kind === 'forbidden') return this.#deny(action, target, r.error.issues[0]?.message ?? 'refused', r);
    else this.#record({ action, resource: target, outcome: 'failure', reason: r.error.issues[0]?.message ?? r.error.kind });
    return r;
  }

  #deny<T extends Failure>(action: Action, target: string, reason: string, result: T): T {
    this.#record({ action, resource: target, outcome: 'deny', reason });
    return result;
  }

  /** Only what break-glass opened, and was served, is audited as break-glass. */
  #record(d: DecisionRecord, g?: Gate): void {
    if (g?.breakGlass && d.outcome === 'allow') d.breakGlass = true;
    // A Bundle of 1000 entries yields 1000 decisions; beyond that, a request is not a normal one.
    if (this.#r.decisions.length < 2000) this.#r.decisions.push(d);
  }
}

function rowScope(
  scope: 'all' | 'care' | 'own' | 'aggregate',
  type: string,
  caller: Caller,
  purpose: Purpose,
): { ok: true; value: RowScope } | { ok: false; reason: string } {
  const includeUnowned = !inPatientCompartment(type);
  switch (scope) {
    case 'all':
    case 'aggregate':
      return { ok: true, value: { kind: 'all' } };
    case 'own': {
      const patient = caller.attributes.patient;
      if (!patient) return { ok: false, reason: 'your account is not linked to a patient record (attribute patient)' };
      return { ok: true, value: { kind: 'patients', predicate: '{patient} = $1::text', params: [patient], includeUnowned } };
    }
    case 'care': {
      // Break-glass opens the patients it names, for the emergency purpose only, and nothing else:
      // patients in the caller's care are reached with purpose treatment.
      if (purpose === 'emergency')
        return {
          ok: true,
          value: { kind: 'patients', predicate: BREAK_GLASS_PREDICATE, params: [caller.userId], includeUnowned },
        };
      const targets = [
        caller.attributes.department ? `Organization/${caller.attributes.department}` : undefined,
        caller.attributes.practitioner ? `Practitioner/${caller.attributes.practitioner}` : undefined,
      ].filter((t): t is string => t !== undefined);
      return {
        ok: true,
        value: {
          kind: 'patients',
          predicate: CARE_PREDICATE,
          params: [targets, caller.userId],
          includeUnowned,
        },
      };
    }
  }
}

/**
 * Field rule + scenario -> transform per field. Clinical use masks only the fields a policy
 * marks `mask`; research and statistics de-identify every response by their rule set.
 */
export function maskPlan(
  type: string,
  scenario: Scenario,
  fields: ReadonlyMap<string, FieldRule>,
  rules: MaskingRules,
): Map<string, Transform> {
  const plan = new Map<string, Transform>();
  const scenarioRules = { ...rules[scenario]['*'], ...rules[scenario][type] };
  if (scenario !== 'clinical') for (const [f, t] of Object.entries(scenarioRules)) plan.set(f, t);
  for (const [f, rule] of fields) {
    if (rule === 'hidden') plan.set(f, 'remove');
    else if (rule === 'hash') plan.set(f, 'pseudonym');
    else if (rule === 'mask') {
      const t = scenarioRules[f];
      plan.set(f, t && t !== 'keep' ? t : 'remove');
    }
  }
  // A resident ID's hidden digits are the birth date: whoever sees the ID masked sees the birth
  // date to the year only, wherever it would otherwise stand beside the mask (docs/security.md).
  const id = plan.get('identifier');
  if (id !== undefined && id !== 'keep' && id !== 'remove' && (plan.get('birthDate') ?? 'keep') === 'keep')
    plan.set('birthDate', 'birth-year');
  return plan;
}
