// The one Result type of the domains: an operation answers a value or an error value in
// its domain's vocabulary. Exceptions are for bugs and infrastructure failures.

export type Result<T, E> = { ok: true; value: T } | { ok: false; error: E };

export const ok = <T>(value: T): { ok: true; value: T } => ({ ok: true, value });

export const err = <E>(error: E): { ok: false; error: E } => ({ ok: false, error });
