// Per-link SM4 keys (DESIGN.md §5: batches encrypted under per-link keys, rotatable without
// stopping replication). The sending site makes a key per receiving site, SM2-encrypts it to
// the receiver's registered key and signs (sender, receiver, key id, wrapped key) with its
// own; every page carries that small header, but the receiver verifies and unwraps it once
// per key id and the sender signs once per rotation: the steady state has no SM2 per page.
import { randomBytes } from 'node:crypto';
import { sm2Decrypt, sm2Encrypt, sm2Sign, sm2Verify, type Sm2PrivateKey, type Sm2PublicKey } from '../security/crypto/index.ts';

export interface LinkKey {
  id: Buffer;
  key: Buffer;
  /** u16 wrapped length | wrapped key | u16 signature length | signature */
  header: Buffer;
}

const u16 = (n: number) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
};
const signed = (from: string, to: string, id: Uint8Array, wrapped: Uint8Array) =>
  Buffer.concat([Buffer.from(`medmesh-link/1|${from}|${to}|`), id, wrapped]);

/** Default key lifetime: a new key every 10 minutes per link. */
export const LINK_KEY_ROTATE_MS = 10 * 60_000;

/** The sending side: the current key per receiver, rotated by age or when the receiver's key changes. */
export class LinkKeySender {
  readonly #keys = new Map<string, { link: LinkKey; made: number; receiverPem: string; signer: Sm2PrivateKey }>();
  readonly #rotateMs: number;

  constructor(opts: { rotateMs?: number } = {}) {
    this.#rotateMs = opts.rotateMs ?? LINK_KEY_ROTATE_MS;
  }

  keyFor(o: { from: string; to: string; receiverKey: Sm2PublicKey; signer: Sm2PrivateKey; now?: number }): LinkKey {
    const now = o.now ?? Date.now();
    const pem = o.receiverKey.toPem();
    const cur = this.#keys.get(o.to);
    if (cur && cur.receiverPem === pem && cur.signer === o.signer && now - cur.made < this.#rotateMs) return cur.link;
    const id = randomBytes(16);
    const key = randomBytes(16);
    const wrapped = sm2Encrypt(o.receiverKey, key);
    const signature = sm2Sign(o.signer, signed(o.from, o.to, id, wrapped));
    const link = { id, key, header: Buffer.concat([u16(wrapped.length), wrapped, u16(signature.length), signature]) };
    this.#keys.set(o.to, { link, made: now, receiverPem: pem, signer: o.signer });
    return link;
  }
}

/** The receiving side: keys already opened, by sender and key id (a few per link). */
export class LinkKeyReceiver {
  readonly #keys = new Map<string, { key: Buffer; opener: Sm2PrivateKey }>();

  /** The key a header carries, once its signature by `senderKey` is checked; undefined if it fails. */
  open(o: {
    from: string;
    to: string;
    id: Uint8Array;
    header: Uint8Array;
    key: Sm2PrivateKey;
    senderKey: Sm2PublicKey;
  }): Buffer | undefined {
    const name = `${o.from}|${o.to}|${o.senderKey.toPem()}|${Buffer.from(o.id).toString('hex')}`;
    const hit = this.#keys.get(name);
    if (hit) return hit.opener === o.key ? hit.key : undefined;
    const h = Buffer.from(o.header);
    if (h.length < 4) return undefined;
    const wl = h.readUInt16BE(0);
    const wrapped = h.subarray(2, 2 + wl);
    if (h.length < 4 + wl) return undefined;
    const sl = h.readUInt16BE(2 + wl);
    const signature = h.subarray(4 + wl, 4 + wl + sl);
    if (!sm2Verify(o.senderKey, signed(o.from, o.to, o.id, wrapped), signature)) return undefined;
    let key: Buffer;
    try {
      key = sm2Decrypt(o.key, wrapped);
    } catch {
      return undefined;
    }
    if (key.length !== 16) return undefined;
    if (this.#keys.size >= 256) this.#keys.delete(this.#keys.keys().next().value!);
    this.#keys.set(name, { key, opener: o.key });
    return key;
  }
}
