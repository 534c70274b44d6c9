// What sites exchange to witness each other's audit logs: a site's signed checkpoint, the
// consistency proof between two of its tree sizes, a cosignature handed back, and a peer's
// attested answer "the latest checkpoint of your log I hold is this one". Every answer is
// checked here before anything is believed: checkpoints against the signing site's key,
// attestations against the witness's key and the asker's nonce.
import { z } from 'zod';
import { sm2Verify, type Sm2PublicKey } from '../crypto/index.ts';
import { checkpointStatement, type Checkpoint } from './audit-log.ts';
import { canonicalBytes } from './event.ts';

const hex32 = z.string().regex(/^[0-9a-f]{64}$/);
const base64 = z.string().regex(/^[A-Za-z0-9+/]*={0,2}$/);

export const checkpointJsonSchema = z.object({
  treeSize: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
  root: hex32,
  issuedAt: z.iso.datetime({ offset: true }),
  statement: z.string().max(2000),
  signature: base64.max(400),
  signerSite: z.string().min(1).max(100),
});

export type CheckpointJson = z.infer<typeof checkpointJsonSchema> & { signerPublicKey?: string };

export function checkpointJson(c: Checkpoint): CheckpointJson {
  return {
    treeSize: c.treeSize,
    root: c.root.toString('hex'),
    issuedAt: c.issuedAt,
    statement: c.statement,
    signature: c.signature.toString('base64'),
    signerSite: c.signerSite,
    signerPublicKey: c.signerPublicKey,
  };
}

/** A checkpoint of `site`'s log, verified: its statement says what its fields say, and `site`'s key signed it. */
export interface SignedCheckpoint {
  site: string;
  treeSize: number;
  root: Buffer;
  issuedAt: string;
  statement: string;
  signature: Buffer;
}

export function parseSignedCheckpoint(
  raw: unknown,
  o: { site: string; keys: readonly Sm2PublicKey[] },
): { ok: true; checkpoint: SignedCheckpoint } | { ok: false; problem: string } {
  const p = checkpointJsonSchema.safeParse(raw);
  if (!p.success) return { ok: false, problem: `malformed checkpoint: ${p.error.issues[0]?.message ?? ''}` };
  const c = p.data;
  if (c.signerSite !== o.site) return { ok: false, problem: `the checkpoint is signed as site ${c.signerSite}, not ${o.site}` };
  const root = Buffer.from(c.root, 'hex');
  const issuedAt = new Date(c.issuedAt).toISOString();
  if (checkpointStatement({ site: o.site, treeSize: c.treeSize, root, issuedAt }) !== c.statement)
    return { ok: false, problem: 'the signed statement does not say what the checkpoint fields say' };
  const signature = Buffer.from(c.signature, 'base64');
  if (!o.keys.some((k) => sm2Verify(k, Buffer.from(c.statement), signature)))
    return { ok: false, problem: `the signature is not by site ${o.site}'s registered key (forged, or the key changed)` };
  return { ok: true, checkpoint: { site: o.site, treeSize: c.treeSize, root, issuedAt, statement: c.statement, signature } };
}

/** What a witness signs when it tells a site which of its checkpoints it holds (bound to the asker's nonce). */
export function witnessStatement(w: {
  witness: string;
  site: string;
  treeSize: number;
  root: Uint8Array;
  nonce: string;
  checkedAt: string;
}): Buffer {
  return canonicalBytes({
    type: 'medmesh-audit-witness/1',
    witness: w.witness,
    site: w.site,
    treeSize: w.treeSize,
    root: Buffer.from(w.root).toString('hex'),
    nonce: w.nonce,
    checkedAt: w.checkedAt,
  });
}

export const heldAnswerSchema = z.object({
  witness: z.string(),
  site: z.string(),
  nonce: z.string(),
  checkedAt: z.iso.datetime({ offset: true }),
  checkpoint: checkpointJsonSchema,
  attestation: base64.max(400),
});
export type HeldAnswer = z.infer<typeof heldAnswerSchema>;

export function parseHeldAnswer(
  raw: unknown,
  o: { witness: string; site: string; nonce: string; witnessKey: Sm2PublicKey; siteKeys: readonly Sm2PublicKey[] },
): { ok: true; checkpoint: SignedCheckpoint } | { ok: false; problem: string } {
  const p = heldAnswerSchema.safeParse(raw);
  if (!p.success) return { ok: false, problem: `malformed answer: ${p.error.issues[0]?.message ?? ''}` };
  const a = p.data;
  if (a.witness !== o.witness || a.site !== o.site || a.nonce !== o.nonce)
    return { ok: false, problem: 'the answer is for another witness, site or request (nonce)' };
  const statement = witnessStatement({
    witness: a.witness,
    site: a.site,
    treeSize: a.checkpoint.treeSize,
    root: Buffer.from(a.checkpoint.root, 'hex'),
    nonce: a.nonce,
    checkedAt: new Date(a.checkedAt).toISOString(),
  });
  if (!sm2Verify(o.witnessKey, statement, Buffer.from(a.attestation, 'base64')))
    return { ok: false, problem: `the answer is not signed by ${o.witness}'s registered key` };
  const cp = parseSignedCheckpoint(a.checkpoint, { site: o.site, keys: o.siteKeys });
  if (!cp.ok) return { ok: false, problem: `${o.witness} holds a checkpoint this site did not sign: ${cp.problem}` };
  return cp;
}

/** Calls one peer's /audit API with this site's service credentials. */
export class WitnessClient {
  readonly #url: string;
  readonly #authorization: () => string;
  readonly #timeoutMs: number;

  constructor(o: { url: string; authorization: () => string; timeoutMs?: number }) {
    this.#url = o.url.replace(/\/+$/, '');
    this.#authorization = o.authorization;
    this.#timeoutMs = o.timeoutMs ?? 10_000;
  }

  async #call(path: string, body?: unknown): Promise<{ status: number; json: unknown; text: string }> {
    const res = await fetch(`${this.#url}/audit${path}`, {
      method: body === undefined ? 'GET' : 'POST',
      headers: {
        authorization: this.#authorization(),
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(this.#timeoutMs),
    });
    const text = await res.text();
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: res.status, json, text: text.slice(0, 300) };
  }

  /** The peer's latest signed checkpoint (unchecked), or undefined when it has signed none yet. */
  async checkpoint(): Promise<unknown> {
    const r = await this.#call('/checkpoint');
    if (r.status === 404) return undefined;
    if (r.status !== 200) throw new Error(`answered ${r.status} to /audit/checkpoint: ${r.text}`);
    return r.json;
  }

  /** The consistency proof, or the peer's reason for not giving one (it answers but cannot prove). */
  async consistency(from: number, to: number): Promise<{ ok: true; proof: Buffer[] } | { ok: false; problem: string }> {
    const r = await this.#call(`/proof/consistency?from=${from}&to=${to}`);
    if (r.status === 404 || r.status === 400) return { ok: false, problem: `answered ${r.status}: ${r.text}` };
    if (r.status !== 200) throw new Error(`answered ${r.status} to /audit/proof/consistency: ${r.text}`);
    const p = z.object({ proof: z.array(hex32).max(128) }).safeParse(r.json);
    if (!p.success) return { ok: false, problem: 'sent a malformed consistency proof' };
    return { ok: true, proof: p.data.proof.map((h) => Buffer.from(h, 'hex')) };
  }

  async cosign(treeSize: number, signature: Buffer): Promise<void> {
    const r = await this.#call('/cosignatures', { treeSize, signature: signature.toString('base64') });
    if (r.status !== 201) throw new Error(`refused the cosignature of checkpoint ${treeSize}: ${r.status} ${r.text}`);
  }

  /** What the peer holds of `site`'s log (undefined: nothing yet). */
  async held(site: string, nonce: string): Promise<unknown> {
    const r = await this.#call(`/witness/${encodeURIComponent(site)}?nonce=${encodeURIComponent(nonce)}`);
    if (r.status === 404) return undefined;
    if (r.status !== 200) throw new Error(`answered ${r.status} to /audit/witness/${site}: ${r.text}`);
    return r.json;
  }
}
