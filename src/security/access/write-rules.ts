// Field rules on writes: read-only fields must come back unchanged, masked and hidden ones
// cannot be set on create and keep their stored value on update (the caller saw the mask).
import type { Resource } from '@medplum/fhirtypes';
import { fail, ok, type Result } from '../../records/index.ts';
import type { FieldRule } from './policy.ts';

export function admitWrite(
  type: string,
  fields: ReadonlyMap<string, FieldRule>,
  next: Resource,
  previous: Resource | undefined,
): Result<Resource> {
  const out: Record<string, unknown> = { ...(next as unknown as Record<string, unknown>) };
  const prev = previous as unknown as Record<string, unknown> | undefined;
  for (const [f, rule] of fields) {
    if (rule === 'read-only') {
      if (!sameJson(out[f], prev?.[f]))
        return fail('forbidden', `${type}.${f} is read-only for you: send it unchanged`, {
          code: 'forbidden',
          expression: `${type}.${f}`,
        });
      continue;
    }
    // A field the caller sees masked or not at all: on create it cannot be set; on update the
    // stored value is kept (what the caller sent back is the masked form).
    if (!prev) {
      if (out[f] !== undefined)
        return fail('forbidden', `${type}.${f} is ${rule} for you: you cannot set it`, {
          code: 'forbidden',
          expression: `${type}.${f}`,
        });
    } else if (prev[f] === undefined) delete out[f];
    else out[f] = prev[f];
  }
  return ok(out as unknown as Resource);
}

function sameJson(a: unknown, b: unknown): boolean {
  return stable(a) === stable(b);
}

function stable(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stable).join(',')}]`;
  if (v && typeof v === 'object')
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${stable((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  return v === undefined ? 'undefined' : JSON.stringify(v);
}

/**
 * An update sent back after a masked read: wherever the caller sends exactly what the masked
 * view showed of the stored version (a resident ID masked inside a note, a generalized date),
 * the stored value is kept; a top-level element the view left out and the update does not
 * send (narrative removed beside a mask) is kept too. What the caller changed is theirs.
 */
export function restoreMasked(next: Resource, stored: Resource, seen: Resource): Resource {
  const out = merge(next, stored, seen) as Record<string, unknown>;
  const prev = stored as unknown as Record<string, unknown>;
  const view = seen as unknown as Record<string, unknown>;
  for (const k of Object.keys(prev)) if (!(k in view) && !(k in out) && k !== 'meta') out[k] = prev[k];
  return out as unknown as Resource;
}

function merge(next: unknown, stored: unknown, seen: unknown): unknown {
  if (typeof next === 'string') return typeof stored === 'string' && next === seen && seen !== stored ? stored : next;
  if (Array.isArray(next))
    return next.map((x, i) => merge(x, Array.isArray(stored) ? stored[i] : undefined, Array.isArray(seen) ? seen[i] : undefined));
  if (next && typeof next === 'object') {
    const s = stored && typeof stored === 'object' ? (stored as Record<string, unknown>) : {};
    const v = seen && typeof seen === 'object' ? (seen as Record<string, unknown>) : {};
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(next as Record<string, unknown>)) out[k] = merge(x, s[k], v[k]);
    return out;
  }
  return next;
}
