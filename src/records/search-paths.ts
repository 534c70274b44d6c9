// Compiled accessors for the simple search expressions (today all we index: `Patient.name.family`,
// `Observation.effective`, `Patient.telecom.where(system='phone')`, `X.subject.where(resolve()
// is Patient)`, `Condition.onset.ofType(Period)`, unions of these). Walking the properties
// directly gives what FHIRPath gives at a fraction of the cost on every write; anything else
// (other functions, operators, elements of no single named type) stays with FHIRPath. search-paths.test.ts holds the two
// to the same answers over every indexed parameter.
import { getDataType } from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';

export interface TypedValue {
  type: string;
  value: unknown;
}

export type PathExtractor = (resource: Resource) => TypedValue[];

type Obj = Record<string, unknown>;
type Step = { key: string; type: string } | { choice: Array<{ key: string; type: string }> };
type Filter = { kind: 'equals'; property: string; value: string } | { kind: 'resolves-to'; resourceType: string };

const BRANCH = new RegExp(
  String.raw`^([A-Z][A-Za-z]+)((?:\.[a-z][A-Za-z]*)+)` +
    String.raw`(?:\.where\(([a-z][A-Za-z]*)='([^'\\]*)'\)|\.where\(resolve\(\) is ([A-Z][A-Za-z]+)\)|\.ofType\(([A-Za-z]+)\))?$`,
);

/** An accessor equivalent to the expression's FHIRPath, or undefined when it is not a simple one. */
export function compileSearchPath(expression: string): PathExtractor | undefined {
  const branches = expression.split(' | ').map((b) => compileBranch(b.trim()));
  if (branches.some((b) => b === undefined)) return undefined;
  const fns = branches as PathExtractor[];
  if (fns.length === 1) return fns[0];
  // A union drops repeated values; @medplum/core compares them as JavaScript does (===), so
  // equal strings collapse and two equal-looking objects stay two.
  return (r) => {
    const seen = new Set<unknown>();
    return fns.flatMap((f) => f(r)).filter((v) => (seen.has(v.value) ? false : (seen.add(v.value), true)));
  };
}

function compileBranch(branch: string): PathExtractor | undefined {
  const m = BRANCH.exec(branch.startsWith('(') && branch.endsWith(')') ? branch.slice(1, -1) : branch);
  if (!m) return undefined;
  const [, root = '', dotted = '', whereProp, whereValue, resolvesTo, ofType] = m;
  const names = dotted.slice(1).split('.');
  const steps: Step[] = [];
  let type = root;
  for (const [i, name] of names.entries()) {
    const step = stepOf(type, name, ofType !== undefined && i === names.length - 1 ? ofType : undefined);
    if (!step) return undefined;
    // A choice element can only end the path (its value's type is known from its key).
    if ('choice' in step && i !== names.length - 1) return undefined;
    steps.push(step);
    if ('key' in step) type = step.type;
  }
  const filter: Filter | undefined =
    whereProp !== undefined
      ? { kind: 'equals', property: whereProp, value: whereValue! }
      : resolvesTo !== undefined
        ? { kind: 'resolves-to', resourceType: resolvesTo }
        : undefined;
  if (filter?.kind === 'resolves-to' && type !== 'Reference') return undefined;
  return (resource) => {
    if (resource.resourceType !== root) return [];
    let current: TypedValue[] = [{ type: root, value: resource }];
    for (const step of steps) current = current.flatMap(({ value }) => take(value as Obj, step));
    return filter ? current.filter((v) => keep(v.value, filter)) : current;
  };
}

function stepOf(typeName: string, name: string, ofType: string | undefined): Step | undefined {
  let elements;
  try {
    elements = getDataType(typeName).elements;
  } catch {
    return undefined;
  }
  const plain = elements[name];
  if (plain) {
    const code = plain.type.length === 1 ? plain.type[0]!.code : undefined;
    // (@medplum/core names backbone types, e.g. EncounterParticipant; a bare one goes to FHIRPath.)
    if (!code || code === 'BackboneElement' || code === 'Element' || ofType !== undefined) return undefined;
    return { key: name, type: code };
  }
  const choice = elements[`${name}[x]`];
  if (!choice) return undefined;
  const types = choice.type.map((t) => t.code).filter((c) => ofType === undefined || c === ofType);
  if (types.length === 0) return undefined;
  return { choice: types.map((t) => ({ key: name + t.charAt(0).toUpperCase() + t.slice(1), type: t })) };
}

// FHIRPath's rules as @medplum/core applies them: an array gives each of its members (even
// null or empty ones); a single value counts only when not empty ('' or {}); of a choice
// element, the first type present in the definition's order.
function take(obj: Obj | undefined, step: Step): TypedValue[] {
  if (obj === null || typeof obj !== 'object') return [];
  const hit = 'key' in step ? step : step.choice.find((c) => obj[c.key] !== undefined);
  if (!hit) return [];
  const { type } = hit;
  const v = obj[hit.key];
  if (Array.isArray(v)) return v.map((x: unknown) => ({ type, value: x ?? undefined }));
  return isEmpty(v) ? [] : [{ type, value: v }];
}

function isEmpty(v: unknown): boolean {
  if (v === null || v === undefined || v === '') return true;
  return typeof v === 'object' && Object.keys(v).length === 0;
}

function keep(value: unknown, filter: Filter): boolean {
  if (value === null || typeof value !== 'object') return false;
  const o = value as Obj;
  if (filter.kind === 'equals') return o[filter.property] === filter.value;
  return referenceType(o) === filter.resourceType;
}

/** The type FHIRPath's resolve() gives a Reference without fetching it (as @medplum/core does). */
function referenceType(ref: Obj): string | undefined {
  const contained = ref.resource as { resourceType?: unknown } | undefined;
  if (contained && typeof contained === 'object')
    return typeof contained.resourceType === 'string' ? contained.resourceType : undefined;
  let s: string | undefined;
  if (typeof ref.reference === 'string' && ref.reference) s = ref.reference;
  else if (typeof ref.type === 'string' && ref.identifier && typeof ref.identifier === 'object') return ref.type;
  if (s === undefined) return undefined;
  if (s.includes('?')) return s.split('?')[0];
  if (s.includes('/')) return s.split('/')[0];
  return undefined;
}
