// RecordError -> HTTP status and FHIR OperationOutcome, in one place; and the errors the HTTP
// layer answers itself, in the shape of the route they were meant for.
import type { FastifyReply, FastifyRequest } from 'fastify';
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

export const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const PLAIN_JSON = 'application/json; charset=utf-8';

/**
 * An error the HTTP layer answers itself (limits, malformed requests, timeouts, internal
 * errors), in the shape of the route it was meant for: an OperationOutcome under /fhir, the
 * JSON error shape `{error, message}` elsewhere.
 */
export interface Problem {
  status: number;
  /** FHIR issue type (OperationOutcome.issue.code). */
  code: OperationOutcomeIssue['code'];
  /** The `error` field of the JSON shape. */
  error: string;
  message: string;
}

/** FHIR routes answer OperationOutcomes; every other route the JSON error shape. */
export function isFhirUrl(url: string): boolean {
  return /^\/+fhir(?:[/?#]|$)/i.test(url);
}

export function problemBody(url: string, p: Problem): { contentType: string; body: string } {
  return isFhirUrl(url)
    ? { contentType: FHIR_JSON, body: JSON.stringify(simpleOutcome(p.code, p.message)) }
    : { contentType: PLAIN_JSON, body: JSON.stringify({ error: p.error, message: p.message }) };
}

export function sendProblem(req: FastifyRequest, reply: FastifyReply, p: Problem): FastifyReply {
  // An answer already on its way is not answered again. Fastify runs the hooks and handler
  // after one that answered when the client has gone meanwhile; a second answer would write
  // headers twice, and that error path ends the process (fastify 5.12 fallbackErrorHandler).
  if (req.work?.answering || reply.sent) return reply;
  const { contentType, body } = problemBody(req.url, p);
  return reply.code(p.status).type(contentType).send(body);
}
