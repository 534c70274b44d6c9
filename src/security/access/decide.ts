// The decision engine: (caller, purpose, action, resource type) -> allowed with a row scope,
// field rules and a masking scenario, or denied with the reason. Pure: no I/O.
import {
  FIELD_RULES,
  scenarioOf,
  type AccessPolicy,
  type Action,
  type FieldRule,
  type Purpose,
  type Scenario,
  type Scope,
} from './policy.ts';

export interface Caller {
  userId: string;
  roles: readonly string[];
  attributes: Readonly<Record<string, string>>;
}

export type Decision =
  | { allowed: true; scope: Scope; fields: ReadonlyMap<string, FieldRule>; scenario: Scenario; policies: string[] }
  | { allowed: false; reason: string };

const SCOPE_RANK: Record<Scope, number> = { aggregate: 0, own: 1, care: 2, all: 3 };
const INDIVIDUAL: ReadonlySet<Action> = new Set(['read', 'vread', 'history', 'create', 'update', 'delete']);

/** The policies of the caller's roles that admit `purpose`, or why none does. */
export function policiesFor(
  caller: Caller,
  purpose: Purpose,
  policies: ReadonlyMap<string, AccessPolicy>,
): { ok: true; value: AccessPolicy[] } | { ok: false; reason: string } {
  const mine = caller.roles.map((r) => policies.get(r)).filter((p): p is AccessPolicy => p !== undefined);
  if (mine.length === 0)
    return { ok: false, reason: `no access policy exists for role(s) ${caller.roles.join(', ') || '(none)'}` };
  const usable = mine.filter((p) => p.purposes.includes(purpose) && (purpose !== 'emergency' || p.breakGlass));
  if (usable.length === 0)
    return {
      ok: false,
      reason:
        `purpose ${purpose} is not permitted for role(s) ${caller.roles.join(', ')} ` +
        `(permitted: ${[...new Set(mine.flatMap((p) => p.purposes))].join(', ')})`,
    };
  const complete = usable.filter((p) => (p.requiredAttributes ?? []).every((a) => caller.attributes[a]));
  if (complete.length === 0)
    return {
      ok: false,
      reason: `role ${usable[0]!.role} needs the user attribute(s) ${(usable[0]!.requiredAttributes ?? []).join(', ')}`,
    };
  return { ok: true, value: complete };
}

/** The purpose a caller gets when the request names none: the first purpose of their first policy. */
export function defaultPurpose(caller: Caller, policies: ReadonlyMap<string, AccessPolicy>): Purpose | undefined {
  for (const r of caller.roles) {
    const p = policies.get(r);
    if (p) return p.purposes[0];
  }
  return undefined;
}

export function decide(
  q: { caller: Caller; purpose: Purpose; action: Action; resourceType: string; siteId: string },
  policies: ReadonlyMap<string, AccessPolicy>,
): Decision {
  const usable = policiesFor(q.caller, q.purpose, policies);
  if (!usable.ok) return { allowed: false, reason: usable.reason };
  let scope: Scope | undefined;
  const fields = new Map<string, FieldRule>();
  const matched: string[] = [];
  let ruleCount = 0;
  for (const p of usable.value) {
    for (const rule of p.rules) {
      if (!rule.resourceTypes.includes(q.resourceType) && !rule.resourceTypes.includes('*')) continue;
      if (!rule.actions.includes(q.action)) continue;
      if (!attributesMatch(rule.when, q.caller.attributes, q.siteId)) continue;
      if (rule.scope === 'aggregate' && INDIVIDUAL.has(q.action)) continue;
      // Fields: the most permissive rule wins; a field a rule does not list is allowed by it.
      const listed = new Set([...fields.keys(), ...Object.keys(rule.fields ?? {})]);
      for (const f of listed) {
        const mine = rule.fields?.[f] ?? 'allow';
        const before = ruleCount === 0 ? mine : (fields.get(f) ?? 'allow');
        fields.set(f, FIELD_RULES.indexOf(mine) < FIELD_RULES.indexOf(before) ? mine : before);
      }
      ruleCount++;
      if (scope === undefined || SCOPE_RANK[rule.scope] > SCOPE_RANK[scope]) scope = rule.scope;
      if (!matched.includes(p.name)) matched.push(p.name);
    }
  }
  if (scope === undefined) return { allowed: false, reason: denial(q, usable.value) };
  for (const [f, r] of fields) if (r === 'allow') fields.delete(f);
  return { allowed: true, scope, fields, scenario: scenarioOf(q.purpose), policies: matched };
}

function attributesMatch(
  when: AccessPolicy['rules'][number]['when'],
  attrs: Readonly<Record<string, string>>,
  siteId: string,
): boolean {
  if (!when) return true;
  if (when.department && !when.department.includes(attrs.department ?? '')) return false;
  if (when.title && !when.title.includes(attrs.title ?? '')) return false;
  if (when.site && !when.site.includes(siteId)) return false;
  return true;
}

function denial(q: { caller: Caller; purpose: Purpose; action: Action; resourceType: string }, usable: AccessPolicy[]): string {
  const roles = usable.map((p) => p.role).join(', ');
  const searchOnly = usable.some((p) =>
    p.rules.some((r) => r.scope === 'aggregate' && (r.resourceTypes.includes(q.resourceType) || r.resourceTypes.includes('*'))),
  );
  if (searchOnly && INDIVIDUAL.has(q.action))
    return (
      `role ${roles} may not ${q.action} individual ${q.resourceType} records for purpose ${q.purpose}: ` +
      'access is search-only and de-identified'
    );
  return `role ${roles} may not ${q.action} ${q.resourceType} for purpose ${q.purpose}`;
}
