// A campaigner in a process of its own, for the fault tests (testing.ts spawnCampaigner):
// opens a coordination store, campaigns, prints "elected <fence>" and keeps the leadership
// until it is killed (SIGKILL: no resignation, the leadership must lapse after its ttl).
//   node testing-campaigner.ts \
//     '{"backend":"etcd","endpoints":[...],"namespace":"...","name":"...","candidate":"...","ttlMs":1000}'
import { silentLogger } from '../common/index.ts';
import { openPostgres } from '../db/index.ts';
import type { CoordinationStore } from './coordination.ts';
import { openEmbeddedStore } from './embedded-store.ts';
import { openEtcdStore } from './etcd-store.ts';
import type { CampaignerBackend } from './testing.ts';

if (import.meta.main) {
  const o = JSON.parse(process.argv[2] ?? '{}') as CampaignerBackend & { name: string; candidate: string; ttlMs: number };
  const log = silentLogger();
  let store: CoordinationStore;
  if (o.backend === 'etcd') store = openEtcdStore({ endpoints: o.endpoints, namespace: o.namespace, log });
  else {
    const db = await openPostgres({ connectionString: o.url, schema: o.schema, maxConnections: 2 });
    store = await openEmbeddedStore({ db, log });
  }
  const l = await store.campaign(o.name, { candidate: o.candidate, ttlMs: o.ttlMs });
  process.stdout.write(`elected ${l.fence}\n`);
  setInterval(() => undefined, 60_000); // hold on until killed
}
