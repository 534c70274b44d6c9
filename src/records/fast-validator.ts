// Medplum's validator crawls every element of every type's schema through generic typed
// values: about half the Node CPU of a create. This walks only the keys a resource has,
// with per-type plans compiled once from the same schemas, and answers `true` only when
// it is sure Medplum would find no error. Whatever it does not model (primitive
// extensions `_x`, contained resources, two choices of one element, nulls, empty items of arrays,
// fixed/pattern/sliced elements, a constraint that throws) answers `false`, and Medplum
// then decides and words the errors — so the outcome stays Medplum's. The differential
// test (fast-validator.test.ts) holds the two together on real and mutated resources.
import {
  capitalize,
  evalFhirPathTyped,
  fhirTypeToJsType,
  isResourceType,
  isValidCalendarDate,
  parseFhirPath,
  toTypedValue,
  tryGetDataType,
  UCUM,
  validationRegexes,
  type FhirPathAtom,
  type InternalSchemaElement,
  type InternalTypeSchema,
  type TypedValue,
} from '@medplum/core';

/** Medplum's own list of constraint keys it does not evaluate (validation.ts). */
const SKIPPED_CONSTRAINTS = new Set(['ele-1', 'dom-3', 'org-1', 'sdf-19']);
const MAX_STRING = 1024 * 1024;
const MAX_BASE64_BYTES = 1024 * 1024;
const INT_MIN = -2_147_483_648;
const INT_MAX = 2_147_483_647;

type PrimitiveCheck = (value: unknown) => boolean;

/** An invariant's expression; undefined when it does not parse: never "holds" (Medplum reports it). */
type CompiledConstraint = FhirPathAtom | undefined;

interface PropertyPlan {
  /** The schema element's key: `value[x]` for every `valueQuantity`, `valueString`, ... */
  group: string;
  choice: boolean;
  /** The value's type as Medplum types it (for constraints and the child plan). */
  type: string;
  isArray: boolean;
  min: number;
  max: number;
  primitive: PrimitiveCheck | undefined;
  /** The plan of a complex value; undefined when that type is not modelled here. */
  child: (() => TypePlan | undefined) | undefined;
  constraints: readonly CompiledConstraint[];
}

interface TypePlan {
  properties: ReadonlyMap<string, PropertyPlan>;
  /** For each element with min > 0, the keys any one of which satisfies it. */
  required: readonly (readonly string[])[];
  /** Root constraints; Medplum checks them on the resource only, not on nested types. */
  constraints: readonly CompiledConstraint[];
}

interface Walk {
  /** The FHIRPath variables Medplum gives an invariant evaluated on `context`. */
  variables: (context: TypedValue) => Record<string, TypedValue>;
}

export interface FastValidator {
  /** True only when Medplum's validateResource would report no error for this resource. */
  surelyValid(resource: { resourceType: string }): boolean;
}

export function createFastValidator(): FastValidator {
  const plans = new Map<InternalTypeSchema, TypePlan>();
  const ucum = toTypedValue(UCUM);

  const planOf = (schema: InternalTypeSchema): TypePlan => {
    let plan = plans.get(schema);
    if (!plan) {
      plan = compileType(schema, planOf);
      plans.set(schema, plan);
    }
    return plan;
  };

  return {
    surelyValid(resource) {
      const type = resource.resourceType;
      if (typeof type !== 'string' || !isResourceType(type)) return false;
      const schema = tryGetDataType(type);
      if (!schema) return false;
      const root: TypedValue = { type, value: resource };
      const walk: Walk = {
        variables: (context) => ({ '%context': context, '%ucum': ucum, '%resource': root, '%rootResource': root }),
      };
      try {
        const plan = planOf(schema);
        return walkObject(resource, plan, walk, true) && holdAll(plan.constraints, root, walk);
      } catch {
        return false; // whatever surprised the fast path, Medplum decides
      }
    },
  };
}

function compileType(schema: InternalTypeSchema, planOf: (schema: InternalTypeSchema) => TypePlan): TypePlan {
  const properties = new Map<string, PropertyPlan>();
  const required: string[][] = [];
  for (const [group, element] of Object.entries(schema.elements)) {
    const keys = compileElement(schema, group, element, properties, planOf);
    if (element.min > 0) required.push(keys);
  }
  return { properties, required, constraints: compileConstraints(schema.constraints) };
}

/** Adds the element's JSON keys to `properties` (none when it is not modelled) and returns them. */
function compileElement(
  schema: InternalTypeSchema,
  group: string,
  element: InternalSchemaElement,
  properties: Map<string, PropertyPlan>,
  planOf: (schema: InternalTypeSchema) => TypePlan,
): string[] {
  if (element.pattern || element.fixed || element.slicing || !element.type.length || element.max < 1) return [];
  const choice = group.endsWith('[x]');
  const base = choice ? group.slice(0, -3) : group;
  const constraints = compileConstraints(element.constraints);
  const keys: string[] = [];
  for (const t of choice ? element.type : element.type.slice(0, 1)) {
    const code = t.code;
    // As Medplum's getTypedPropertyValueWithSchema types a value.
    const type = code === 'Element' || code === 'BackboneElement' ? element.type[0]!.code : code;
    const key = choice ? base + capitalize(code) : base;
    const primitive = primitiveCheck(type);
    let child: PropertyPlan['child'];
    if (!primitive) {
      // As Medplum's crawler finds the schema of a nested value: the parent's inner types first.
      const childSchema = schema.innerTypes.find((s) => s.name === type) ?? tryGetDataType(type);
      // Resources inside resources (contained, Bundle entries) change %resource: not modelled.
      const modelled = childSchema && type !== 'Resource' && !isResourceType(type);
      child = modelled ? () => planOf(childSchema) : undefined;
      if (!child) continue;
    }
    properties.set(key, {
      group,
      choice,
      type,
      isArray: element.isArray === true,
      min: element.min,
      max: element.max,
      primitive,
      child,
      constraints,
    });
    keys.push(key);
  }
  return keys;
}

function compileConstraints(constraints: InternalTypeSchema['constraints']): CompiledConstraint[] {
  return (constraints ?? [])
    .filter((c) => c.severity === 'error' && !SKIPPED_CONSTRAINTS.has(c.key))
    .map((c) => parseOrUndefined(c.expression));
}

function parseOrUndefined(expression: string): FhirPathAtom | undefined {
  try {
    return parseFhirPath(expression);
  } catch {
    return undefined;
  }
}

function walkObject(obj: Record<string, unknown>, plan: TypePlan, walk: Walk, isRoot: boolean): boolean {
  let choices: string[] | undefined;
  let keys = 0;
  for (const key of Object.keys(obj)) {
    keys++;
    const prop = plan.properties.get(key);
    if (!prop) {
      if (isRoot && key === 'resourceType') continue;
      return false;
    }
    if (prop.choice) {
      // Medplum only warns of two choices of one element and validates the first type's;
      // left to it, should that warning become the error its comment says it should be.
      if (choices?.includes(prop.group)) return false;
      (choices ??= []).push(prop.group);
    }
    const value = obj[key];
    // Medplum reads an empty value ('', [], {}) as an absent one: no error unless required,
    // but an empty choice (`effectivePeriod: {}`) is an unknown property to it.
    if (isAbsent(value)) {
      if (prop.choice) return false;
      continue;
    }
    if (prop.isArray) {
      if (!Array.isArray(value) || value.length === 0 || value.length < prop.min || value.length > prop.max) return false;
      for (const item of value) if (!checkValue(item, prop, walk)) return false;
    } else if (Array.isArray(value) || !checkValue(value, prop, walk)) {
      return false;
    }
  }
  if (keys === 0) return false;
  for (const anyOf of plan.required) {
    if (anyOf.every((k) => isAbsent(obj[k]))) return false;
  }
  return true;
}

function isAbsent(value: unknown): boolean {
  if (value === undefined || value === '') return true;
  if (Array.isArray(value)) return value.length === 0;
  return typeof value === 'object' && value !== null && Object.keys(value).length === 0;
}

function checkValue(value: unknown, prop: PropertyPlan, walk: Walk): boolean {
  if (prop.primitive) {
    if (!prop.primitive(value)) return false;
  } else {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
    const plan = prop.child?.();
    if (!plan || !walkObject(value as Record<string, unknown>, plan, walk, false)) return false;
  }
  return prop.constraints.length === 0 || holdAll(prop.constraints, { type: prop.type, value }, walk);
}

function holdAll(constraints: readonly CompiledConstraint[], context: TypedValue, walk: Walk): boolean {
  if (constraints.length === 0) return true;
  const variables = walk.variables(context);
  for (const atom of constraints) {
    if (!atom) return false;
    try {
      const result = evalFhirPathTyped(atom, [context], variables);
      if (result.length !== 1 || result[0]!.value !== true) return false;
    } catch {
      return false;
    }
  }
  return true;
}

/** The checks Medplum's validatePrimitiveType makes, per type; undefined for complex types. */
function primitiveCheck(type: string): PrimitiveCheck | undefined {
  const js = (fhirTypeToJsType as Record<string, 'string' | 'number' | 'boolean' | undefined>)[type];
  switch (js) {
    case undefined:
      return undefined;
    case 'boolean':
      return (v) => typeof v === 'boolean';
    case 'number': {
      const [lo, hi] =
        type === 'integer'
          ? [INT_MIN, INT_MAX]
          : type === 'positiveInt'
            ? [1, INT_MAX]
            : type === 'unsignedInt'
              ? [0, INT_MAX]
              : [-Infinity, Infinity];
      const integer = type === 'integer' || type === 'positiveInt' || type === 'unsignedInt';
      return (v) => typeof v === 'number' && Number.isFinite(v) && (!integer || (Number.isInteger(v) && v >= lo && v <= hi));
    }
    case 'string': {
      if (type === 'base64Binary') return (v) => typeof v === 'string' && isBase64Within(v, MAX_BASE64_BYTES);
      const regex = validationRegexes[type];
      const calendar = type === 'date' || type === 'dateTime' || type === 'instant';
      return (v) =>
        typeof v === 'string' &&
        v.length <= MAX_STRING &&
        v.trim() !== '' &&
        (!regex || regex.test(v)) &&
        (!calendar || isValidCalendarDate(v));
    }
  }
}

function isBase64Within(s: string, maxBytes: number): boolean {
  if (s.length === 0 || s.length % 4 !== 0) return false;
  const padding = s.endsWith('==') ? 2 : s.endsWith('=') ? 1 : 0;
  const data = padding ? s.slice(0, -padding) : s;
  return data.length > 0 && /^[A-Za-z\d+/]+$/.test(data) && Math.floor((s.length * 3) / 4) - padding <= maxBytes;
}
