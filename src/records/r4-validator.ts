// Is a resource valid R4? Medplum's validator (structure, cardinality, types, invariants)
// plus the required code bindings it does not check. Ordinary resources take the fast
// path (fast-validator.ts, the same verdict at a tenth of the cost); anything else, and
// every invalid resource, goes through Medplum, which words the errors.
import { OperationOutcomeError, validateResource } from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';
import { ok, type RecordIssue, type Result } from './errors.ts';
import { createFastValidator } from './fast-validator.ts';
import { buildBindingTable, checkRequiredBindings } from './required-bindings.ts';

export interface R4Validator {
  validate(resource: Resource): Result<Resource>;
}

/** Compiles lazily per type; needs loadFhirDefinitions() to have run. */
export function createR4Validator(resourceTypes: readonly string[]): R4Validator {
  const bindings = buildBindingTable(resourceTypes);
  const fast = createFastValidator();
  return {
    validate(resource) {
      if (!fast.surelyValid(resource)) {
        const structural = medplumIssues(resource);
        if (structural.length) return { ok: false, error: { kind: 'invalid', issues: structural } };
      }
      const issues = checkRequiredBindings(resource, bindings);
      if (issues.length) return { ok: false, error: { kind: 'invalid', issues } };
      return ok(resource);
    },
  };
}

function medplumIssues(resource: Resource): RecordIssue[] {
  try {
    validateResource(resource);
    return [];
  } catch (e) {
    if (!(e instanceof OperationOutcomeError)) throw e;
    const issues: RecordIssue[] = (e.outcome.issue ?? [])
      .filter((i) => i.severity === 'error' || i.severity === 'fatal')
      .map((i) => ({
        message: i.details?.text ?? i.diagnostics ?? 'invalid',
        code: 'invalid',
        ...(i.expression?.[0] ? { expression: i.expression[0] } : {}),
      }));
    return issues.length ? issues : [{ message: 'invalid resource', code: 'invalid' }];
  }
}
