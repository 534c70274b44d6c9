// The validated region: lookups every other module needs (sites, shards, data classes,
// which site is active for a shard). Immutable once built.
import type { DataClass, RegionConfig, ShardConfig, SiteConfig, SynchronousClass } from './config-schema.ts';

export class Region {
  readonly config: RegionConfig;
  readonly #sites: Map<string, SiteConfig>;
  readonly #shards: Map<string, ShardConfig>;
  readonly #divisions = new Map<string, string>();
  readonly #geohashes: Array<[prefix: string, shard: string]> = [];
  readonly #classes = new Map<string, DataClass>();

  constructor(config: RegionConfig) {
    this.config = config;
    this.#sites = new Map(config.sites.map((s) => [s.id, s]));
    this.#shards = new Map(config.shards.map((s) => [s.id, s]));
    for (const shard of config.shards) {
      for (const d of shard.divisions) this.#divisions.set(d, shard.id);
      for (const g of shard.geohashes) this.#geohashes.push([g, shard.id]);
    }
    // Longest prefix first, so the first hit is the most specific.
    this.#geohashes.sort((a, b) => b[0].length - a[0].length);
    for (const cls of ['core', 'noncore', 'public'] as const) for (const t of config.dataClasses[cls]) this.#classes.set(t, cls);
  }

  get id(): string {
    return this.config.region;
  }
  get sites(): readonly SiteConfig[] {
    return this.config.sites;
  }
  get shards(): readonly ShardConfig[] {
    return this.config.shards;
  }
  site(id: string): SiteConfig | undefined {
    return this.#sites.get(id);
  }
  shard(id: string): ShardConfig | undefined {
    return this.#shards.get(id);
  }

  classOf(resourceType: string): DataClass {
    // The EMPI directory (records/empi.ts) is public by design: every site routes with it.
    if (resourceType === 'EmpiEntry') return 'public';
    return this.#classes.get(resourceType) ?? this.config.dataClasses.default;
  }

  /**
   * The synchronous class a resource falls in (policies.synchronous: the first that matches), if
   * any: of its types (when listed) and carrying one of its tags (when listed).
   */
  synchronousClassOf(resource: {
    resourceType: string;
    meta?: { tag?: ReadonlyArray<{ system?: string; code?: string }> };
  }): SynchronousClass | undefined {
    return this.config.policies.synchronous.find(
      (c) =>
        (!c.resourceTypes || c.resourceTypes.includes(resource.resourceType)) &&
        (!c.tags ||
          c.tags.some((t) =>
            (resource.meta?.tag ?? []).some((m) => m.code === t.code && (t.system === undefined || m.system === t.system)),
          )),
    );
  }

  /** The DR twin of a shard for its writer: the first other residency site. */
  twinOf(shardId: string, writer: string): string | undefined {
    return this.#shards.get(shardId)?.residency.find((s) => s !== writer);
  }

  /** The site that takes writes for a shard: the first residency site (leases refine this later). */
  activeSiteFor(shardId: string): string | undefined {
    return this.#shards.get(shardId)?.residency[0];
  }

  /** Whether `siteId` may hold data of `cls` belonging to `shardId` (null: not patient-bound). */
  mayHold(siteId: string, cls: DataClass, shardId: string | null): boolean {
    if (cls !== 'core') return true;
    const site = this.#sites.get(siteId);
    if (!site || site.kind !== 'private') return false;
    return shardId === null || (this.#shards.get(shardId)?.residency.includes(siteId) ?? false);
  }

  /** Division code -> shard, falling back county -> prefecture -> province. */
  shardForDivision(code: string): { shard: string; matched: string } | undefined {
    if (!/^\d{6}$/.test(code)) return undefined;
    for (const candidate of [code, `${code.slice(0, 4)}00`, `${code.slice(0, 2)}0000`]) {
      const shard = this.#divisions.get(candidate);
      if (shard) return { shard, matched: candidate };
    }
    return undefined;
  }

  /** GeoHash -> shard by longest configured prefix. */
  shardForGeohash(geohash: string): { shard: string; matched: string } | undefined {
    for (const [prefix, shard] of this.#geohashes) if (geohash.startsWith(prefix)) return { shard, matched: prefix };
    return undefined;
  }

  /** The receiving site's fallback shard, or 'refuse'. */
  defaultShardFor(siteId: string): string {
    const site = this.#sites.get(siteId);
    if (site?.defaultShard) return site.defaultShard;
    return this.config.shards.find((s) => s.residency[0] === siteId)?.id ?? 'refuse';
  }
}
