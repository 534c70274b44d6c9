// The EMPI directory travels as its own small record type, `EmpiEntry` (patient id -> home
// shard and how it was placed), written with the patient's first placement and replicated
// as public data: every site, the public cloud included, can route a request for any
// patient, while the Patient itself stays on its shard's residency sites. No names or
// identifiers travel in it. (Blind-indexed identifiers need a region-wide key: not yet.)
import type { Queryable } from '../db/index.ts';
import type { RemoteVersion } from './apply-version.ts';
import type { EmpiEntry } from './write-version.ts';

export const EMPI_TYPE = 'EmpiEntry';

export interface EmpiContent {
  resourceType: typeof EMPI_TYPE;
  id: string;
  homeShard: string;
  method: string;
}

export function empiContent(e: EmpiEntry): EmpiContent {
  return { resourceType: EMPI_TYPE, id: e.patientId, homeShard: e.shard, method: e.method };
}

/** Directory entries among applied versions go to `empi_patient` (first placement wins). */
export async function recordReplicatedEmpi(tx: Queryable, versions: readonly RemoteVersion[]): Promise<void> {
  const entries = versions.flatMap((v) => {
    const c = v.resourceType === EMPI_TYPE ? (v.content as Partial<EmpiContent> | null) : null;
    return c && typeof c.homeShard === 'string' && typeof c.method === 'string' ? [{ pid: v.id, shard: c.homeShard, method: c.method, site: v.originSite }] : [];
  });
  if (entries.length === 0) return;
  await tx.query(
    `INSERT INTO empi_patient (patient_id, home_shard, method, reason, placed_by_site)
     SELECT pid, shard, method, 'placed at site ' || site || ' (replicated)', site FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(pid, shard, method, site)
     ON CONFLICT (patient_id) DO NOTHING`,
    [entries.map((e) => e.pid), entries.map((e) => e.shard), entries.map((e) => e.method), entries.map((e) => e.site)],
  );
}
