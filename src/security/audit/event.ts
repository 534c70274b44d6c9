// What an audit entry records, validated at the boundary, and its canonical bytes.
import { z } from 'zod';

// The generic canonical form lives in crypto (the witness's votes use it too); audit keeps its name.
export { canonicalBytes } from '../crypto/index.ts';

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

/**
 * The canonical bytes of a validated event, written field by field in the sorted key order
 * (the same bytes as `canonicalBytes`, held to it by a property test): the audit hook makes one
 * per access, and the generic walk's sort and per-key allocations were most of its cost.
 */
export function auditEventBytes(e: AuditEvent): Buffer {
  const q = JSON.stringify;
  const a = e.actor;
  let s = `{"action":${q(e.action)},"actor":{"id":${q(a.id)},"kind":${q(a.kind)}`;
  if (a.role !== undefined) s += `,"role":${q(a.role)}`;
  s += '}';
  if (e.breakGlass !== undefined) s += `,"breakGlass":{"reason":${q(e.breakGlass.reason)}}`;
  if (e.detail !== undefined) s += `,"detail":${q(e.detail)}`;
  if (e.fields !== undefined) s += `,"fields":${q(e.fields)}`;
  if (e.macAddress !== undefined) s += `,"macAddress":${q(e.macAddress)}`;
  s += `,"outcome":${q(e.outcome)}`;
  if (e.purpose !== undefined) s += `,"purpose":${q(e.purpose)}`;
  if (e.requestId !== undefined) s += `,"requestId":${q(e.requestId)}`;
  if (e.resource !== undefined) s += `,"resource":${q(e.resource)}`;
  s += `,"site":${q(e.site)}`;
  if (e.sourceIp !== undefined) s += `,"sourceIp":${q(e.sourceIp)}`;
  if (e.terminal !== undefined) s += `,"terminal":${q(e.terminal)}`;
  return Buffer.from(`${s},"time":${q(e.time)}}`, 'utf8');
}
