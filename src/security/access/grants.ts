// Grants: time-boxed access of one user to one patient's records. An ordinary grant (a
// consultation, a referral) adds the patient to the user's care relationship; a break-glass
// grant does so only for the emergency purpose and is flagged in every audit entry it allows.
import { randomUUID } from 'node:crypto';
import type { Db } from '../../db/index.ts';

export type GrantKind = 'grant' | 'break-glass';

export interface Grant {
  id: string;
  kind: GrantKind;
  userId: string;
  patientId: string;
  reason: string;
  validFrom: string;
  validUntil: string;
  grantedBy: string;
  revokedAt?: string;
}

export const MIN_REASON = 10;
export const MAX_BREAK_GLASS_MINUTES = 240;

interface Row {
  id: string;
  kind: GrantKind;
  user_id: string;
  patient_id: string;
  reason: string;
  valid_from: Date;
  valid_until: Date;
  granted_by: string;
  revoked_at: Date | null;
}

const COLUMNS = 'id, kind, user_id, patient_id, reason, valid_from, valid_until, granted_by, revoked_at';

export class Grants {
  readonly #db: Db;

  constructor(db: Db) {
    this.#db = db;
  }

  async create(g: {
    kind: GrantKind;
    userId: string;
    patientId: string;
    reason: string;
    validFrom: Date;
    validUntil: Date;
    grantedBy: string;
  }): Promise<{ ok: true; value: Grant } | { ok: false; message: string }> {
    if (g.reason.trim().length < MIN_REASON)
      return { ok: false, message: `reason: at least ${MIN_REASON} characters saying why access is needed` };
    if (!(g.validUntil > g.validFrom)) return { ok: false, message: 'validUntil: must be after validFrom' };
    const { rows } = await this.#db.query<Row>(
      `INSERT INTO access_grant (id, kind, user_id, patient_id, reason, valid_from, valid_until, granted_by)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ${COLUMNS}`,
      [
        randomUUID(),
        g.kind,
        g.userId,
        g.patientId,
        g.reason.trim(),
        g.validFrom.toISOString(),
        g.validUntil.toISOString(),
        g.grantedBy,
      ],
    );
    return { ok: true, value: toGrant(rows[0]!) };
  }

  async list(filter: { userId?: string; patientId?: string; kind?: GrantKind; activeAt?: Date } = {}): Promise<Grant[]> {
    const params: unknown[] = [];
    const where: string[] = [];
    if (filter.userId) where.push(`user_id = $${params.push(filter.userId)}`);
    if (filter.patientId) where.push(`patient_id = $${params.push(filter.patientId)}`);
    if (filter.kind) where.push(`kind = $${params.push(filter.kind)}`);
    if (filter.activeAt) {
      const at = `$${params.push(filter.activeAt.toISOString())}::timestamptz`;
      where.push(`revoked_at IS NULL AND valid_from <= ${at} AND valid_until > ${at}`);
    }
    const { rows } = await this.#db.query<Row>(
      `SELECT ${COLUMNS} FROM access_grant ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
        ORDER BY created_at DESC LIMIT 1000`,
      params,
    );
    return rows.map(toGrant);
  }

  async revoke(id: string, by: string): Promise<boolean> {
    if (!/^[0-9a-f-]{36}$/.test(id)) return false;
    const { rows } = await this.#db.query(
      'UPDATE access_grant SET revoked_at = now(), revoked_by = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING id',
      [id, by],
    );
    return rows.length > 0;
  }
}

function toGrant(r: Row): Grant {
  return {
    id: r.id,
    kind: r.kind,
    userId: r.user_id,
    patientId: r.patient_id,
    reason: r.reason,
    validFrom: new Date(r.valid_from).toISOString(),
    validUntil: new Date(r.valid_until).toISOString(),
    grantedBy: r.granted_by,
    ...(r.revoked_at ? { revokedAt: new Date(r.revoked_at).toISOString() } : {}),
  };
}

/**
 * Whether the patient `{patient}` is in a user's care, as a correlated SQL predicate for the
 * record store's row scope: an encounter of the patient at the user's department or with
 * the user ($1: Organization/… and Practitioner/… references), the user as general
 * practitioner, or a valid grant for user $2. Break-glass grants do not count here: they
 * open their patient for the emergency purpose only (BREAK_GLASS_PREDICATE). Each branch is
 * an index probe for one patient.
 */
export const CARE_PREDICATE = `
  EXISTS (SELECT 1 FROM search_reference p
            JOIN search_reference d ON d.resource_type = 'Encounter' AND d.resource_id = p.resource_id
                                   AND d.code IN ('participant', 'service-provider') AND d.target = ANY($1::text[])
           WHERE p.resource_type = 'Encounter' AND p.code = 'patient' AND p.target = 'Patient/' || {patient})
  OR EXISTS (SELECT 1 FROM search_reference g
              WHERE g.resource_type = 'Patient' AND g.resource_id = {patient} AND g.code = 'general-practitioner'
                AND g.target = ANY($1::text[]))
  OR EXISTS (SELECT 1 FROM access_grant a
              WHERE a.user_id = $2::text AND a.patient_id = {patient} AND a.revoked_at IS NULL
                AND a.valid_from <= now() AND a.valid_until > now() AND a.kind = 'grant')`;

/**
 * The row scope of the emergency purpose: the patients of user $1's active break-glass grants,
 * and no one else (not even the patients in their care, reached with purpose treatment).
 */
export const BREAK_GLASS_PREDICATE = `
  EXISTS (SELECT 1 FROM access_grant a
           WHERE a.user_id = $1::text AND a.patient_id = {patient} AND a.kind = 'break-glass' AND a.revoked_at IS NULL
             AND a.valid_from <= now() AND a.valid_until > now())`;
