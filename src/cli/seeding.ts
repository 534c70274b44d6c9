// Writes synthetic patients through the same transaction-Bundle path clients use, each at
// the active site of its home shard.
import { processBundle, type RecordStore } from '../records/index.ts';
import { seededRandom, syntheticPatient } from '../records/synthetic.ts';
import { statusOf } from '../http/index.ts';
import type { Region } from '../region/index.ts';

export interface SeedReport {
  patients: number;
  resources: number;
  bySite: Record<string, number>;
  skipped: number;
}

export async function seedRegion(opts: {
  region: Region;
  stores: ReadonlyMap<string, RecordStore>;
  patients: number;
  seed?: number;
  onProgress?: (done: number, total: number) => void;
}): Promise<SeedReport> {
  const { region, stores } = opts;
  const rnd = seededRandom(opts.seed ?? 20261122);
  const privateSites = region.sites.filter((s) => s.kind === 'private' && stores.has(s.id)).map((s) => s.id);
  const report: SeedReport = { patients: 0, resources: 0, bySite: {}, skipped: 0 };
  for (let n = 0; n < opts.patients; n++) {
    const { expectedShard, bundle } = syntheticPatient(region, rnd, n);
    const siteId = expectedShard ? region.activeSiteFor(expectedShard) : privateSites[n % Math.max(1, privateSites.length)];
    const store = siteId ? stores.get(siteId) : undefined;
    if (!store) {
      report.skipped++;
      continue;
    }
    const r = await processBundle(store, bundle, { baseUrl: '', statusOf });
    if (!r.ok)
      throw new Error(`seeding patient ${n} at site ${siteId ?? '?'} failed: ${r.error.issues.map((i) => i.message).join('; ')}`);
    report.patients++;
    report.resources += bundle.entry?.length ?? 0;
    report.bySite[siteId!] = (report.bySite[siteId!] ?? 0) + 1;
    opts.onProgress?.(n + 1, opts.patients);
  }
  return report;
}
