// The one error vocabulary of the HTTP layer. Every refusal is a Problem: a status, a stable
// code, a message for people; `sendProblem` answers it in the shape of the route it was meant
// for — an OperationOutcome under /fhir, the JSON error shape `{code, message, ...details}`
// everywhere else. Domain errors become Problems through the mappers below, each with its
// status table in one place; no route builds an error body by hand.
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { OperationOutcome, OperationOutcomeIssue } from '@medplum/fhirtypes';
import type { ImagingError, ImagingErrorKind } from '../imaging/index.ts';
import type { RecordError, RecordErrorKind, RecordIssue } from '../records/index.ts';
import type { AccessError, AccessErrorKind } from '../security/access/index.ts';
import type { IdentityError, IdentityErrorKind } from '../security/identity/index.ts';
import { KmsError, type KmsErrorCode } from '../security/kms/index.ts';

type IssueType = OperationOutcomeIssue['code'];

export interface Problem {
  status: number;
  /** The stable `code` of the JSON shape (e.g. `bad-request`, `sealed`). */
  code: string;
  message: string;
  /** FHIR issue type of the OperationOutcome (default: from the status). */
  fhir?: IssueType;
  /** FHIR: every issue of a record error (with expressions), instead of one from the message. */
  issues?: readonly RecordIssue[];
  /** JSON: fields beside code and message (e.g. the issues of a form, a retry hint). */
  details?: Record<string, unknown>;
}

/** The code of the JSON shape for a status, when the route names no finer one. */
const CODE_OF_STATUS: Record<number, string> = {
  400: 'bad-request',
  401: 'unauthenticated',
  403: 'forbidden',
  404: 'not-found',
  406: 'not-acceptable',
  408: 'timeout',
  409: 'conflict',
  410: 'gone',
  412: 'precondition-failed',
  413: 'too-large',
  414: 'uri-too-long',
  415: 'unsupported-media-type',
  421: 'misdirected',
  422: 'invalid',
  429: 'too-many-requests',
  431: 'headers-too-large',
  500: 'internal',
  501: 'not-implemented',
  502: 'peer-unavailable',
  503: 'unavailable',
  504: 'timeout',
};

const FHIR_OF_STATUS: Record<number, IssueType> = {
  400: 'invalid',
  401: 'login',
  403: 'forbidden',
  404: 'not-found',
  408: 'timeout',
  409: 'conflict',
  410: 'deleted',
  412: 'conflict',
  413: 'too-costly',
  415: 'not-supported',
  422: 'processing',
  500: 'exception',
  501: 'not-supported',
  503: 'transient',
  504: 'timeout',
};

/** A Problem; the code defaults to the status's (`bad-request` for 400, and so on). */
export function problem(
  status: number,
  message: string,
  o: { code?: string; fhir?: IssueType; details?: Record<string, unknown> } = {},
): Problem {
  return { status, code: o.code ?? CODE_OF_STATUS[status] ?? `http-${status}`, message, ...o };
}

// ---- domain errors ---------------------------------------------------------------------------

const RECORD_STATUS: Record<RecordErrorKind, number> = {
  'bad-request': 400,
  'not-found': 404,
  gone: 410,
  conflict: 409,
  'version-conflict': 412,
  'precondition-failed': 412,
  invalid: 422,
  'not-supported': 400,
  misdirected: 421,
  fenced: 503,
  forbidden: 403,
};

export function statusOf(error: RecordError): number {
  return RECORD_STATUS[error.kind];
}

export function recordProblem(error: RecordError): Problem {
  return {
    status: statusOf(error),
    code: error.kind,
    message: error.issues.map((i) => i.message).join('; '),
    issues: error.issues,
    // The JSON shape keeps what each issue names (its FHIRPath), as the OperationOutcome does.
    ...(error.issues.some((i) => i.expression) ? { details: { issues: error.issues } } : {}),
  };
}

const IMAGING_STATUS: Record<ImagingErrorKind, number> = {
  invalid: 400,
  'too-large': 413,
  'wrong-study': 409,
  'not-held-here': 403,
  forbidden: 403,
  'not-found': 404,
  corrupt: 500,
  sealed: 503,
  'storage-failed': 503,
};

export function imagingProblem(e: ImagingError): Problem {
  return problem(IMAGING_STATUS[e.kind], e.message, { code: e.kind });
}

const ACCESS_STATUS: Record<AccessErrorKind, number> = {
  unauthenticated: 401,
  forbidden: 403,
  'bad-request': 400,
  'not-found': 404,
};

export function accessProblem(e: AccessError): Problem {
  return problem(ACCESS_STATUS[e.kind], e.message, { code: e.kind });
}

const IDENTITY_STATUS: Record<IdentityErrorKind, number> = {
  'bad-request': 400,
  'invalid-credentials': 401,
  'second-factor-required': 401,
  'second-factor-invalid': 401,
  'second-factor-replayed': 401,
  'user-disabled': 403,
  'token-invalid': 401,
  'token-expired': 401,
  'token-revoked': 401,
  'unknown-service': 401,
  'issuer-unavailable': 503,
};

export function identityProblem(e: IdentityError): Problem {
  return problem(IDENTITY_STATUS[e.kind], e.message, { code: e.kind });
}

const KMS_STATUS: Record<KmsErrorCode, number> = {
  'not-initialized': 409,
  'already-initialized': 409,
  sealed: 503,
  'bad-share': 400,
  'share-of-other-key': 400,
  'duplicate-share': 409,
  'untrusted-owner': 403,
  'unknown-key': 404,
  'key-exists': 409,
  'version-destroyed': 410,
  'version-below-minimum': 409,
  'not-exportable': 403,
  'not-approved': 403,
  'bad-request': 400,
};

/** A KmsError as a Problem; anything else is not a domain refusal (undefined: let it fail). */
export function kmsProblem(e: unknown): Problem | undefined {
  return e instanceof KmsError ? problem(KMS_STATUS[e.code], e.message, { code: e.code }) : undefined;
}

// ---- the two shapes --------------------------------------------------------------------------

export function outcomeOf(error: RecordError): OperationOutcome {
  return outcomeFor(recordProblem(error));
}

function outcomeFor(p: Problem): OperationOutcome {
  const issues = p.issues ?? [{ message: p.message }];
  return {
    resourceType: 'OperationOutcome',
    issue: issues.map((i): OperationOutcomeIssue => ({
      severity: 'error',
      code: i.code ?? p.fhir ?? FHIR_OF_STATUS[p.status] ?? 'processing',
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

/** FHIR routes answer OperationOutcomes; every other route the JSON error shape. */
export function isFhirUrl(url: string): boolean {
  return /^\/+fhir(?:[/?#]|$)/i.test(url);
}

export function problemBody(url: string, p: Problem): { contentType: string; body: string } {
  return isFhirUrl(url)
    ? { contentType: FHIR_JSON, body: JSON.stringify(outcomeFor(p)) }
    : { contentType: PLAIN_JSON, body: JSON.stringify({ code: p.code, message: p.message, ...p.details }) };
}

export function sendProblem(req: FastifyRequest, reply: FastifyReply, p: Problem): FastifyReply {
  // An answer already on its way is not answered again. Fastify runs the hooks and handler
  // after one that answered when the client has gone meanwhile; a second answer would write
  // headers twice, and that error path ends the process (fastify 5.12 fallbackErrorHandler).
  if (req.work?.answering || reply.sent) return reply;
  const { contentType, body } = problemBody(req.url, p);
  return reply.code(p.status).type(contentType).send(body);
}
