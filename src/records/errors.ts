// Errors of the record store, in the domain's own vocabulary. The HTTP layer maps each
// kind to a status and an OperationOutcome; nothing here knows about HTTP.

export type RecordErrorKind =
  | 'bad-request' // malformed input, unknown or malformed search parameter (400)
  | 'not-found' // (404)
  | 'gone' // deleted (410)
  | 'conflict' // (409)
  | 'version-conflict' // stale If-Match (412)
  | 'precondition-failed' // conditional create matched several (412)
  | 'invalid' // fails validation or a business rule (422)
  | 'not-supported' // (501 for operations, 400 for parameters)
  | 'misdirected' // this site is not the active residency site (421)
  | 'forbidden'; // the access layer refused (403)

export interface RecordIssue {
  message: string;
  /** FHIRPath of the offending element, when known. */
  expression?: string;
  code?:
    | 'structure'
    | 'required'
    | 'value'
    | 'invariant'
    | 'invalid'
    | 'not-found'
    | 'deleted'
    | 'conflict'
    | 'not-supported'
    | 'business-rule'
    | 'processing'
    | 'too-costly'
    | 'forbidden'
    | 'security';
}

export interface RecordError {
  kind: RecordErrorKind;
  issues: RecordIssue[];
  /** For 'misdirected': the site that takes this write, and where it is. */
  activeSite?: { id: string; url: string };
}

export type Result<T, E = RecordError> = { ok: true; value: T } | { ok: false; error: E };

export const ok = <T>(value: T): { ok: true; value: T } => ({ ok: true, value });

export function fail(
  kind: RecordErrorKind,
  message: string,
  extra: Omit<RecordIssue, 'message'> = {},
): { ok: false; error: RecordError } {
  return { ok: false, error: { kind, issues: [{ message, ...extra }] } };
}

/** Thrown only inside a database transaction to roll it back; caught at the transaction boundary. */
export class RollbackWith extends Error {
  readonly error: RecordError;
  constructor(error: RecordError) {
    super(error.issues[0]?.message ?? error.kind);
    this.error = error;
  }
}
