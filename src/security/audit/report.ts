// Compliance report for a period: accesses per role, break-glass uses, denied attempts and
// the verification status of the log — as data (JSON) and as printable HTML.
import type { Queryable } from '../../db/index.ts';
import { ENTRIES } from './fhir-view.ts';
import type { AuditReport } from './verify.ts';

export interface ComplianceReport {
  site: string;
  from: string;
  to: string;
  generatedAt: string;
  totals: { entries: number; allow: number; deny: number; failure: number; success: number };
  accessesByRole: Array<{ role: string; allow: number; deny: number; failure: number; success: number }>;
  breakGlass: Array<{
    seq: number;
    time: string;
    user: string;
    role: string;
    resource: string;
    reason: string;
    accessesUnderIt: number;
  }>;
  denied: Array<{ seq: number; time: string; user: string; role: string; action: string; resource: string; detail: string }>;
  verification: Pick<
    AuditReport,
    | 'ok'
    | 'entries'
    | 'checkpoints'
    | 'invalidMac'
    | 'timeMismatch'
    | 'columnMismatch'
    | 'missing'
    | 'rootMismatch'
    | 'badSignature'
    | 'witnesses'
    | 'prunedEarly'
  > & {
    /** Whether a peer's cosigned checkpoint was recomputed from this log (else a cut tail would not show). */
    confirmedByPeers: boolean;
  };
}

const MAX_LISTED = 200;

export async function complianceReport(
  db: Queryable,
  opts: { site: string; from: Date; to: Date; verification: AuditReport; confirmed?: boolean; now?: Date },
): Promise<ComplianceReport> {
  const range = `t >= $1::timestamptz AND t < $2::timestamptz`;
  const p = [opts.from.toISOString(), opts.to.toISOString()];
  const byRole = await db.query<{ role: string; outcome: string; n: number }>(
    `SELECT coalesce(e->'actor'->>'role', e->'actor'->>'kind') AS role, e->>'outcome' AS outcome, count(*)::int AS n
       FROM ${ENTRIES} WHERE ${range} GROUP BY 1, 2 ORDER BY 1, 2`,
    p,
  );
  const roles = new Map<string, ComplianceReport['accessesByRole'][number]>();
  const totals = { entries: 0, allow: 0, deny: 0, failure: 0, success: 0 };
  for (const r of byRole.rows) {
    const row = roles.get(r.role) ?? { role: r.role, allow: 0, deny: 0, failure: 0, success: 0 };
    const k = r.outcome as 'allow' | 'deny' | 'failure' | 'success';
    row[k] += r.n;
    totals[k] += r.n;
    totals.entries += r.n;
    roles.set(r.role, row);
  }
  const glass = await db.query<{
    seq: string | bigint;
    time: string;
    user: string;
    role: string | null;
    resource: string | null;
    reason: string;
    n: number;
  }>(
    `SELECT a.seq, e->>'time' AS time, e->'actor'->>'id' AS user, e->'actor'->>'role' AS role, e->>'resource' AS resource,
            e->'breakGlass'->>'reason' AS reason,
            (SELECT count(*)::int FROM ${ENTRIES.replace(/ a$/, ' b')}
              WHERE b.agent = a.agent AND b.e->'actor'->>'id' = a.e->'actor'->>'id' AND b.e ? 'breakGlass'
               AND b.e->>'action' <> 'break-glass'
               AND b.t >= a.t AND b.t < $2::timestamptz) AS n
       FROM ${ENTRIES} WHERE ${range} AND e->>'action' = 'break-glass' AND e->>'outcome' IN ('success', 'allow')
      ORDER BY a.seq LIMIT ${MAX_LISTED}`,
    p,
  );
  const denied = await db.query<{
    seq: string | bigint;
    time: string;
    user: string;
    role: string | null;
    action: string;
    resource: string | null;
    detail: string | null;
  }>(
    `SELECT seq, e->>'time' AS time, e->'actor'->>'id' AS user, e->'actor'->>'role' AS role, e->>'action' AS action,
            e->>'resource' AS resource, e->>'detail' AS detail
       FROM ${ENTRIES} WHERE ${range} AND e->>'outcome' = 'deny' ORDER BY seq DESC LIMIT ${MAX_LISTED}`,
    p,
  );
  const v = opts.verification;
  return {
    site: opts.site,
    from: opts.from.toISOString(),
    to: opts.to.toISOString(),
    generatedAt: (opts.now ?? new Date()).toISOString(),
    totals,
    accessesByRole: [...roles.values()],
    breakGlass: glass.rows.map((r) => ({
      seq: Number(r.seq),
      time: r.time,
      user: r.user,
      role: r.role ?? '',
      resource: r.resource ?? '',
      reason: r.reason,
      accessesUnderIt: r.n,
    })),
    denied: denied.rows.map((r) => ({
      seq: Number(r.seq),
      time: r.time,
      user: r.user,
      role: r.role ?? '',
      action: r.action,
      resource: r.resource ?? '',
      detail: r.detail ?? '',
    })),
    verification: {
      ok: v.ok,
      entries: v.entries,
      checkpoints: v.checkpoints,
      invalidMac: v.invalidMac,
      timeMismatch: v.timeMismatch,
      columnMismatch: v.columnMismatch,
      missing: v.missing,
      rootMismatch: v.rootMismatch,
      badSignature: v.badSignature,
      witnesses: v.witnesses ?? [],
      ...(v.prunedEarly ? { prunedEarly: v.prunedEarly } : {}),
      confirmedByPeers: opts.confirmed ?? false,
    },
  };
}

/** A self-contained page that prints well (A4, no scripts, no external resources). */
export function renderComplianceHtml(r: ComplianceReport): string {
  const esc = (s: unknown) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  const table = (head: string[], rows: unknown[][]) => {
    if (rows.length === 0) return '<p class="none">None.</p>';
    const th = head.map((h) => `<th>${esc(h)}</th>`).join('');
    const trs = rows.map((row) => `<tr>${row.map((c) => `<td>${esc(c)}</td>`).join('')}</tr>`).join('');
    return `<table><thead><tr>${th}</tr></thead><tbody>${trs}</tbody></table>`;
  };
  const v = r.verification;
  const status = v.ok ? 'INTACT' : 'TAMPERED';
  const failures = v.ok
    ? ''
    : `<p>Entries failing their MAC: ${esc(v.invalidMac.join(', ') || 'none')}. ` +
      `Entries whose append time was moved: ${esc(v.timeMismatch.join(', ') || 'none')}. ` +
      `Entries whose search columns (patient, user) were changed: ${esc(v.columnMismatch.join(', ') || 'none')}. ` +
      `Missing ranges: ${esc(JSON.stringify(v.missing))}. ` +
      `Checkpoints with a wrong root: ${esc(v.rootMismatch.join(', ') || 'none')}; ` +
      `with a bad signature: ${esc(v.badSignature.join(', ') || 'none')}.` +
      (v.prunedEarly
        ? ` Entries before ${esc(v.prunedEarly.before)} were pruned within the online period ` +
          `(checkpoint of ${esc(v.prunedEarly.issuedAt)}).`
        : '') +
      '</p>';
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medmesh compliance report — site ${esc(r.site)}</title>
<style>
  @page { size: A4; margin: 18mm; }
  body { font: 11pt/1.4 system-ui, "Noto Sans CJK SC", sans-serif; color: #111; max-width: 60em; margin: auto; }
  h1 { font-size: 16pt; } h2 { font-size: 13pt; margin-top: 1.6em; border-bottom: 1px solid #999; }
  table { border-collapse: collapse; width: 100%; font-size: 9.5pt; }\
 th, td { border: 1px solid #bbb; padding: 3px 6px; text-align: left; vertical-align: top; }
  thead { display: table-header-group; } tr { page-break-inside: avoid; }
  .ok { color: #075; font-weight: bold; } .bad { color: #b00; font-weight: bold; } .none { color: #555; }
</style></head><body>
<h1>Compliance report — site ${esc(r.site)}</h1>
<p>Period ${esc(r.from)} to ${esc(r.to)} (end exclusive). Generated ${esc(r.generatedAt)}.</p>
<h2>Audit log verification</h2>
<p class="${v.ok ? 'ok' : 'bad'}">${status}: ${esc(v.entries)} entries, ${esc(v.checkpoints)} signed checkpoints verified.</p>
<p class="${v.confirmedByPeers ? 'ok' : 'bad'}">${
    v.confirmedByPeers
      ? `Confirmed by the checkpoints other sites cosigned: ${esc(
          (v.witnesses ?? [])
            .filter((w) => w.consistent)
            .map((w) => `${w.peer} (${w.treeSize} entries)`)
            .join(', ') || 'no other site in the region',
        )}.`
      : 'NOT confirmed by any other site: entries cut from the end of the log would not show here.'
  }</p>
${
  (v.witnesses ?? []).some((w) => !w.consistent && !w.archived)
    ? `<p class="bad">Inconsistent with the checkpoints held by: ${esc(
        (v.witnesses ?? [])
          .filter((w) => !w.consistent && !w.archived)
          .map((w) => `${w.peer} (${w.treeSize} entries)`)
          .join(', '),
      )}.</p>`
    : ''
}
${failures}
<h2>Accesses per role</h2>
<p>${esc(r.totals.entries)} audited events: ${esc(r.totals.allow + r.totals.success)} allowed or succeeded, \
${esc(r.totals.deny)} denied, ${esc(r.totals.failure)} failed.</p>
${table(
  ['role', 'allowed', 'succeeded', 'denied', 'failed'],
  r.accessesByRole.map((x) => [x.role, x.allow, x.success, x.deny, x.failure]),
)}
<h2>Break-glass uses</h2>
${table(
  ['#', 'time', 'user', 'role', 'patient', 'reason', 'accesses under it'],
  r.breakGlass.map((b) => [b.seq, b.time, b.user, b.role, b.resource, b.reason, b.accessesUnderIt]),
)}
<h2>Denied attempts</h2>
${table(
  ['#', 'time', 'user', 'role', 'action', 'resource', 'detail'],
  r.denied.map((d) => [d.seq, d.time, d.user, d.role, d.action, d.resource, d.detail]),
)}
${r.denied.length >= MAX_LISTED ? `<p>Only the latest ${MAX_LISTED} are listed.</p>` : ''}
</body></html>
`;
}
