// Cross-reference rules of the region file, reported in the same `path: rule` form as
// schema errors so an operator sees every problem at once.
import type { RegionConfig } from './config-schema.ts';
import { distanceKm } from './geohash.ts';

export interface ConfigIssue {
  path: string;
  message: string;
}

export function checkRegion(cfg: RegionConfig): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const sites = new Map(cfg.sites.map((s) => [s.id, s]));
  const shardIds = new Set(cfg.shards.map((s) => s.id));

  duplicates(cfg.sites.map((s) => s.id)).forEach((i) =>
    issues.push({ path: `sites[${i}].id`, message: `duplicate site id ${cfg.sites[i]!.id}` }),
  );
  duplicates(cfg.shards.map((s) => s.id)).forEach((i) =>
    issues.push({ path: `shards[${i}].id`, message: `duplicate shard id ${cfg.shards[i]!.id}` }),
  );

  const divisionOwner = new Map<string, string>();
  const geohashOwner = new Map<string, string>();
  cfg.shards.forEach((shard, si) => {
    shard.residency.forEach((siteId, ri) => {
      const site = sites.get(siteId);
      const path = `shards[${si}].residency[${ri}]`;
      if (!site) issues.push({ path, message: `unknown site ${siteId}` });
      else if (site.kind !== 'private')
        issues.push({ path, message: `site ${siteId} is ${site.kind}; core data may reside only on private sites` });
    });
    duplicates(shard.residency).forEach((ri) =>
      issues.push({ path: `shards[${si}].residency[${ri}]`, message: `site ${shard.residency[ri]} listed twice` }),
    );
    const [home, twin] = shard.residency.map((id) => sites.get(id));
    if (home && twin) {
      const km = distanceKm(home.location, twin.location);
      if (km < cfg.policies.minDrDistanceKm) {
        issues.push({
          path: `shards[${si}].residency`,
          message:
            `home site ${home.id} and DR twin ${twin.id} are ${km.toFixed(1)} km apart; ` +
            `must be at least ${cfg.policies.minDrDistanceKm} km`,
        });
      }
    }
    shard.divisions.forEach((code, di) => {
      const owner = divisionOwner.get(code);
      if (owner)
        issues.push({ path: `shards[${si}].divisions[${di}]`, message: `division ${code} already belongs to shard ${owner}` });
      else divisionOwner.set(code, shard.id);
    });
    shard.geohashes.forEach((gh, gi) => {
      const owner = geohashOwner.get(gh);
      if (owner)
        issues.push({
          path: `shards[${si}].geohashes[${gi}]`,
          message: `GeoHash prefix ${gh} already belongs to shard ${owner}`,
        });
      else geohashOwner.set(gh, shard.id);
    });
  });

  cfg.sites.forEach((site, i) => {
    if (site.defaultShard !== undefined && site.defaultShard !== 'refuse' && !shardIds.has(site.defaultShard)) {
      issues.push({ path: `sites[${i}].defaultShard`, message: `unknown shard ${site.defaultShard} (use a shard id or refuse)` });
    }
  });

  const seen = new Map<string, string>();
  for (const cls of ['core', 'noncore', 'public'] as const) {
    cfg.dataClasses[cls].forEach((type, i) => {
      const prev = seen.get(type);
      if (prev) issues.push({ path: `dataClasses.${cls}[${i}]`, message: `${type} is already in class ${prev}` });
      else seen.set(type, cls);
    });
  }
  return issues;
}

function duplicates(values: readonly string[]): number[] {
  const seen = new Set<string>();
  const out: number[] = [];
  values.forEach((v, i) => {
    if (seen.has(v)) out.push(i);
    seen.add(v);
  });
  return out;
}
