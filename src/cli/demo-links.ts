// Demo only: every site of the demo region trusts every other site's key and pulls every
// other site's changefeed (full mesh) at the address it actually listens on. A real region
// registers peer keys through its operators (`iam_service`) and `medmesh site` starts the
// same pullers against the URLs of the region file.
import type { Site } from '../site/index.ts';

export async function linkDemoSites(
  running: ReadonlyArray<{ site: Site; url: string }>,
  opts: { onError?: (site: string, peer: string, message: string) => void } = {},
): Promise<void> {
  for (const me of running) {
    for (const peer of running) {
      if (peer === me) continue;
      const key = peer.site.kms.signingKey();
      if (!key) throw new Error(`site ${peer.site.siteId} is sealed`);
      await me.site.identity.registerService({ id: peer.site.siteId, kind: 'site', publicKey: key.key.publicKey });
    }
    me.site.peers.clear();
    for (const peer of running) if (peer !== me) me.site.peers.set(peer.site.siteId, peer.url);
  }
  for (const me of running) {
    me.site.startReplication({
      waitSeconds: 10,
      verifyEveryMs: 5 * 60_000,
      // Each site checks and cosigns the others' audit checkpoints (a truncated log alarms at its peers).
      cosignEveryMs: 10_000,
      ...(opts.onError ? { onError: (peer: string, m: string) => opts.onError!(me.site.siteId, peer, m) } : {}),
    });
  }
}
