// The region file's schema. Structural rules live here; rules that relate one part of
// the file to another (references, distances, uniqueness) live in validate-region.ts.
import { z } from 'zod';

export const SITE_KINDS = ['private', 'public', 'edge'] as const;
export const DATA_CLASSES = ['core', 'noncore', 'public'] as const;
export type SiteKind = (typeof SITE_KINDS)[number];
export type DataClass = (typeof DATA_CLASSES)[number];

const id = z
  .string()
  .regex(/^[A-Za-z][A-Za-z0-9-]{0,31}$/, 'must start with a letter and use only letters, digits and - (at most 32)');
const httpUrl = z.string().regex(/^https?:\/\/[^\s/]+(\/[^\s]*)?$/, 'must be an http(s) URL');
const resourceType = z.string().regex(/^[A-Z][A-Za-z]+$/, 'must be a FHIR resource type name');

export const siteSchema = z.strictObject({
  id,
  kind: z.enum(SITE_KINDS),
  name: z.string().min(1).optional(),
  url: httpUrl,
  location: z.strictObject({
    lat: z.number().min(-90).max(90),
    lon: z.number().min(-180).max(180),
  }),
  /** Shard for patients nothing else places, or `refuse` (answer 422). Default: the first shard homed here, else refuse. */
  defaultShard: z.string().min(1).optional(),
});

export const shardSchema = z.strictObject({
  id,
  name: z.string().min(1).optional(),
  /** 6-digit administrative division codes (county 440305, prefecture 440300, province 440000). */
  divisions: z.array(z.string().regex(/^\d{6}$/, 'must be a 6-digit administrative division code')).default([]),
  geohashes: z
    .array(z.string().regex(/^[0-9bcdefghjkmnpqrstuvwxyz]{1,12}$/, 'must be a GeoHash prefix (base32, 1-12 characters)'))
    .default([]),
  /** Ordered: the home (active) site first, then its disaster-recovery twin(s). */
  residency: z.array(id).min(1, 'must list at least one site'),
});

/** Where the witness keeps its coordination state (docs/failover.md). */
export const witnessStoreSchema = z
  .union(
    [
      /** The witness's own database (PGlite under its data directory, or its DATABASE_URL). */
      z.literal('embedded'),
      z.strictObject({
        etcd: z.strictObject({
          /** Client URLs of the etcd members (3 in production). */
          endpoints: z
            .array(z.string().regex(/^http:\/\/[^\s/]+:\d+\/?$/, 'must be an etcd client URL http://host:port'))
            .min(1, 'must list at least one etcd member'),
          /** Prefix of every key the witness uses (default medmesh/<region>/). */
          namespace: z
            .string()
            .regex(/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*\/$/, 'must be path segments ending with /, e.g. medmesh/guangdong/')
            .optional(),
        }),
      }),
    ],
    { error: 'must be embedded, or etcd: { endpoints: [http://host:port, ...], namespace?: prefix/ }' },
  )
  .default('embedded');

const synchronousClassSchema = z
  .strictObject({
    name: z.string().regex(/^[a-z0-9][a-z0-9-]{0,63}$/, 'a lower-case name (letters, digits, -)'),
    /** Resource types of the class (absent: any type that carries one of `tags`). */
    resourceTypes: z
      .array(z.string().regex(/^[A-Z][A-Za-z]+$/, 'a FHIR resource type'))
      .min(1)
      .optional(),
    /** meta.tag codings that put a resource in the class (absent: every resource of `resourceTypes`). */
    tags: z
      .array(z.strictObject({ system: z.string().min(1).optional(), code: z.string().min(1) }))
      .min(1)
      .optional(),
    /** How long a write waits for the twin to apply it. */
    timeoutMs: z.number().int().positive().max(60_000).default(2000),
    /**
     * When the twin does not confirm in time: `refuse` answers 503 (the write is committed here but
     * not confirmed at the twin: the client must treat the outcome as unknown and retry
     * idempotently, as with PostgreSQL's synchronous commit); `degrade` answers as usual, with
     * `X-Medmesh-Sync: degraded` and an alarm.
     */
    onTimeout: z.enum(['refuse', 'degrade']).default('refuse'),
  })
  .refine((c) => c.resourceTypes !== undefined || c.tags !== undefined, {
    message: 'a synchronous class names resourceTypes, tags or both',
  });

export const regionSchema = z.strictObject({
  region: id,
  name: z.string().min(1).optional(),
  witness: z.strictObject({ url: httpUrl, store: witnessStoreSchema }),
  sites: z.array(siteSchema).min(1, 'must list at least one site'),
  shards: z.array(shardSchema).min(1, 'must list at least one shard'),
  dataClasses: z
    .strictObject({
      core: z.array(resourceType).default([]),
      noncore: z.array(resourceType).default([]),
      public: z.array(resourceType).default([]),
      /** Class of resource types not listed. Core is the safe default: it never leaves residency sites. */
      default: z.enum(DATA_CLASSES).default('core'),
    })
    .prefault({}),
  identifierSystems: z
    .strictObject({
      residentId: z.string().min(1).default('urn:oid:2.16.156.10011.1.3'),
      insuranceCard: z.string().min(1).default('urn:oid:2.16.156.10011.1.15'),
    })
    .prefault({}),
  policies: z
    .strictObject({
      /** Primary and DR twin of a shard must be at least this far apart (regional standard §4.2d). */
      minDrDistanceKm: z.number().positive().default(50),
      /** Remote HLC timestamps further ahead than this are rejected. */
      maxClockOffsetMs: z.number().int().positive().default(500),
      /** national: SM2/SM3/SM4 (regional standard); international: AES-256-GCM / RSA-3072 fallback. */
      crypto: z.enum(['national', 'international']).default('national'),
      /** Audit entries stay online at least this long before export to the archive (>= 6 months). */
      auditOnlineDays: z
        .number()
        .int()
        .min(183, 'the regional standard keeps audit logs online for at least 6 months (183 days)')
        .default(183),
      /**
       * Synchronous classes (DESIGN.md §6): writes of these resources are answered only after
       * the shard's DR twin has applied them (RPO 0 for the class). Core data with a shard only.
       */
      synchronous: z.array(synchronousClassSchema).default([]),
    })
    .prefault({}),
});

export type RegionConfig = z.infer<typeof regionSchema>;
export type SynchronousClass = z.infer<typeof synchronousClassSchema>;
export type SiteConfig = z.infer<typeof siteSchema>;
export type ShardConfig = z.infer<typeof shardSchema>;
export type WitnessStoreConfig = z.infer<typeof witnessStoreSchema>;
