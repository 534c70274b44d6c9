// Test helper: one site of the example region listening on 127.0.0.1 (random port).
import { silentLogging, type Logging } from '../common/index.ts';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Db } from '../db/index.ts';
import { openTestDb } from '../db/test-db.ts';
import type { S3BlobStoreOptions } from '../imaging/index.ts';
import { tableCounts } from '../records/testing.ts';
import { exampleRegion } from '../region/testing.ts';
import type { Region } from '../region/index.ts';
import type { FastifyInstance } from 'fastify';
import { Sm2PrivateKey, type Sm2PublicKey } from '../security/crypto/index.ts';
import { signToken } from '../security/identity/index.ts';
import { openSite, type Site, type SiteOptions } from './open-site.ts';

export interface TestServer {
  site: Site;
  db: Db;
  base: string;
  fhir: string;
  /** Headers of the HIS interface account (role integration): reads and writes everything. */
  auth: Record<string, string>;
  /** Headers with a token for any roles and attributes, signed by this site like a login's. */
  as(roles: string[], attributes?: Record<string, string>, opts?: { userId?: string; purpose?: string }): Record<string, string>;
  counts(): Promise<Record<string, number>>;
  /** The folder of this site's image blobs. */
  blobRoot: string;
  close(): Promise<void>;
}

/**
 * kms: 'unsealed' (default: initialized 2-of-2 and open, so data routes serve) or 'uninitialized'.
 * imageStore 's3': image files go to an S3-protocol server (s3rver) on 127.0.0.1, its data under `blobRoot`.
 */
export async function startTestServer(
  opts: {
    siteId?: string;
    bodyLimit?: number;
    kms?: 'unsealed' | 'uninitialized';
    maxImageBytes?: number;
    streamImagesAboveBytes?: number;
    imageStore?: 'fs' | 's3';
    /** The site's database (default: a fresh test database); closed with the server. */
    db?: Db;
    /** Custodians of the master key made at start (default: two throwaway keys). */
    custodians?: Array<{ name: string; publicKey: Sm2PublicKey }>;
    /** The site's logging (default: silent, problems still counted in /metrics). */
    logging?: Logging;
    requestTimeoutMs?: number;
    /** How often the audit log is checkpointed (default 5 s). */
    checkpointEveryMs?: number;
    /** The region (default: the example region). */
    region?: Region;
    /** Write leases from a witness (absent: no fencing). */
    witness?: SiteOptions['witness'];
    /** Routes a test adds before the server listens (fault injection). */
    routes?: (app: FastifyInstance, site: Site) => void;
  } = {},
): Promise<TestServer> {
  const db = opts.db ?? (await openTestDb({ migrated: false }));
  const siteId = opts.siteId ?? 'B';
  const blobRoot = await mkdtemp(join(tmpdir(), `medmesh-${siteId}-blobs-`));
  let s3server: { close(): Promise<void> } | undefined;
  let where: { blobRoot: string } | { s3: S3BlobStoreOptions } = { blobRoot };
  if (opts.imageStore === 's3') {
    const { default: S3rver } = await import('s3rver');
    const server = new S3rver({
      address: '127.0.0.1',
      port: 0,
      directory: blobRoot,
      silent: true,
      configureBuckets: [{ name: 'medmesh-images' }],
    });
    const { port } = await server.run();
    s3server = server;
    where = {
      s3: {
        endpoint: `http://127.0.0.1:${port}`,
        bucket: 'medmesh-images',
        prefix: siteId,
        accessKeyId: 'S3RVER',
        secretAccessKey: 'S3RVER',
      },
    };
  }
  const opened = await openSite({
    region: opts.region ?? (await exampleRegion()),
    siteId,
    db,
    imaging: {
      ...where,
      maxFileBytes: opts.maxImageBytes ?? 8 * 2 ** 20,
      ...(opts.streamImagesAboveBytes ? { streamAboveBytes: opts.streamImagesAboveBytes } : {}),
    },
    ...(opts.bodyLimit ? { bodyLimit: opts.bodyLimit } : {}),
    logging: opts.logging ?? silentLogging(),
    ...(opts.requestTimeoutMs ? { requestTimeoutMs: opts.requestTimeoutMs } : {}),
    ...(opts.checkpointEveryMs ? { checkpointEveryMs: opts.checkpointEveryMs } : {}),
    ...(opts.witness ? { witness: opts.witness } : {}),
  });
  if (!opened.ok) throw new Error(opened.error.message);
  const { site } = opened;
  opts.routes?.(site.app, site);
  if ((opts.kms ?? 'unsealed') === 'unsealed') {
    await site.kms.init({
      custodians: opts.custodians ?? ['one', 'two'].map((name) => ({ name, publicKey: Sm2PrivateKey.generate().publicKey })),
      threshold: 2,
    });
  }
  const as = tokensOf(site);
  const address = await site.app.listen({ port: 0, host: '127.0.0.1' });
  return {
    site,
    db,
    base: address,
    fhir: `${address}/fhir/R4`,
    get auth() {
      return as(['integration'], {}, { userId: 'test-integration' });
    },
    as,
    counts: () => tableCounts(db),
    blobRoot,
    async close() {
      await site.close();
      await db.close();
      await s3server?.close();
      await rm(blobRoot, { recursive: true, force: true });
    },
  };
}

/** Headers with a token for any roles and attributes, signed by the site like a login's. */
export function tokensOf(site: Site): TestServer['as'] {
  return (roles, attributes = {}, o = {}) => {
    const issuer = site.kms.signingKey();
    if (!issuer) throw new Error('the test site is sealed: no tokens');
    const now = Math.floor(Date.now() / 1000);
    const userId = o.userId ?? `test-${roles.join('-')}-${randomUUID().slice(0, 8)}`;
    const token = signToken(
      {
        iss: site.siteId,
        sub: userId,
        typ: 'access',
        iat: now,
        exp: now + 600,
        jti: randomUUID(),
        roles,
        attrs: { ...attributes, username: userId },
      },
      issuer.key,
      issuer.kid,
    );
    return { authorization: `Bearer ${token}`, ...(o.purpose ? { 'x-medmesh-purpose': o.purpose } : {}) };
  };
}
