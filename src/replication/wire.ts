// What travels on a replication link: one feed page, gzip-compressed, sealed with SM4-GCM
// under the link's current key (link-keys.ts: SM2-encrypted to the receiving site, signed by
// the sending site, rotated), so only the receiver can open it and only the sender can have
// made it. The associated data binds the page to (sender, receiver, cursor asked for) and
// the key id: a page replayed to another puller, or for another position, does not open.
//   frame: "MMFEED3\n" | 16-byte key id | u16 len | key header | 12-byte nonce | 16-byte tag | ciphertext
import { randomBytes } from 'node:crypto';
import { gunzipSync, gzipSync } from 'node:zlib';
import { z } from 'zod';
import { sm4GcmDecrypt, sm4GcmEncrypt, type Sm2PrivateKey, type Sm2PublicKey } from '../security/crypto/index.ts';
import type { LinkKeyReceiver, LinkKeySender } from './link-keys.ts';
import type { Change, Cursor, FeedPage } from './changefeed.ts';

const MAGIC = Buffer.from('MMFEED3\n');

export function feedAad(from: string, to: string, after: Cursor): Buffer {
  return Buffer.from(`medmesh-feed/1|${from}|${to}|${after.txid}:${after.pos}`);
}

const bigintsAsText = (_k: string, v: unknown) => (typeof v === 'bigint' ? v.toString() : v);

/** A change as JSON (bigints as decimal text), as it travels and as a dead letter keeps it. */
export function changeJson(c: Change): string {
  return JSON.stringify(c, bigintsAsText);
}

/** Reads back a change written by changeJson, validated. */
export function parseChange(json: unknown): Change | undefined {
  const r = changeSchema.safeParse(json);
  return r.success ? (r.data as unknown as Change) : undefined;
}

const u16 = (n: number) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
};

/** The link a frame travels on: who sends, who receives. */
export interface LinkEnds {
  from: string;
  to: string;
}

/** Seals a page under the sender's current key for this link (made and signed on rotation only). */
export function sealPage(
  page: FeedPage,
  opts: LinkEnds & { keys: LinkKeySender; receiverKey: Sm2PublicKey; senderKey: Sm2PrivateKey; aad: Uint8Array },
): Buffer {
  const link = opts.keys.keyFor({ from: opts.from, to: opts.to, receiverKey: opts.receiverKey, signer: opts.senderKey });
  const nonce = randomBytes(12);
  const { ciphertext, tag } = sm4GcmEncrypt(
    link.key,
    nonce,
    gzipSync(JSON.stringify(page, bigintsAsText)),
    Buffer.concat([opts.aad, link.id]),
  );
  return Buffer.concat([MAGIC, link.id, u16(link.header.length), link.header, nonce, tag, ciphertext]);
}

const bigintText = z
  .string()
  .regex(/^\d{1,20}$/)
  .transform((s) => BigInt(s));
const changeSchema = z.object({
  changeId: z.uuid(),
  originSite: z.string().min(1),
  hlc: bigintText,
  parentHlc: bigintText.nullable(),
  // Absent from changes written before parents were named by origin too.
  parentOrigin: z.string().min(1).max(32).nullable().default(null),
  epoch: bigintText,
  shard: z.string().nullable(),
  dataClass: z.enum(['core', 'noncore', 'public']),
  resourceType: z.string().regex(/^[A-Z][A-Za-z]+$/),
  resourceId: z.string().regex(/^[A-Za-z0-9\-.]{1,64}$/),
  versionId: z.string().min(1).max(80),
  deleted: z.boolean(),
  payload: z.record(z.string(), z.unknown()).nullable(),
});
const cursorSchema = z.object({ txid: z.string().regex(/^\d{1,20}$/), pos: z.string().regex(/^\d{1,20}$/) });
const pageSchema = z.object({
  changes: z.array(changeSchema),
  next: cursorSchema,
  withheld: z.number().int().min(0),
  more: z.boolean(),
});

export type OpenError = { kind: 'malformed' | 'auth-failed'; message: string };

/** Opens a sealed page sent on this link by the holder of `senderKey`, or says why it cannot be trusted. */
export function openPage(
  frame: Uint8Array,
  opts: LinkEnds & { keys: LinkKeyReceiver; key: Sm2PrivateKey; senderKey: Sm2PublicKey; aad: Uint8Array },
): { ok: true; page: FeedPage } | { ok: false; error: OpenError } {
  const b = Buffer.from(frame);
  const malformed = { ok: false as const, error: { kind: 'malformed' as const, message: 'not a medmesh feed frame' } };
  if (b.length < MAGIC.length + 16 + 2 + 28 || !b.subarray(0, MAGIC.length).equals(MAGIC)) return malformed;
  let off = MAGIC.length;
  const id = b.subarray(off, (off += 16));
  const headerLen = b.readUInt16BE(off);
  off += 2;
  const header = b.subarray(off, (off += headerLen));
  const nonce = b.subarray(off, (off += 12));
  const tag = b.subarray(off, (off += 16));
  if (b.length < off) return malformed;
  const ciphertext = b.subarray(off);
  const linkKey = opts.keys.open({ from: opts.from, to: opts.to, id, header, key: opts.key, senderKey: opts.senderKey });
  if (!linkKey)
    return {
      ok: false,
      error: {
        kind: 'auth-failed',
        message: `the link key is not signed by site ${opts.from} for ${opts.to}, or does not open with this site's key`,
      },
    };
  let json: string;
  try {
    json = gunzipSync(sm4GcmDecrypt(linkKey, nonce, ciphertext, tag, Buffer.concat([opts.aad, id]))).toString('utf8');
  } catch (e) {
    return {
      ok: false,
      error: {
        kind: 'auth-failed',
        message: `the page does not open for this link and cursor: ${e instanceof Error ? e.message : String(e)}`,
      },
    };
  }
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch {
    return { ok: false, error: { kind: 'malformed', message: 'the page is not JSON' } };
  }
  const parsed = pageSchema.safeParse(raw);
  if (!parsed.success)
    return {
      ok: false,
      error: { kind: 'malformed', message: parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ') },
    };
  return { ok: true, page: { ...parsed.data, changes: parsed.data.changes as unknown as Change[] } };
}
