// The hook through which the access layer (src/security/access) restricts the record store.
// Records knows nothing of roles or policies: it only applies a row scope (which patients'
// records the caller may touch) and asks whether a write is admissible.
import { createHash } from 'node:crypto';
import type { Resource } from '@medplum/fhirtypes';
import type { Queryable } from '../db/index.ts';
import type { Result } from './errors.ts';

export type RowScope =
  | { kind: 'all' }
  /**
   * Rows whose patient satisfies `predicate`: SQL in which `{patient}` stands for the row's
   * patient id (text) and $1..$n for `params` — correlated, so a read by id probes indexes
   * for one patient instead of listing every patient in scope. Rows that belong to no
   * patient are in scope when `includeUnowned`.
   */
  | { kind: 'patients'; predicate: string; params: readonly unknown[]; includeUnowned: boolean };

export interface AccessFilter {
  rows: RowScope;
  /** Said when a row outside the scope is asked for by id. */
  denied: string;
  /**
   * Search pages ordered by md5(orderSalt || id) instead of by time and id (de-identified
   * answers: a secret salt per key, so no two keys see the same order and none the real one).
   */
  orderSalt?: string;
  /** Field rules on writes: the resource to store (protected fields carried over) or why not. */
  admitWrite?(next: Resource, previous: Resource | undefined): Result<Resource>;
}

/** SQL condition for `alias.patient_id`, adding parameters through `add` (which returns `$n`). */
export function rowScopeSql(scope: RowScope, alias: string, add: (v: unknown) => string): string {
  if (scope.kind === 'all') return 'true';
  // Each $n becomes a fresh parameter of the outer query (a repeated $n is added again).
  const cond = scope.predicate
    .replace(/\$(\d+)/g, (_m, n: string) => add(scope.params[Number(n) - 1]))
    .replaceAll('{patient}', `${alias}.patient_id`);
  return `(${alias}.patient_id IS NOT NULL AND (${cond})${scope.includeUnowned ? ` OR ${alias}.patient_id IS NULL` : ''})`;
}

/** Whether a record of `patientId` (null: no patient) is inside the scope. */
export async function patientInScope(q: Queryable, scope: RowScope, patientId: string | null): Promise<boolean> {
  if (scope.kind === 'all') return true;
  if (patientId === null) return scope.includeUnowned;
  const params: unknown[] = [patientId];
  const cond = rowScopeSql(scope, 'x', (v) => `$${params.push(v)}`);
  const { rows } = await q.query<{ ok: boolean }>(`SELECT ${cond} AS ok FROM (SELECT $1::text AS patient_id) x`, params);
  return rows[0]?.ok === true;
}

const names = new Map<string, string>();
/**
 * A prepared-statement name for one of the store's fixed query shapes (a read with a given
 * scope predicate): planning a scoped read costs more than running it.
 */
export function statementName(sql: string): string {
  let n = names.get(sql);
  if (!n) {
    n = `medmesh_${createHash('sha1').update(sql).digest('hex').slice(0, 16)}`;
    if (names.size < 1000) names.set(sql, n);
  }
  return n;
}
