// Which search parameters are indexed, per type. Definitions (type, FHIRPath) come from
// the R4 SearchParameter bundle; the CapabilityStatement is built from this same table,
// so it never claims a parameter we do not index.
import { getSearchParameter, parseFhirPath, type FhirPathAtom } from '@medplum/core';
import { SUPPORTED_TYPES, type SupportedType } from './resource-types.ts';
import { compileSearchPath, type PathExtractor } from './search-paths.ts';

export type IndexedParamType = 'token' | 'string' | 'date' | 'reference';

export interface IndexedParam {
  code: string;
  type: IndexedParamType;
  /** The definition's FHIRPath, narrowed to this resource type. */
  expression: string;
  /** The expression parsed once, at start-up. */
  atom: FhirPathAtom;
  /** A direct accessor giving the same values, when the expression is a simple path. */
  extract?: PathExtractor;
  documentation?: string;
  /**
   * Set on a HumanName `name` whose type also indexes `family` and `given` on the same
   * element: those parts are indexed once, under their own codes, and a `name` search or sort
   * reads the rows of all three (FHIR: name matches family, given, prefix, suffix or text).
   * One index row fewer per family or given name, and the same matches.
   */
  nameParts?: { family: string; given: string };
}

/** The codes whose index rows answer a search or sort on `def`. */
export function rowCodes(def: IndexedParam): readonly string[] {
  return def.nameParts ? [def.code, def.nameParts.family, def.nameParts.given] : [def.code];
}

const WANTED = [
  'identifier',
  'name',
  'family',
  'given',
  'birthdate',
  'gender',
  'phone',
  'address-city',
  'organization',
  'general-practitioner',
  'patient',
  'subject',
  'encounter',
  'date',
  'code',
  'status',
  'category',
  'class',
  'type',
  'clinical-status',
  'onset-date',
  'recorded-date',
  'intent',
  'authored',
  'started',
  'modality',
  'performer',
  'requester',
  'participant',
  'service-provider',
] as const;

export type SearchParamTable = ReadonlyMap<string, ReadonlyMap<string, IndexedParam>>;

/** Call after loadFhirDefinitions(). */
export function buildSearchParamTable(): SearchParamTable {
  const table = new Map<string, Map<string, IndexedParam>>();
  for (const type of SUPPORTED_TYPES) {
    const params = new Map<string, IndexedParam>();
    for (const code of WANTED) {
      const def = getSearchParameter(type, code);
      if (!def?.expression || !isIndexedType(def.type)) continue;
      const expression = narrow(def.expression, type);
      if (!expression) continue;
      const extract = compileSearchPath(expression);
      params.set(code, {
        code,
        type: def.type,
        expression,
        atom: parseFhirPath(expression),
        ...(extract ? { extract } : {}),
        ...(def.description ? { documentation: def.description } : {}),
      });
    }
    const name = params.get('name');
    if (
      name &&
      name.expression === `${type}.name` &&
      params.get('family')?.expression === `${type}.name.family` &&
      params.get('given')?.expression === `${type}.name.given`
    ) {
      name.nameParts = { family: 'family', given: 'given' };
    }
    table.set(type, params);
  }
  return table;
}

function isIndexedType(t: string | undefined): t is IndexedParamType {
  return t === 'token' || t === 'string' || t === 'date' || t === 'reference';
}

/** Keeps only the union branches of a shared expression that apply to `type`. */
function narrow(expression: string, type: SupportedType): string {
  return expression
    .split(' | ')
    .map((p) => p.trim())
    .filter((p) => p.startsWith(`${type}.`) || p.startsWith(`(${type}.`))
    .join(' | ');
}
