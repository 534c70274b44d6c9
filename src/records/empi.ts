// The EMPI directory travels as its own small record type, `EmpiEntry` (patient id -> home
// shard and how it was placed), written with the patient's first placement and replicated
// as public data: every site, the public cloud included, can route a request for any
// patient, while the Patient itself stays on its shard's residency sites. No names or
// identifiers travel in it: only blind indexes of the regional identifiers (resident ID,
// insurance card), HMAC-SM3 under a key every site of the region holds (KMS key
// `empi-blind-index`), so a site can find a patient by identifier without holding it.
// An entry is written once and never changes (first placement wins): its history row is its
// state, replicated and verified like any version, `empi_patient` is where it is looked up,
// and it keeps no current row (fewer rows per new patient, here and at every site).
import type { Queryable } from '../db/index.ts';
import type { EmpiEntry, VersionRow } from './version-row.ts';

export const EMPI_TYPE = 'EmpiEntry';

/** The KMS key (same material at every site) the blind indexes are made with. */
export const EMPI_BLIND_INDEX_KEY = 'empi-blind-index';

export interface EmpiContent {
  resourceType: typeof EMPI_TYPE;
  id: string;
  homeShard: string;
  method: string;
  identifiers: string[];
}

export function empiContent(e: EmpiEntry): EmpiContent {
  return { resourceType: EMPI_TYPE, id: e.patientId, homeShard: e.shard, method: e.method, identifiers: e.blind ?? [] };
}

/** Patients whose identifiers have this blind index, with their home shards. */
export async function findByBlindIndex(q: Queryable, blind: string): Promise<Array<{ patientId: string; homeShard: string }>> {
  const { rows } = await q.query<{ patient_id: string; home_shard: string }>(
    `SELECT i.patient_id, e.home_shard FROM empi_identifier i JOIN empi_patient e ON e.patient_id = i.patient_id
      WHERE i.blind = $1 ORDER BY i.patient_id`,
    [blind],
  );
  return rows.map((r) => ({ patientId: r.patient_id, homeShard: r.home_shard }));
}

/** Directory entries among applied versions go to `empi_patient` (first placement wins). */
export async function recordReplicatedEmpi(tx: Queryable, versions: readonly VersionRow[]): Promise<void> {
  const entries = versions.flatMap((v) => {
    const c = v.resourceType === EMPI_TYPE ? (v.content as Partial<EmpiContent> | null) : null;
    if (!c || typeof c.homeShard !== 'string' || typeof c.method !== 'string') return [];
    const blind = Array.isArray(c.identifiers)
      ? c.identifiers.filter((x): x is string => typeof x === 'string' && /^[0-9a-f]{64}$/.test(x))
      : [];
    return [{ pid: v.id, shard: c.homeShard, method: c.method, site: v.originSite, blind }];
  });
  if (entries.length === 0) return;
  const blind = entries.flatMap((e) => e.blind.map((b) => [b, e.pid] as const));
  if (blind.length) {
    await tx.query(
      'INSERT INTO empi_identifier (blind, patient_id) SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING',
      [blind.map((b) => b[0]), blind.map((b) => b[1])],
    );
  }
  await tx.query(
    `INSERT INTO empi_patient (patient_id, home_shard, method, reason, placed_by_site)
     SELECT pid, shard, method, 'placed at site ' || site || ' (replicated)', site
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(pid, shard, method, site)
     ON CONFLICT (patient_id) DO NOTHING`,
    [entries.map((e) => e.pid), entries.map((e) => e.shard), entries.map((e) => e.method), entries.map((e) => e.site)],
  );
}
