// The audit log seen as FHIR R4 AuditEvent resources (read and search), for auditors. The
// log itself stays canonical bytes; this view maps each entry on the way out.
import type { AuditEvent as FhirAuditEvent, Bundle } from '@medplum/fhirtypes';
import type { Queryable } from '../../db/index.ts';
import type { AuditEvent } from './event.ts';

const PURPOSE: Record<string, string> = {
  treatment: 'TREAT',
  emergency: 'ETREAT',
  research: 'HRESCH',
  statistics: 'PUBHLTH',
  audit: 'HOPERAT',
};
const ACTION: Record<string, 'C' | 'R' | 'U' | 'D' | 'E'> = {
  read: 'R',
  vread: 'R',
  search: 'R',
  history: 'R',
  create: 'C',
  update: 'U',
  delete: 'D',
};

/** `recordedAt`: when the log took the entry (what `date` searches); the entry's own time is the period. */
export function toFhirAuditEvent(seq: number, e: AuditEvent, recordedAt: Date): FhirAuditEvent {
  const purpose = e.purpose ? PURPOSE[e.purpose] : undefined;
  return {
    resourceType: 'AuditEvent',
    id: String(seq),
    type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110110', display: 'Patient Record' },
    subtype: [{ system: 'urn:medmesh:audit-action', code: e.action }],
    action: ACTION[e.action] ?? 'E',
    period: { start: e.time, end: e.time },
    recorded: recordedAt.toISOString(),
    outcome: e.outcome === 'allow' || e.outcome === 'success' ? '0' : e.outcome === 'deny' ? '4' : '8',
    ...(e.detail ? { outcomeDesc: e.detail } : {}),
    ...(purpose
      ? {
          purposeOfEvent: [
            { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: purpose }], text: e.purpose },
          ],
        }
      : {}),
    agent: [
      {
        who: { identifier: { system: `urn:medmesh:${e.actor.kind}`, value: e.actor.id } },
        requestor: true,
        ...(e.actor.role ? { role: [{ text: e.actor.role }] } : {}),
        ...(e.sourceIp ? { network: { address: e.sourceIp, type: '2' as const } } : {}),
        ...(e.terminal || e.macAddress
          ? { extension: [{ url: 'urn:medmesh:terminal', valueString: [e.terminal, e.macAddress].filter(Boolean).join(' ') }] }
          : {}),
      },
    ],
    source: {
      site: e.site,
      observer: { display: `medmesh site ${e.site}` },
      type: [{ system: 'http://terminology.hl7.org/CodeSystem/security-source-type', code: '4' }],
    },
    ...(e.resource || e.fields || e.breakGlass || e.requestId
      ? {
          entity: [
            {
              ...(e.resource ? { what: { reference: e.resource } } : {}),
              detail: [
                ...(e.fields ? [{ type: 'fields', valueString: e.fields.join(',') }] : []),
                ...(e.breakGlass ? [{ type: 'break-glass', valueString: e.breakGlass.reason }] : []),
                ...(e.requestId ? [{ type: 'request-id', valueString: e.requestId }] : []),
              ],
            },
          ],
        }
      : {}),
  };
}

export interface AuditQuery {
  /** ISO instants: entries with time >= from and < to. */
  from?: string;
  to?: string;
  agent?: string;
  entity?: string;
  outcome?: string;
  action?: string;
  purpose?: string;
  count: number;
  offset: number;
}

/** Parses AuditEvent search parameters; unknown or malformed ones are errors, never ignored. */
export function parseAuditQuery(
  pairs: ReadonlyArray<readonly [string, string]>,
): { ok: true; value: AuditQuery } | { ok: false; message: string } {
  const q: AuditQuery = { count: 50, offset: 0 };
  for (const [k, v] of pairs) {
    if (k === 'date') {
      const m = /^(ge|gt|le|lt)(\d{4}-\d{2}-\d{2}(T[\d:.]+(Z|[+-]\d{2}:\d{2}))?)$/.exec(v);
      if (!m || Number.isNaN(Date.parse(m[2]!)))
        return { ok: false, message: `date=${v}: use ge|gt|le|lt followed by a date or an instant` };
      const at = new Date(m[2]!).toISOString();
      if (m[1] === 'ge' || m[1] === 'gt') q.from = at;
      else q.to = at;
    } else if (k === 'agent' || k === 'entity' || k === 'action' || k === 'purpose') q[k] = v;
    else if (k === 'outcome') {
      if (!['allow', 'deny', 'failure', 'success'].includes(v))
        return { ok: false, message: 'outcome: allow, deny, failure or success' };
      q.outcome = v;
    } else if (k === '_count' && /^\d+$/.test(v) && Number(v) >= 1 && Number(v) <= 1000) q.count = Number(v);
    else if (k === '_offset' && /^\d+$/.test(v) && Number(v) <= 1_000_000) q.offset = Number(v);
    else if (k !== '_format' && k !== '_pretty')
      return {
        ok: false,
        message:
          `AuditEvent search parameter ${k} is not supported ` +
          '(date, agent, entity, action, outcome, purpose, _count, _offset)',
      };
  }
  return { ok: true, value: q };
}

/**
 * The SQL condition over ENTRIES for a query, with its parameters. Entity and agent are found
 * through their columns (indexed, migration 0016) and rechecked against the bytes, so a column
 * changed behind the log's back cannot put a foreign entry into an answer (verify names it);
 * `date` is when the log took the entry (indexed).
 */
export function auditWhere(q: Omit<AuditQuery, 'count' | 'offset'>, params: unknown[]): string {
  const where: string[] = [];
  const add = (v: unknown) => `$${params.push(v)}`;
  if (q.from) where.push(`t >= ${add(q.from)}::timestamptz`);
  if (q.to) where.push(`t < ${add(q.to)}::timestamptz`);
  if (q.agent) {
    const p = add(q.agent);
    where.push(`agent = ${p} AND e->'actor'->>'id' = ${p}`);
  }
  if (q.entity) {
    const p = add(q.entity);
    where.push(`entity = ${p} AND e->>'resource' = ${p}`);
  }
  if (q.outcome) where.push(`e->>'outcome' = ${add(q.outcome)}`);
  if (q.action) where.push(`e->>'action' = ${add(q.action)}`);
  if (q.purpose) where.push(`e->>'purpose' = ${add(q.purpose)}`);
  return where.length ? where.join(' AND ') : 'true';
}

/** The log as rows of (seq, e: the entry as jsonb, t: when it was appended, and the indexed entity and agent columns). */
export const ENTRIES = `(SELECT seq, audit_entry_json(entry) AS e, recorded_at AS t, entity, agent FROM audit_entry) a`;

export async function readAuditEvent(db: Queryable, seq: number): Promise<FhirAuditEvent | undefined> {
  const { rows } = await db.query<{ entry: Uint8Array; recorded_at: Date }>(
    'SELECT entry, recorded_at FROM audit_entry WHERE seq = $1',
    [seq],
  );
  const row = rows[0];
  return row
    ? toFhirAuditEvent(seq, JSON.parse(Buffer.from(row.entry).toString('utf8')) as AuditEvent, new Date(row.recorded_at))
    : undefined;
}

/** The statement a search runs: newest first, one row more than the page (is there a next page?). */
export function auditSearchSql(q: AuditQuery): { sql: string; params: unknown[] } {
  const params: unknown[] = [];
  const where = auditWhere(q, params);
  return {
    sql: `SELECT seq, e, t FROM ${ENTRIES} WHERE ${where}
          ORDER BY seq DESC LIMIT $${params.push(q.count + 1)} OFFSET $${params.push(q.offset)}`,
    params,
  };
}

export async function searchAuditEvents(
  db: Queryable,
  q: AuditQuery,
  opts: { baseUrl: string; query: ReadonlyArray<readonly [string, string]> },
): Promise<Bundle> {
  const { sql, params } = auditSearchSql(q);
  const { rows } = await db.query<{ seq: string | bigint; e: AuditEvent; t: Date }>(sql, params);
  const page = rows.slice(0, q.count);
  const kept = opts.query.filter(([k]) => k !== '_count' && k !== '_offset').map(([k, v]) => [k, v] as [string, string]);
  const pageUrl = (offset: number) => {
    const search = new URLSearchParams([...kept, ['_count', String(q.count)], ['_offset', String(offset)]]);
    return `${opts.baseUrl}/AuditEvent?${search.toString()}`;
  };
  const link = [{ relation: 'self', url: pageUrl(q.offset) }];
  if (rows.length > q.count) link.push({ relation: 'next', url: pageUrl(q.offset + q.count) });
  return {
    resourceType: 'Bundle',
    type: 'searchset',
    link,
    entry: page.map((r) => ({
      fullUrl: `${opts.baseUrl}/AuditEvent/${String(r.seq)}`,
      resource: toFhirAuditEvent(Number(r.seq), r.e, new Date(r.t)),
      search: { mode: 'match' as const },
    })),
  };
}
