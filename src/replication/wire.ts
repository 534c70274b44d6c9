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

/** A page is closed once its changes reach this many bytes of JSON (the first change always goes). */
export const PAGE_BUDGET_BYTES = 8 * 2 ** 20;
/** A change larger than this (as JSON) is not sent: it is parked at the sender. */
export const MAX_CHANGE_BYTES = 64 * 2 ** 20;
/** What a receiver accepts: a full page plus one change at the limit, and the envelope. */
export const MAX_PAGE_JSON_BYTES = PAGE_BUDGET_BYTES + MAX_CHANGE_BYTES + 2 ** 20;
/** A sealed frame is never larger than its page (gzip adds a few bytes per 16 KiB at worst). */
export const MAX_FRAME_BYTES = MAX_PAGE_JSON_BYTES + 2 ** 20;

/** A change as it travels: bigints as decimal text. */
function wireChange(c: Change) {
  return {
    ...c,
    hlc: c.hlc.toString(),
    parentHlc: c.parentHlc === null ? null : c.parentHlc.toString(),
    epoch: c.epoch.toString(),
  };
}

/** A change as JSON (bigints as decimal text), as it travels and as a dead letter keeps it. Any nesting depth. */
export function changeJson(c: Change): string {
  return jsonText(wireChange(c));
}

/**
 * JSON.stringify for data from the database (plain objects, arrays, strings, numbers,
 * booleans, null), at any depth: V8's serializer recurses and overflows the stack at a few
 * thousand levels, so a record nested deeper is written by an explicit stack instead.
 */
export function jsonText(value: unknown): string {
  try {
    return JSON.stringify(value);
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
  }
  return deepJsonText(value);
}

type Frame =
  { array: readonly unknown[]; i: number } | { object: Record<string, unknown>; keys: string[]; i: number; written: number };

/** JSON.stringify's output for JSON data, without recursion. */
export function deepJsonText(root: unknown): string {
  const out: string[] = [];
  const stack: Frame[] = [];
  const open = new Set<object>(); // the objects on the current path: a cycle is an error, as in JSON.stringify
  const omitted = (v: unknown) => v === undefined || typeof v === 'function' || typeof v === 'symbol';
  const write = (v: unknown): void => {
    if (v === null || typeof v !== 'object') {
      if (typeof v === 'bigint') throw new TypeError('Do not know how to serialize a BigInt');
      out.push(omitted(v) ? 'null' : JSON.stringify(v));
      return;
    }
    if (open.has(v)) throw new TypeError('Converting circular structure to JSON');
    // dates and the like: flat
    if (typeof (v as { toJSON?: unknown }).toJSON === 'function') return void out.push(JSON.stringify(v));
    open.add(v);
    if (Array.isArray(v)) {
      out.push('[');
      stack.push({ array: v, i: 0 });
    } else {
      out.push('{');
      stack.push({ object: v as Record<string, unknown>, keys: Object.keys(v), i: 0, written: 0 });
    }
  };
  if (omitted(root)) return 'null';
  write(root);
  while (stack.length) {
    const f = stack.at(-1)!;
    if ('array' in f) {
      if (f.i === f.array.length) {
        out.push(']');
        open.delete(f.array);
        stack.pop();
        continue;
      }
      if (f.i > 0) out.push(',');
      write(f.array[f.i++]);
    } else {
      if (f.i === f.keys.length) {
        out.push('}');
        open.delete(f.object);
        stack.pop();
        continue;
      }
      const k = f.keys[f.i++]!;
      const v = f.object[k];
      if (omitted(v)) continue;
      out.push(`${f.written++ > 0 ? ',' : ''}${JSON.stringify(k)}:`);
      write(v);
    }
  }
  return out.join('');
}

export type EncodedChange = { ok: true; json: string } | { ok: false; error: string };

/**
 * A change ready to send, or why it cannot be: checked against the schema receivers hold
 * pages to (a change they would refuse would refuse its whole page), serialized, and no
 * larger than `maxBytes`.
 */
export function encodeChange(c: Change, opts: { maxBytes?: number } = {}): EncodedChange {
  try {
    const wire = wireChange(c);
    const checked = changeSchema.safeParse(wire);
    if (!checked.success)
      return {
        ok: false,
        error: `receivers would refuse it: ${checked.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
      };
    const json = jsonText(wire);
    const bytes = Buffer.byteLength(json);
    const max = opts.maxBytes ?? MAX_CHANGE_BYTES;
    if (bytes > max) return { ok: false, error: `${bytes} bytes as JSON, more than a change may be (${max})` };
    return { ok: true, json };
  } catch (e) {
    return { ok: false, error: `cannot be serialized: ${e instanceof Error ? e.message : String(e)}` };
  }
}

/** A page whose changes are already JSON (encodeChange). */
export interface EncodedPage {
  changes: readonly string[];
  next: Cursor;
  withheld: number;
  more: boolean;
}

function pageJson(p: EncodedPage): string {
  return (
    `{"changes":[${p.changes.join(',')}],"next":${JSON.stringify({ txid: p.next.txid, pos: p.next.pos })},` +
    `"withheld":${p.withheld},"more":${p.more}}`
  );
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

type SealOptions = LinkEnds & { keys: LinkKeySender; receiverKey: Sm2PublicKey; senderKey: Sm2PrivateKey; aad: Uint8Array };

/**
 * Seals a page under the sender's current key for this link (made and signed on rotation
 * only). A change that cannot be sent (encodeChange) is left out and counted as withheld,
 * so one bad record never fails a page; `onUnsendable` hears which and why.
 */
export function sealPage(page: FeedPage, opts: SealOptions & { onUnsendable?: (c: Change, error: string) => void }): Buffer {
  const changes: string[] = [];
  let withheld = page.withheld;
  for (const c of page.changes) {
    const e = encodeChange(c);
    if (e.ok) changes.push(e.json);
    else {
      withheld++;
      opts.onUnsendable?.(c, e.error);
    }
  }
  return sealEncoded({ changes, next: page.next, withheld, more: page.more }, opts);
}

/** Seals a page whose changes are already encoded. */
export function sealEncoded(page: EncodedPage, opts: SealOptions): Buffer {
  const link = opts.keys.keyFor({ from: opts.from, to: opts.to, receiverKey: opts.receiverKey, signer: opts.senderKey });
  const nonce = randomBytes(12);
  const { ciphertext, tag } = sm4GcmEncrypt(link.key, nonce, gzipSync(pageJson(page)), Buffer.concat([opts.aad, link.id]));
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
  let compressed: Buffer;
  try {
    compressed = sm4GcmDecrypt(linkKey, nonce, ciphertext, tag, Buffer.concat([opts.aad, id]));
  } catch (e) {
    return {
      ok: false,
      error: {
        kind: 'auth-failed',
        message: `the page does not open for this link and cursor: ${e instanceof Error ? e.message : String(e)}`,
      },
    };
  }
  let json: string;
  try {
    // Bounded: a page that inflates beyond what a sender may send is refused, not held in memory.
    json = gunzipSync(compressed, { maxOutputLength: MAX_PAGE_JSON_BYTES }).toString('utf8');
  } catch (e) {
    return {
      ok: false,
      error: { kind: 'malformed', message: `the page does not inflate: ${e instanceof Error ? e.message : String(e)}` },
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
