// The witness's HTTP API on the wire: request bodies and answers as zod schemas, shared by the
// server (src/http/witness-app.ts) and the client (witness-client.ts) so neither can drift.
// JSON has no 64-bit integers: HLC positions travel as 16 lowercase hex digits (vote.ts).
import { z } from 'zod';
import type { LeaseRefusal, LeaseView } from './lease-book.ts';
import { positionHex, positionOf } from './vote.ts';
import type { ShardAnswer, WitnessAnswer, WitnessErrorCode } from './witness-api.ts';

export const WITNESS_API_PREFIX = '/witness/v1';

const name = z.string().min(1).max(100);
export const hlcHexSchema = z.string().regex(/^[0-9a-f]{16}$/, 'must be an HLC as 16 lowercase hex digits');
const iso = z.iso.datetime();

export const renewBody = z.strictObject({
  site: name,
  shards: z
    .array(z.strictObject({ shard: name, position: hlcHexSchema }))
    .min(1)
    .max(1000),
});
export const reportBody = z.strictObject({
  site: name,
  shards: z
    .array(z.strictObject({ shard: name, appliedPosition: hlcHexSchema }))
    .min(1)
    .max(1000),
});
export const claimBody = z.strictObject({ site: name, shard: name, appliedPosition: hlcHexSchema });
export const releaseBody = z.strictObject({ site: name, shard: name, successor: name, finalPosition: hlcHexSchema });
const approval = z.strictObject({
  id: name,
  requestedAt: iso,
  reason: z.string().min(1).max(500),
  signature: z
    .string()
    .regex(/^[A-Za-z0-9+/]+={0,2}$/, 'must be base64 (DER SM2 signature)')
    .max(200),
});
export const manualFailoverBody = z.strictObject({ shard: name, toSite: name, approval });
export const fenceBody = z.strictObject({ shard: name, approval });
export const chainQuery = z.strictObject({
  after: z.coerce.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(0),
  limit: z.coerce.number().int().min(1).max(1000).optional(),
});

const leaseViewJson = z.strictObject({
  shard: z.string(),
  epoch: z.number().int().min(0),
  holder: z.string().nullable(),
  leaseMs: z.number().int(),
  expiresInMs: z.number().min(0),
  basis: z.enum(['renewed', 'restart', 'none']),
  released: z.strictObject({ successor: z.string(), finalPosition: hlcHexSchema }).nullable(),
  fenced: z.boolean(),
});
export type LeaseViewJson = z.infer<typeof leaseViewJson>;

const refusalJson = z.strictObject({
  code: z.enum([
    'bad-input',
    'unknown-shard',
    'not-residency',
    'no-lease',
    'not-holder',
    'already-holder',
    'released',
    'fenced',
    'lease-unexpired',
    'lag-too-large',
    'behind-final',
    'unknown-operator',
    'bad-operator-signature',
    'inconsistent',
  ]),
  message: z.string(),
  shard: z.string().optional(),
  lease: leaseViewJson.optional(),
  retryInMs: z.number().optional(),
  lagMs: z.number().optional(),
  maxLagMs: z.number().optional(),
});

export const headJson = z.strictObject({ seq: z.number().int().min(0), hash: z.string().regex(/^[0-9a-f]{64}$/) });

export const witnessAnswerJson = z.strictObject({
  answers: z.array(
    z.union([
      z.strictObject({ shard: z.string(), ok: z.literal(true), lease: leaseViewJson }),
      z.strictObject({ shard: z.string(), ok: z.literal(false), refusal: refusalJson }),
    ]),
  ),
  head: headJson,
});
export type WitnessAnswerJson = z.infer<typeof witnessAnswerJson>;

/** Votes are checked by the site's own VoteChain; here only their place in the answer. */
export const chainAnswerJson = z.strictObject({ votes: z.array(z.record(z.string(), z.unknown())), head: headJson });
export const leasesAnswerJson = z.strictObject({ leases: z.array(leaseViewJson), head: headJson, leader: z.string() });

export const WITNESS_ERROR_CODES = [
  'unavailable',
  'not-leader',
  'unauthorized',
  'bad-request',
] as const satisfies readonly WitnessErrorCode[];
export const errorJson = z.object({ code: z.string(), message: z.string(), leader: z.string().optional() });

export function leaseToJson(l: LeaseView): LeaseViewJson {
  return {
    ...l,
    released: l.released ? { successor: l.released.successor, finalPosition: positionHex(l.released.finalPosition) } : null,
  };
}

export function leaseOfJson(l: LeaseViewJson): LeaseView {
  return {
    ...l,
    released: l.released ? { successor: l.released.successor, finalPosition: positionOf(l.released.finalPosition) } : null,
  };
}

function refusalToJson(r: LeaseRefusal): z.infer<typeof refusalJson> {
  const { lease, ...rest } = r;
  return { ...rest, ...(lease ? { lease: leaseToJson(lease) } : {}) };
}

function refusalOfJson(r: z.infer<typeof refusalJson>): LeaseRefusal {
  const { lease, ...rest } = r;
  return { ...rest, ...(lease ? { lease: leaseOfJson(lease) } : {}) };
}

export function answerToJson(a: WitnessAnswer): WitnessAnswerJson {
  return {
    answers: a.answers.map((s) =>
      s.ok
        ? { shard: s.shard, ok: true as const, lease: leaseToJson(s.lease) }
        : { shard: s.shard, ok: false as const, refusal: refusalToJson(s.refusal) },
    ),
    head: a.head,
  };
}

export function answerOfJson(a: WitnessAnswerJson): WitnessAnswer {
  return {
    answers: a.answers.map((s): ShardAnswer =>
      s.ok
        ? { shard: s.shard, ok: true, lease: leaseOfJson(s.lease) }
        : { shard: s.shard, ok: false, refusal: refusalOfJson(s.refusal) },
    ),
    head: a.head,
  };
}
