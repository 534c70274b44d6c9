// Access control of one site: the policy documents, grants, per-request requesters and
// their record views, and the decision endpoint's explanation.
import type { Logger } from '../../common/index.ts';
import type { Db } from '../../db/index.ts';
import type { RecordStore, SearchParamTable } from '../../records/index.ts';
import { hmacSm3Keyed } from '../crypto/index.ts';
import { decide, defaultPurpose, policiesFor, type Caller } from './decide.ts';
import { AccessDocuments } from './documents.ts';
import { Grants, MAX_BREAK_GLASS_MINUTES, type Grant } from './grants.ts';
import { maskPlan, RecordAccess, type Requester } from './record-access.ts';
import { ACTIONS, PURPOSES, type Action, type Purpose, type Scenario } from './policy.ts';

export interface AccessControlOptions {
  db: Db;
  siteId: string;
  store: RecordStore;
  searchParams: SearchParamTable;
  /** A secret derived from the site's master key for a label (KMS deriveSecret); throws while sealed. */
  secret(label: string): Uint8Array;
  log: Logger;
  now?: () => Date;
}

/** Who is calling, as the HTTP layer resolved it. */
export type Principal =
  | { kind: 'anonymous' }
  | { kind: 'user'; userId: string; username: string; roles: readonly string[]; attributes: Readonly<Record<string, string>> }
  | { kind: 'service'; serviceId: string; serviceKind: string };

export type AccessErrorKind = 'unauthenticated' | 'forbidden' | 'bad-request' | 'not-found';
export interface AccessError {
  kind: AccessErrorKind;
  message: string;
}
type R<T> = { ok: true; value: T } | { ok: false; error: AccessError };
const fail = (kind: AccessErrorKind, message: string): { ok: false; error: AccessError } => ({
  ok: false,
  error: { kind, message },
});

export interface Explanation {
  decision: 'allow' | 'deny';
  reason?: string;
  purpose: Purpose;
  policies?: string[];
  scope?: string;
  scenario?: Scenario;
  /** For a field: its rule and the transform a response applies. */
  field?: { name: string; rule: string; transform: string };
  /** For a resource id: whether that row is inside the caller's scope. */
  resourceVisible?: boolean;
  policyVersions: Record<string, number>;
  maskingVersion: number;
}

export class AccessControl {
  readonly documents: AccessDocuments;
  readonly grants: Grants;
  readonly #o: AccessControlOptions;
  readonly #keys = new Map<string, (v: string) => string>();

  private constructor(o: AccessControlOptions, documents: AccessDocuments) {
    this.#o = o;
    this.documents = documents;
    this.grants = new Grants(o.db);
  }

  static async open(o: AccessControlOptions): Promise<AccessControl> {
    return new AccessControl(o, await AccessDocuments.open({ db: o.db, log: o.log.child({ component: 'access-documents' }) }));
  }

  #now(): Date {
    return this.#o.now?.() ?? new Date();
  }

  /** Turns a principal and the requested purpose into a requester, or says why not. */
  async requester(principal: Principal, purposeHeader: string | undefined): Promise<R<Requester>> {
    if (principal.kind === 'anonymous') return fail('unauthenticated', 'this API needs a Bearer access token (POST /auth/login)');
    const caller: Caller =
      principal.kind === 'user'
        ? { userId: principal.userId, roles: principal.roles, attributes: principal.attributes }
        : { userId: `service:${principal.serviceId}`, roles: [`service-${principal.serviceKind}`], attributes: {} };
    const policies = this.documents.policies();
    let purpose: Purpose | undefined;
    if (purposeHeader !== undefined) {
      if (!(PURPOSES as readonly string[]).includes(purposeHeader))
        return fail('bad-request', `X-Medmesh-Purpose must be one of ${PURPOSES.join(', ')} (got ${purposeHeader.slice(0, 40)})`);
      purpose = purposeHeader as Purpose;
    } else purpose = defaultPurpose(caller, policies);
    if (!purpose) return fail('forbidden', `no access policy exists for role(s) ${caller.roles.join(', ') || '(none)'}`);
    const usable = policiesFor(caller, purpose, policies);
    if (!usable.ok) return fail('forbidden', usable.reason);
    const requester: Requester = { caller, purpose, decisions: [] };
    if (purpose === 'emergency') {
      const active = await this.grants.list({ userId: caller.userId, kind: 'break-glass', activeAt: this.#now() });
      if (active.length === 0)
        return fail(
          'forbidden',
          'purpose emergency needs an active break-glass: POST /access/break-glass {"patient", "reason"} first',
        );
      requester.breakGlass = [...new Set(active.map((g) => g.reason))].join(' | ').slice(0, 1000);
      requester.breakGlassPatients = [...new Set(active.map((g) => g.patientId))];
    }
    return { ok: true, value: requester };
  }

  records(requester: Requester): RecordAccess {
    return new RecordAccess(
      {
        store: this.#o.store,
        siteId: this.#o.siteId,
        searchParams: this.#o.searchParams,
        documents: this.documents,
        now: () => this.#now(),
        pseudonyms: (scenario, caller) =>
          this.#pseudonyms(
            scenario === 'research' ? `research-project:${caller.attributes.project ?? ''}` : `masking:${scenario}`,
          ),
      },
      requester,
    );
  }

  /** Whether the caller's roles allow break-glass at all (checked before the request body). */
  mayBreakGlass(principal: Principal): { ok: true; value: { userId: string } } | { ok: false; error: AccessError } {
    if (principal.kind !== 'user')
      return fail(principal.kind === 'anonymous' ? 'unauthenticated' : 'forbidden', 'break-glass is for signed-in clinicians');
    const usable = policiesFor(
      { userId: principal.userId, roles: principal.roles, attributes: principal.attributes },
      'emergency',
      this.documents.policies(),
    );
    return usable.ok ? { ok: true, value: { userId: principal.userId } } : fail('forbidden', usable.reason);
  }

  /** Break-glass: a doctor or nurse opens one patient's record for an emergency, with a reason. */
  async breakGlass(principal: Principal, req: { patient: string; reason: string; minutes?: number }): Promise<R<Grant>> {
    const may = this.mayBreakGlass(principal);
    if (!may.ok) return may;
    const minutes = req.minutes ?? 60;
    if (!Number.isInteger(minutes) || minutes < 1 || minutes > MAX_BREAK_GLASS_MINUTES)
      return fail('bad-request', `minutes: 1 to ${MAX_BREAK_GLASS_MINUTES}`);
    const from = this.#now();
    const r = await this.grants.create({
      kind: 'break-glass',
      userId: may.value.userId,
      patientId: req.patient,
      reason: req.reason,
      validFrom: from,
      validUntil: new Date(from.getTime() + minutes * 60_000),
      grantedBy: may.value.userId,
    });
    return r.ok ? r : fail('bad-request', r.message);
  }

  /** The decision endpoint: would this caller see `field` of `resourceType` (row `id`) for `purpose`? */
  async explain(q: {
    caller: Caller;
    purpose: Purpose;
    action?: Action;
    resourceType: string;
    field?: string;
    id?: string;
  }): Promise<R<Explanation>> {
    const action = q.action ?? 'read';
    if (!ACTIONS.includes(action)) return fail('bad-request', `action must be one of ${ACTIONS.join(', ')}`);
    const policies = this.documents.policies();
    const versions = Object.fromEntries(
      [...policies.values()]
        .filter((p) => q.caller.roles.includes(p.role))
        .map((p) => [p.name, this.documents.versionOf('policy', p.name) ?? 0]),
    );
    const base = {
      purpose: q.purpose,
      policyVersions: versions,
      maskingVersion: this.documents.versionOf('masking', 'default') ?? 0,
    };
    const d = decide(
      { caller: q.caller, purpose: q.purpose, action, resourceType: q.resourceType, siteId: this.#o.siteId },
      policies,
    );
    if (!d.allowed) return { ok: true, value: { ...base, decision: 'deny', reason: d.reason } };
    const out: Explanation = { ...base, decision: 'allow', policies: d.policies, scope: d.scope, scenario: d.scenario };
    if (q.field) {
      const plan = maskPlan(q.resourceType, d.scenario, d.fields, this.documents.masking());
      out.field = { name: q.field, rule: d.fields.get(q.field) ?? 'allow', transform: plan.get(q.field) ?? 'keep' };
    }
    if (q.id) {
      const requester: Requester = { caller: q.caller, purpose: q.purpose, decisions: [] };
      const r = await this.records(requester).read(q.resourceType, q.id);
      if (!r.ok && r.error.kind === 'not-found') return fail('not-found', `${q.resourceType}/${q.id} does not exist`);
      out.resourceVisible = r.ok;
      if (!r.ok && r.error.kind === 'forbidden') {
        out.decision = 'deny';
        out.reason = r.error.issues[0]?.message ?? 'outside scope';
      }
    }
    return { ok: true, value: out };
  }

  #pseudonyms(label: string): (v: string) => string {
    let f = this.#keys.get(label);
    if (!f) {
      const mac = hmacSm3Keyed(this.#o.secret(`access|${label}`));
      f = (v: string) => mac(Buffer.from(v, 'utf8')).toString('hex').slice(0, 32);
      this.#keys.set(label, f);
    }
    return f;
  }
}
