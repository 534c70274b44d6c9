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
  type SearchRequest,
  type WriteOutcome,
} from '../../records/index.ts';
import { decide, type Caller } from './decide.ts';
import { CARE_PREDICATE } from './grants.ts';
import { maskResource, type MaskKeys } from './masking.ts';
import type { AccessDocuments } from './documents.ts';
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
}

export interface Requester {
  caller: Caller;
  purpose: Purpose;
  /** The reasons of the caller's active break-glass grants (emergency purpose only). */
  breakGlass?: string;
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
}

type Failure = { ok: false; error: RecordError };

export class RecordAccess implements BundleStore {
  readonly #c: RecordAccessContext;
  readonly #r: Requester;
  readonly #keys: MaskKeys;

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
    const probe = this.#probe(
      type,
      this.#c.store.parseSearch(type, [...new URLSearchParams(criteria.replace(/^[A-Za-z]*\?/, ''))]),
      g.value,
    );
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

  async vread(type: string, id: string, versionId: string): Promise<Result<Resource>> {
    const g = this.#gate('vread', type, `${type}/${id}/_history/${versionId}`);
    if (!g.ok) return g;
    const r = await this.#c.store.vread(type, id, versionId, { access: g.value.filter });
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
    const probe = this.#probe(type, this.#c.store.parseSearch(type, query), g.value);
    if (!probe.ok) return this.#deny('search', type, probe.error.issues[0]?.message ?? 'refused', probe);
    const r = await this.#c.store.search(type, query, { ...opts, access: g.value.filter });
    if (!r.ok) return this.#settled('search', type, r);
    return ok(this.#maskBundle('search', type, g.value, r.value, true));
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
        `you may see ${type} ${why} for purpose ${this.#r.purpose}; images carry their patient's details in their headers, which medmesh does not mask`,
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
    const rows = rowScope(d.scope, type, caller, purpose);
    if (!rows.ok) return rows;
    const denied =
      d.scope === 'own'
        ? `${target} is not part of your own record`
        : `${target} belongs to a patient outside your care relationship (no encounter at your department or with you, no valid grant)${purpose === 'emergency' ? '' : '; in an emergency, start break-glass: POST /access/break-glass'}`;
    const filter: AccessFilter = { rows: rows.value, denied };
    if (d.fields.size > 0) filter.admitWrite = (next, previous) => admitWrite(type, d.fields, next, previous);
    return {
      ok: true,
      value: {
        filter,
        fields: d.fields,
        plan: maskPlan(type, d.scenario, d.fields, this.#c.documents.masking()),
        aggregate: d.scope === 'aggregate',
      },
    };
  }

  /** Refuses search parameters (and sorts) that would reveal a field the caller sees masked. */
  #probe(type: string, parsed: Result<SearchRequest>, g: Gate): Result<void> {
    if (!parsed.ok) return parsed;
    const params = this.#c.searchParams.get(type);
    const codes: Array<{ code: string; fields: string[]; reference: boolean }> = [];
    for (const f of parsed.value.filters) {
      if (f.kind === 'id') codes.push({ code: '_id', fields: ['id'], reference: false });
      else if (f.kind !== 'lastUpdated')
        codes.push({ code: f.code, fields: fieldsOf(params?.get(f.code)?.expression ?? ''), reference: f.kind === 'reference' });
    }
    for (const s of parsed.value.sort)
      if (typeof s.key === 'object')
        codes.push({
          code: `_sort=${s.key.code}`,
          fields: fieldsOf(params?.get(s.key.code)?.expression ?? ''),
          reference: false,
        });
    for (const c of codes) {
      if (c.reference && g.plan.has('references') && g.plan.get('references') !== 'keep')
        return fail(
          'forbidden',
          `search parameter ${c.code} matches references, which are pseudonymized for purpose ${this.#r.purpose}`,
          { code: 'forbidden' },
        );
      for (const f of c.fields) {
        const t = g.plan.get(f);
        if (t !== undefined && t !== 'keep')
          return fail(
            'forbidden',
            `search parameter ${c.code} reads ${type}.${f}, which is ${g.fields.get(f) ?? t} for you; searching by it would reveal what you may not see`,
            { code: 'forbidden' },
          );
      }
    }
    return ok(undefined);
  }

  #mask(resource: Resource, g: Gate): { resource: Resource; changed: string[] } {
    return maskResource(resource, g.plan, this.#keys);
  }

  #shown(action: Action, target: string, g: Gate, r: Result<Resource>): Result<Resource> {
    if (!r.ok) return this.#settled(action, target, r);
    const m = this.#mask(r.value, g);
    this.#record({ action, resource: target, outcome: 'allow', ...(m.changed.length ? { fields: m.changed } : {}) });
    return ok(m.resource);
  }

  #written(action: Action, target: string, g: Gate, r: Result<WriteOutcome>): Result<WriteOutcome> {
    if (!r.ok) return this.#settled(action, target, r);
    const m = this.#mask(r.value.resource, g);
    const written = `${r.value.resource.resourceType}/${r.value.resource.id ?? ''}`;
    this.#record({ action, resource: written, outcome: 'allow', ...(m.changed.length ? { fields: m.changed } : {}) });
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
    this.#record({ action, resource: target, outcome: 'allow', ...(changed.size ? { fields: [...changed] } : {}) });
    return b.entry ? { ...b, entry } : b;
  }

  /** A store answer after an allow: refused rows are recorded as denials, other errors as failures. */
  #settled<T>(action: Action, target: string, r: Result<T>): Result<T> {
    if (r.ok) this.#record({ action, resource: target, outcome: 'allow' });
    else if (r.error.kind === 'forbidden') return this.#deny(action, target, r.error.issues[0]?.message ?? 'refused', r);
    else this.#record({ action, resource: target, outcome: 'failure', reason: r.error.issues[0]?.message ?? r.error.kind });
    return r;
  }

  #deny<T extends Failure>(action: Action, target: string, reason: string, result: T): T {
    this.#record({ action, resource: target, outcome: 'deny', reason });
    return result;
  }

  #record(d: DecisionRecord): void {
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
      const targets = [
        caller.attributes.department ? `Organization/${caller.attributes.department}` : undefined,
        caller.attributes.practitioner ? `Practitioner/${caller.attributes.practitioner}` : undefined,
      ].filter((t): t is string => t !== undefined);
      return {
        ok: true,
        value: {
          kind: 'patients',
          predicate: CARE_PREDICATE,
          params: [targets, caller.userId, purpose === 'emergency'],
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
  return plan;
}

function admitWrite(
  type: string,
  fields: ReadonlyMap<string, FieldRule>,
  next: Resource,
  previous: Resource | undefined,
): Result<Resource> {
  const out: Record<string, unknown> = { ...(next as unknown as Record<string, unknown>) };
  const prev = previous as unknown as Record<string, unknown> | undefined;
  for (const [f, rule] of fields) {
    if (rule === 'read-only') {
      if (!sameJson(out[f], prev?.[f]))
        return fail('forbidden', `${type}.${f} is read-only for you: send it unchanged`, {
          code: 'forbidden',
          expression: `${type}.${f}`,
        });
      continue;
    }
    // A field the caller sees masked or not at all: on create it cannot be set; on update the
    // stored value is kept (what the caller sent back is the masked form).
    if (!prev) {
      if (out[f] !== undefined)
        return fail('forbidden', `${type}.${f} is ${rule} for you: you cannot set it`, {
          code: 'forbidden',
          expression: `${type}.${f}`,
        });
    } else if (prev[f] === undefined) delete out[f];
    else out[f] = prev[f];
  }
  return ok(out as unknown as Resource);
}

/** Top-level elements a search parameter's FHIRPath reads, e.g. `Patient.telecom.where(...)` -> telecom. */
export function fieldsOf(expression: string): string[] {
  return [...new Set([...expression.matchAll(/(?:^|[\s(|])[A-Z][A-Za-z]+\.([a-z][A-Za-z]*)/g)].map((m) => m[1]!))];
}

function sameJson(a: unknown, b: unknown): boolean {
  return stable(a) === stable(b);
}

function stable(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stable).join(',')}]`;
  if (v && typeof v === 'object')
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${stable((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  return v === undefined ? 'undefined' : JSON.stringify(v);
}
