// Demo only: every site of the demo region trusts every other site's key and pulls every
// other site's changefeed (full mesh). A real region registers peer keys through its
// operators (`iam_service`) and runs the same pullers.
import type { Site } from '../http/index.ts';
import { Puller } from '../replication/index.ts';

export async function linkDemoSites(running: ReadonlyArray<{ site: Site; url: string }>, opts: { onError?: (site: string, peer: string, message: string) => void } = {}): Promise<Puller[]> {
  const pullers: Puller[] = [];
  for (const me of running) {
    for (const peer of running) {
      if (peer === me) continue;
      const key = peer.site.kms.signingKey();
      if (!key) throw new Error(`site ${peer.site.siteId} is sealed`);
      await me.site.identity.registerService({ id: peer.site.siteId, kind: 'site', publicKey: key.key.publicKey });
    }
  }
  for (const me of running) {
    for (const peer of running) {
      if (peer === me) continue;
      const p = new Puller({
        peer: { id: peer.site.siteId, url: peer.url },
        key: () => me.site.kms.signingKey()?.key,
        apply: { db: me.site.ctx.db, siteId: me.site.siteId, region: me.site.ctx.region, clock: me.site.ctx.clock, records: me.site.ctx },
        waitSeconds: 10,
        metrics: me.site.replication,
        ...(opts.onError ? { onError: (m: string) => opts.onError!(me.site.siteId, peer.site.siteId, m) } : {}),
      });
      p.start();
      pullers.push(p);
    }
  }
  return pullers;
}
