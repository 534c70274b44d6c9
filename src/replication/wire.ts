// What travels on a replication link: one feed page, gzip-compressed, sealed with SM4-GCM
// under a fresh data key per response; the data key is SM2-encrypted to the receiving
// site's registered public key, so only that site can open it, and the sending site signs
// (SM2) the associated data, wrapped key, nonce and tag, so only that site can have sent it.
// The associated data binds the page to (sender, receiver, cursor asked for): a page
// replayed to another puller, or for another position, does not open.
//   frame: "MMFEED2\n" | u16 len | wrapped key | 12-byte nonce | 16-byte tag | u16 len | signature | ciphertext
import { randomBytes } from 'node:crypto';
import { gunzipSync, gzipSync } from 'node:zlib';
import { z } from 'zod';
import { sm2Decrypt, sm2Encrypt, sm2Sign, sm2Verify, sm3, sm4GcmDecrypt, sm4GcmEncrypt, type Sm2PrivateKey, type Sm2PublicKey } from '../security/crypto/index.ts';
import type { Change, Cursor, FeedPage } from './changefeed.ts';

const MAGIC = Buffer.from('MMFEED2\n');

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
const signedPart = (aad: Uint8Array, wrapped: Uint8Array, nonce: Uint8Array, tag: Uint8Array) => sm3(aad, u16(wrapped.length), wrapped, nonce, tag);

export function sealPage(page: FeedPage, opts: { receiverKey: Sm2PublicKey; senderKey: Sm2PrivateKey; aad: Uint8Array }): Buffer {
  const json = JSON.stringify(page, bigintsAsText);
  const key = randomBytes(16);
  const nonce = randomBytes(12);
  const { ciphertext, tag } = sm4GcmEncrypt(key, nonce, gzipSync(json), opts.aad);
  const wrapped = sm2Encrypt(opts.receiverKey, key);
  const signature = sm2Sign(opts.senderKey, signedPart(opts.aad, wrapped, nonce, tag));
  return Buffer.concat([MAGIC, u16(wrapped.length), wrapped, nonce, tag, u16(signature.length), signature, ciphertext]);
}

const bigintText = z.string().regex(/^\d{1,20}$/).transform((s) => BigInt(s));
const changeSchema = z.object({
  changeId: z.uuid(),
  originSite: z.string().min(1),
  hlc: bigintText,
  parentHlc: bigintText.nullable(),
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
const pageSchema = z.object({ changes: z.array(changeSchema), next: cursorSchema, withheld: z.number().int().min(0), more: z.boolean() });

export type OpenError = { kind: 'malformed' | 'auth-failed'; message: string };

/** Opens a sealed page (sent by the holder of `senderKey`), or says why it cannot be trusted. */
export function openPage(frame: Uint8Array, opts: { key: Sm2PrivateKey; senderKey: Sm2PublicKey; aad: Uint8Array }): { ok: true; page: FeedPage } | { ok: false; error: OpenError } {
  const b = Buffer.from(frame);
  const malformed = { ok: false as const, error: { kind: 'malformed' as const, message: 'not a medmesh feed frame' } };
  if (b.length < MAGIC.length + 4 + 28 || !b.subarray(0, MAGIC.length).equals(MAGIC)) return malformed;
  let off = MAGIC.length;
  const wrappedLen = b.readUInt16BE(off);
  off += 2;
  const wrapped = b.subarray(off, (off += wrappedLen));
  const nonce = b.subarray(off, (off += 12));
  const tag = b.subarray(off, (off += 16));
  if (b.length < off + 2) return malformed;
  const sigLen = b.readUInt16BE(off);
  off += 2;
  const signature = b.subarray(off, (off += sigLen));
  const ciphertext = b.subarray(off);
  if (b.length < off || !sm2Verify(opts.senderKey, signedPart(opts.aad, wrapped, nonce, tag), signature)) {
    return { ok: false, error: { kind: 'auth-failed', message: 'the page is not signed by the sending site for this link and cursor' } };
  }
  let json: string;
  try {
    const key = sm2Decrypt(opts.key, wrapped);
    json = gunzipSync(sm4GcmDecrypt(key, nonce, ciphertext, tag, opts.aad)).toString('utf8');
  } catch (e) {
    return { ok: false, error: { kind: 'auth-failed', message: `the page does not open with this site's key and cursor: ${e instanceof Error ? e.message : String(e)}` } };
  }
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch {
    return { ok: false, error: { kind: 'malformed', message: 'the page is not JSON' } };
  }
  const parsed = pageSchema.safeParse(raw);
  if (!parsed.success) return { ok: false, error: { kind: 'malformed', message: parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ') } };
  return { ok: true, page: { ...parsed.data, changes: parsed.data.changes as unknown as Change[] } };
}
