// RecordError -> HTTP status and FHIR OperationOutcome, in one place.
import type { OperationOutcome, OperationOutcomeIssue } from '@medplum/fhirtypes';
import type { RecordError, RecordErrorKind } from '../records/index.ts';

const STATUS: Record<RecordErrorKind, number> = {
  'bad-request': 400,
  'not-found': 404,
  gone: 410,
  conflict: 409,
  'version-conflict': 412,
  'precondition-failed': 412,
  invalid: 422,
  'not-supported': 400,
  misdirected: 421,
  forbidden: 403,
};

export function statusOf(error: RecordError): number {
  return STATUS[error.kind];
}

export function outcomeOf(error: RecordError): OperationOutcome {
  return {
    resourceType: 'OperationOutcome',
    issue: error.issues.map((i): OperationOutcomeIssue => ({
      severity: 'error',
      code: i.code ?? 'processing',
      diagnostics: i.message,
      ...(i.expression ? { expression: [i.expression] } : {}),
    })),
  };
}

export function simpleOutcome(
  code: OperationOutcomeIssue['code'],
  message: string,
  severity: OperationOutcomeIssue['severity'] = 'error',
): OperationOutcome {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, diagnostics: message }] };
}
