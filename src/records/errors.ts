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
  | 'fenced' // this site holds no unexpired write lease of the shard, and no other site is known to (503)
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

/**
 * A write refused inside its statement because this site does not hold the shard's write
 * lease now (medmesh_fence, migration 0020: SQLSTATE MMF01): another site holds it
 * (`holder`), or this site's own lease ran out (`expired`) or was never granted.
 */
export class FencedError extends Error {
  readonly shard: string;
  readonly holder: string | undefined;
  readonly epoch: bigint | undefined;
  readonly expired: boolean;

  constructor(f: { shard: string; holder?: string | undefined; epoch?: bigint | undefined; expired?: boolean }) {
    super(`shard ${f.shard}: this site holds no write lease of it now`);
    this.name = 'FencedError';
    this.shard = f.shard;
    this.holder = f.holder;
    this.epoch = f.epoch;
    this.expired = f.expired ?? false;
  }

  /** The FencedError a database error stands for, if it is one. */
  static from(e: unknown): FencedError | undefined {
    if (typeof e !== 'object' || e === null || (e as { code?: unknown }).code !== 'MMF01') return undefined;
    const detail = (e as { detail?: unknown }).detail;
    let d: { shard?: unknown; holder?: unknown; epoch?: unknown; expired?: unknown } = {};
    try {
      if (typeof detail === 'string') d = JSON.parse(detail) as typeof d;
    } catch {
      // The detail is ours (migration 0020); unparsable only if the function changed: keep what the code says.
    }
    return new FencedError({
      shard: typeof d.shard === 'string' ? d.shard : '?',
      holder: typeof d.holder === 'string' ? d.holder : undefined,
      epoch: typeof d.epoch === 'number' || typeof d.epoch === 'string' ? BigInt(d.epoch) : undefined,
      expired: d.expired === true,
    });
  }
}
