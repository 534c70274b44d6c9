// One vote of the witness: its fields, the schema every vote from outside passes, its
// canonical bytes (what is hashed into the chain and signed) and the operator's approval
// that a manual failover or a fence carries. Pure: SM2 and SM3 from crypto, nothing else.
import { z } from 'zod';
import { hlcToHex, type Hlc } from '../clock/index.ts';
import { canonicalBytes, sm2Sign, sm2Verify, sm3, type Sm2PrivateKey, type Sm2PublicKey } from '../security/crypto/index.ts';

export const VOTE_KINDS = ['grant', 'renew-summary', 'claim', 'release', 'switchover', 'manual-failover', 'fence'] as const;
export type VoteKind = (typeof VOTE_KINDS)[number];

/** Kinds that move a shard to a new epoch: every earlier holder is fenced by it. */
export const TRANSFER_KINDS: ReadonlySet<VoteKind> = new Set(['grant', 'claim', 'switchover', 'manual-failover', 'fence']);
/** Kinds an operator must have signed for. */
export const OPERATOR_KINDS: ReadonlySet<VoteKind> = new Set(['manual-failover', 'fence']);

/** The `prev` of the first vote. */
export const GENESIS_PREV = '0'.repeat(64);
/** Written into the canonical bytes (not a field): a witness signature over a vote is never one over another statement. */
export const VOTE_FORMAT = 'medmesh-witness-vote/1';
export const APPROVAL_FORMAT = 'medmesh-failover-approval/1';
/** Canonical bytes of a vote's detail at most this long: votes are small, the chain is kept by every site. */
export const MAX_DETAIL_BYTES = 2048;

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
export type VoteDetail = { [key: string]: JsonValue };

/** An operator's SM2 signature (base64 DER) over the approval statement of a manual failover or fence. */
export interface OperatorSignature {
  id: string;
  signature: string;
}

/** What the lease book decides: a vote without its place in the chain or its signature. */
export interface VoteBody {
  kind: VoteKind;
  shard: string;
  site: string;
  epoch: number;
  detail: VoteDetail;
  operator?: OperatorSignature;
}

/** A vote ready to sign: the body placed after the chain's head, stamped with the witness's wall clock and key id. */
export interface VoteDraft extends VoteBody {
  seq: number;
  prev: string;
  at: string;
  witnessKey: string;
}

export interface Vote extends VoteDraft {
  /** SM2 (user ID 1234567812345678) over `voteBytes`, DER, base64. */
  signature: string;
}

const hex64 = z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lowercase hex digits (an SM3 digest)');
const hlcHex = z.string().regex(/^[0-9a-f]{16}$/, 'must be an HLC as 16 lowercase hex digits');
const name = z.string().min(1).max(100);
const safeInt = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const base64 = z.string().regex(/^[A-Za-z0-9+/]*={0,2}$/, 'must be base64');
const iso = z.iso.datetime();

// Only integers among numbers: canonical bytes must come out the same from any JSON writer.
const jsonValue: z.ZodType<JsonValue> = z.lazy(() =>
  z.union([
    z.string().max(1000),
    z.number().int().min(Number.MIN_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER),
    z.boolean(),
    z.null(),
    z.array(jsonValue).max(64),
    z.record(z.string().max(64), jsonValue),
  ]),
);

/** Each kind's detail: what the lease book writes and reads back on rebuild. */
export const detailSchemas = {
  grant: z.strictObject({ position: hlcHex }),
  'renew-summary': z.strictObject({ renewals: safeInt.min(1), position: hlcHex }),
  claim: z.strictObject({ appliedPosition: hlcHex, holderPosition: hlcHex, lagMs: safeInt }),
  release: z.strictObject({ finalPosition: hlcHex, successor: name }),
  switchover: z.strictObject({ appliedPosition: hlcHex, finalPosition: hlcHex }),
  'manual-failover': z.strictObject({
    fromEpoch: safeInt,
    requestedAt: iso,
    reason: z.string().min(1).max(500),
    holderPosition: hlcHex,
    appliedPosition: hlcHex.optional(),
    lagMs: safeInt.optional(),
  }),
  fence: z.strictObject({ fromEpoch: safeInt, requestedAt: iso, reason: z.string().min(1).max(500) }),
} satisfies Record<VoteKind, z.ZodType>;

export type DetailOf<K extends VoteKind> = z.infer<(typeof detailSchemas)[K]>;

export const voteSchema = z
  .strictObject({
    seq: safeInt.min(1),
    prev: hex64,
    kind: z.enum(VOTE_KINDS),
    shard: name,
    site: name,
    epoch: safeInt.min(1),
    at: iso,
    detail: z.record(z.string().max(64), jsonValue),
    witnessKey: name,
    signature: base64.min(1).max(200),
    operator: z.strictObject({ id: name, signature: base64.min(1).max(200) }).optional(),
  })
  .superRefine((v, ctx) => {
    const d = detailSchemas[v.kind].safeParse(v.detail);
    if (!d.success) {
      const i = d.error.issues[0];
      ctx.addIssue({ code: 'custom', path: ['detail', ...(i?.path ?? [])], message: `${v.kind}: ${i?.message ?? 'invalid'}` });
    }
    if (canonicalBytes(v.detail).length > MAX_DETAIL_BYTES)
      ctx.addIssue({ code: 'custom', path: ['detail'], message: `longer than ${MAX_DETAIL_BYTES} bytes` });
    if (OPERATOR_KINDS.has(v.kind) !== (v.operator !== undefined))
      ctx.addIssue({
        code: 'custom',
        path: ['operator'],
        message: OPERATOR_KINDS.has(v.kind)
          ? `a ${v.kind} vote needs an operator's signature`
          : `a ${v.kind} vote has no operator`,
      });
  });

/** A vote's detail read back as its kind's shape (votes in a chain were checked by `voteSchema`). */
export function detailOf<K extends VoteKind>(v: VoteBody & { kind: K }): DetailOf<K> {
  return detailSchemas[v.kind].parse(v.detail) as DetailOf<K>;
}

/**
 * The canonical bytes of a vote: canonical JSON (keys sorted, no whitespace) of every field
 * but `signature`, plus the format. The operator's approval (its signature included) is in:
 * the witness attests which approval it acted on, and no one can swap it afterwards.
 */
export function voteBytes(v: VoteDraft): Buffer {
  return canonicalBytes({
    format: VOTE_FORMAT,
    seq: v.seq,
    prev: v.prev,
    kind: v.kind,
    shard: v.shard,
    site: v.site,
    epoch: v.epoch,
    at: v.at,
    detail: v.detail,
    witnessKey: v.witnessKey,
    operator: v.operator ? { id: v.operator.id, signature: v.operator.signature } : undefined,
  });
}

/** SM3 of the canonical bytes, hex: the next vote's `prev`. */
export function voteHash(v: VoteDraft): string {
  return sm3(voteBytes(v)).toString('hex');
}

export function signVote(draft: VoteDraft, key: Sm2PrivateKey): Vote {
  const d: VoteDraft = {
    seq: draft.seq,
    prev: draft.prev,
    kind: draft.kind,
    shard: draft.shard,
    site: draft.site,
    epoch: draft.epoch,
    at: draft.at,
    detail: draft.detail,
    witnessKey: draft.witnessKey,
    ...(draft.operator ? { operator: { id: draft.operator.id, signature: draft.operator.signature } } : {}),
  };
  return { ...d, signature: sm2Sign(key, voteBytes(d)).toString('base64') };
}

export function verifyVoteSignature(v: Vote, key: Sm2PublicKey): boolean {
  return sm2Verify(key, voteBytes(v), Buffer.from(v.signature, 'base64'));
}

/**
 * What an operator approves: move `shard` to `toSite` (manual failover) or stop all writes to it
 * (fence, `toSite` null), from the epoch it has now. Binding the epoch makes an approval good for
 * one move only: once the shard has moved on, the same signature no longer matches.
 */
export interface OperatorRequest {
  action: 'manual-failover' | 'fence';
  shard: string;
  toSite: string | null;
  fromEpoch: number;
  operator: string;
  requestedAt: string;
  reason: string;
}

/** The bytes an operator signs (on their own machine, with their own SM2 key). */
export function operatorStatement(r: OperatorRequest): Buffer {
  return canonicalBytes({
    format: APPROVAL_FORMAT,
    action: r.action,
    shard: r.shard,
    toSite: r.toSite,
    fromEpoch: r.fromEpoch,
    operator: r.operator,
    requestedAt: r.requestedAt,
    reason: r.reason,
  });
}

export function signOperatorRequest(r: OperatorRequest, key: Sm2PrivateKey): OperatorSignature {
  return { id: r.operator, signature: sm2Sign(key, operatorStatement(r)).toString('base64') };
}

export function verifyOperatorRequest(r: OperatorRequest, signature: string, key: Sm2PublicKey): boolean {
  return sm2Verify(key, operatorStatement(r), Buffer.from(signature, 'base64'));
}

/** The request a manual-failover or fence vote claims its operator signed (undefined for other kinds). */
export function operatorRequestOf(v: VoteBody): OperatorRequest | undefined {
  if (!v.operator) return undefined;
  if (v.kind === 'manual-failover') {
    const d = detailOf({ ...v, kind: v.kind });
    return { action: v.kind, shard: v.shard, toSite: v.site, fromEpoch: d.fromEpoch, operator: v.operator.id, ...pick(d) };
  }
  if (v.kind === 'fence') {
    const d = detailOf({ ...v, kind: v.kind });
    return { action: v.kind, shard: v.shard, toSite: null, fromEpoch: d.fromEpoch, operator: v.operator.id, ...pick(d) };
  }
  return undefined;
}

const pick = (d: { requestedAt: string; reason: string }) => ({ requestedAt: d.requestedAt, reason: d.reason });

/** Positions travel in votes as fixed-width hex (JSON has no 64-bit integers). */
export const positionHex = (p: Hlc): string => hlcToHex(p);
export const positionOf = (hex: string): Hlc => BigInt(`0x${hex}`);
