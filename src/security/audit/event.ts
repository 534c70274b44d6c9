// What an audit entry records, validated at the boundary, and its canonical bytes.
import { z } from 'zod';

export const auditEventSchema = z.strictObject({
  time: z.iso.datetime({ offset: true }),
  site: z.string().min(1),
  actor: z.strictObject({
    kind: z.enum(['user', 'service', 'anonymous', 'system']),
    id: z.string().min(1),
    role: z.string().min(1).optional(),
  }),
  action: z.string().regex(/^[a-z][a-z0-9-]*$/),
  outcome: z.enum(['allow', 'deny', 'success', 'failure']),
  purpose: z.string().min(1).optional(),
  resource: z.string().min(1).optional(),
  fields: z.array(z.string().min(1)).optional(),
  sourceIp: z.string().min(1).optional(),
  terminal: z.string().min(1).optional(),
  macAddress: z.string().min(1).optional(),
  requestId: z.string().min(1).optional(),
  breakGlass: z.strictObject({ reason: z.string().min(1) }).optional(),
  detail: z.string().optional(),
});

export type AuditEvent = z.infer<typeof auditEventSchema>;

/** Canonical JSON: keys sorted at every level, no whitespace. These exact bytes are stored and hashed. */
export function canonicalBytes(value: unknown): Buffer {
  return Buffer.from(canonicalJson(value), 'utf8');
}

function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    const entries = Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${canonicalJson(x)}`).join(',')}}`;
  }
  return JSON.stringify(v);
}
