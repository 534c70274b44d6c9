// Concurrent versions recorded by apply-versions.ts (rules in version-order.ts), for clinical review: list them, and
// resolve one by writing the reviewed content as a new version on top of the current one.
import type { Queryable } from '../db/index.ts';

export interface Conflict {
  resourceType: string;
  id: string;
  versions: [string, string];
  detectedAt: string;
  resolvedAt?: string;
  resolvedBy?: string;
  resolutionVersion?: string;
}

interface Row {
  resource_type: string;
  id: string;
  version_a: string;
  version_b: string;
  detected_at: Date;
  resolved_at: Date | null;
  resolved_by: string | null;
  resolution_version: string | null;
}

export async function listConflicts(
  q: Queryable,
  opts: { open: boolean; resourceType?: string; id?: string; limit?: number },
): Promise<Conflict[]> {
  const params: unknown[] = [];
  const where = [opts.open ? 'resolved_at IS NULL' : 'true'];
  if (opts.resourceType) where.push(`resource_type = $${params.push(opts.resourceType)}`);
  if (opts.id) where.push(`id = $${params.push(opts.id)}`);
  const { rows } = await q.query<Row>(
    `SELECT resource_type, id, version_a, version_b, detected_at, resolved_at, resolved_by, resolution_version
       FROM resource_conflict
      WHERE ${where.join(' AND ')} ORDER BY detected_at LIMIT $${params.push(opts.limit ?? 100)}`,
    params,
  );
  return rows.map((r) => ({
    resourceType: r.resource_type,
    id: r.id,
    versions: [r.version_a, r.version_b],
    detectedAt: new Date(r.detected_at).toISOString(),
    ...(r.resolved_at ? { resolvedAt: new Date(r.resolved_at).toISOString() } : {}),
    ...(r.resolved_by ? { resolvedBy: r.resolved_by } : {}),
    ...(r.resolution_version ? { resolutionVersion: r.resolution_version } : {}),
  }));
}

/**
 * Names the person who resolved a resource's conflicts with `version` (written by the caller:
 * the write itself resolved them, as any write on top of the current version does).
 * Which conflicts a version resolves is replicated data; who resolved them is this site's record.
 */
export async function markResolved(
  q: Queryable,
  opts: { resourceType: string; id: string; version: string; by: string },
): Promise<number> {
  const { rows } = await q.query(
    'UPDATE resource_conflict SET resolved_by = $3 WHERE resource_type = $1 AND id = $2 AND resolution_version = $4 RETURNING 1',
    [opts.resourceType, opts.id, opts.by, opts.version],
  );
  return rows.length;
}
