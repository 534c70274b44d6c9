// Test helper: one site of the example region listening on 127.0.0.1 (random port).
import type { Db } from '../db/index.ts';
import { openTestDb } from '../db/test-db.ts';
import { tableCounts } from '../records/testing.ts';
import { exampleRegion } from '../region/testing.ts';
import { Sm2PrivateKey } from '../security/crypto/index.ts';
import { openSite, type Site } from './site.ts';

export interface TestServer {
  site: Site;
  db: Db;
  base: string;
  fhir: string;
  counts(): Promise<Record<string, number>>;
  close(): Promise<void>;
}

/** kms: 'unsealed' (default: initialized 2-of-2 and open, so data routes serve) or 'uninitialized'. */
export async function startTestServer(opts: { siteId?: string; bodyLimit?: number; kms?: 'unsealed' | 'uninitialized' } = {}): Promise<TestServer> {
  const db = await openTestDb({ migrated: false });
  const opened = await openSite({ region: await exampleRegion(), siteId: opts.siteId ?? 'B', db, ...(opts.bodyLimit ? { bodyLimit: opts.bodyLimit } : {}) });
  if (!opened.ok) throw new Error(opened.error.message);
  if ((opts.kms ?? 'unsealed') === 'unsealed') {
    await opened.site.kms.init({ custodians: ['one', 'two'].map((name) => ({ name, publicKey: Sm2PrivateKey.generate().publicKey })), threshold: 2 });
  }
  const address = await opened.site.app.listen({ port: 0, host: '127.0.0.1' });
  return {
    site: opened.site,
    db,
    base: address,
    fhir: `${address}/fhir/R4`,
    counts: () => tableCounts(db),
    async close() {
      await opened.site.close();
      await db.close();
    },
  };
}
