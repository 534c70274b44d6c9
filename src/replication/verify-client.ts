// The peer side of a consistency check over the peer's HTTP API, with this site's service
// assertion. Digests and leaves carry only hashes and ids; versions (clinical content) come
// sealed to this site and signed by the peer, like feed pages.
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import type { Sm2PrivateKey, Sm2PublicKey } from '../security/crypto/index.ts';
import { AssertionCache } from '../security/identity/index.ts';
import type { BucketDigest, Leaf, StateLeaf, VersionRef } from './digests.ts';
import type { Change } from './changefeed.ts';
import type { VerifyPeer } from './verify.ts';
import { openPage } from './wire.ts';
import { LinkKeyReceiver } from './link-keys.ts';

/** Associated data of a repair page: bound to the link and to the request's nonce. */
export function repairAad(from: string, to: string, nonce: string): Buffer {
  return Buffer.from(`medmesh-repair/1|${from}|${to}|${nonce}`);
}

const digestsSchema = z.array(
  z.object({
    key: z.string(),
    versions: z.number().int(),
    resources: z.number().int(),
    digest: z.string(),
    state: z.string(),
  }),
);
const leavesSchema = z.array(
  z.object({
    key: z.string(),
    resourceType: z.string(),
    id: z.string(),
    versionId: z.string(),
    originSite: z.string(),
    leaf: z.string(),
  }),
);

const statesSchema = z.array(
  z.object({
    key: z.string(),
    resourceType: z.string(),
    id: z.string(),
    current: z.string(),
    conflicts: z.array(z.string()),
    leaf: z.string(),
  }),
);

export function httpVerifyPeer(opts: {
  peer: { id: string; url: string };
  selfId: string;
  key: Sm2PrivateKey;
  peerKey: Sm2PublicKey;
  timeoutMs?: number;
}): VerifyPeer {
  const { peer, selfId, key } = opts;
  const assertions = new AssertionCache();
  const linkKeys = new LinkKeyReceiver();
  const call = async (path: string, body: unknown): Promise<Response> => {
    const res = await fetch(`${peer.url}/replication${path}`, {
      method: 'POST',
      headers: {
        authorization: `MedmeshService ${assertions.for({ serviceId: selfId, key, site: peer.id })}`,
        'content-type': 'application/json',
      },
      body: JSON.stringify(body, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)),
      signal: AbortSignal.timeout(opts.timeoutMs ?? 120_000),
    });
    if (res.status !== 200) throw new Error(`${peer.id} answered ${res.status} to ${path}: ${(await res.text()).slice(0, 300)}`);
    return res;
  };
  const parse = <T>(schema: z.ZodType<T>, raw: unknown, what: string): T => {
    const r = schema.safeParse(raw);
    if (!r.success) throw new Error(`${peer.id} sent malformed ${what}: ${r.error.issues[0]?.message ?? ''}`);
    return r.data;
  };
  return {
    site: peer.id,
    digests: async (q): Promise<BucketDigest[]> => parse(digestsSchema, await (await call('/digests', q)).json(), 'digests'),
    leaves: async (q, keys): Promise<Leaf[]> =>
      parse(leavesSchema, await (await call('/digests/leaves', { ...q, keys })).json(), 'leaves'),
    states: async (q, keys): Promise<StateLeaf[]> =>
      parse(statesSchema, await (await call('/digests/states', { ...q, keys })).json(), 'derived states'),
    versions: async (refs: readonly VersionRef[]): Promise<Change[]> => {
      const nonce = randomBytes(16).toString('hex');
      const res = await call('/versions', { refs, nonce });
      const opened = openPage(new Uint8Array(await res.arrayBuffer()), {
        from: peer.id,
        to: selfId,
        keys: linkKeys,
        key,
        senderKey: opts.peerKey,
        aad: repairAad(peer.id, selfId, nonce),
      });
      if (!opened.ok) throw new Error(`repair page from ${peer.id} refused: ${opened.error.message}`);
      return opened.page.changes;
    },
  };
}
