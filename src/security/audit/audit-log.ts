// The audit log of one site: batched appends (group commit, gapless sequence numbers),
// HMAC-SM3 per entry, SM2-signed checkpoints over the RFC 9162 Merkle root, proofs, and
// cosignatures by other sites.
import type { Db, Queryable } from '../../db/index.ts';
import { sm2Sign, sm2Verify, type Sm2PrivateKey, type Sm2PublicKey } from '../crypto/index.ts';
import { APPEND_LOCK, DbAppender } from './appender.ts';
import { auditEventBytes, auditEventSchema, canonicalBytes, type AuditEvent } from './event.ts';
import { consistencyProof, consistencyProofWith, FrontierBuilder, frontierNodes, inclusionProof, leafHash } from './merkle.ts';

export interface AuditSigner {
  siteId: string;
  key: Sm2PrivateKey;
}

export interface AuditLogOptions {
  db: Db;
  /** HMAC-SM3 key held by the KMS: an altered or forged row fails its MAC. */
  macKey: Uint8Array;
  signer: AuditSigner;
  now?: () => Date;
  maxBatch?: number;
}

export interface Checkpoint {
  treeSize: number;
  root: Buffer;
  issuedAt: string;
  statement: string;
  signature: Buffer;
  signerSite: string;
  signerPublicKey: string;
}

export type AuditAppendError = { kind: 'invalid-event'; issues: string[] };

export function checkpointStatement(c: { site: string; treeSize: number; root: Uint8Array; issuedAt: string }): string {
  return canonicalBytes({
    type: 'medmesh-audit-checkpoint/1',
    site: c.site,
    treeSize: c.treeSize,
    root: Buffer.from(c.root).toString('hex'),
    issuedAt: c.issuedAt,
  }).toString('utf8');
}

export class AuditLog {
  readonly #o: AuditLogOptions;
  readonly #appender: DbAppender;

  constructor(opts: AuditLogOptions) {
    this.#o = opts;
    this.#appender = new DbAppender({ db: opts.db, macKey: opts.macKey, ...(opts.maxBatch ? { maxBatch: opts.maxBatch } : {}) });
  }

  /** Validates and appends one event; resolves with its sequence number once committed. */
  append(event: AuditEvent): Promise<{ ok: true; seq: number } | { ok: false; error: AuditAppendError }> {
    const parsed = auditEventSchema.safeParse(event);
    if (!parsed.success)
      return Promise.resolve({
        ok: false,
        error: { kind: 'invalid-event', issues: parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`) },
      });
    const e = parsed.data;
    return this.#appender
      .append({ bytes: auditEventBytes(e), entity: e.resource ?? null, agent: e.actor.id })
      .then((seq) => ({ ok: true as const, seq }));
  }

  /** Resolves once every entry appended so far is written (or has failed). */
  close(): Promise<void> {
    return this.#appender.close();
  }

  /** Signs the current tree if it grew since the last checkpoint. */
  async checkpoint(): Promise<Checkpoint | undefined> {
    const { db, signer } = this.#o;
    return db.transaction(async (tx) => {
      await tx.query('SELECT pg_advisory_xact_lock($1)', [APPEND_LOCK + 1]);
      const last = await latest(tx);
      const size = last?.treeSize ?? 0;
      const frontier = last ? splitFrontier(last.frontier) : [];
      const { rows } = await tx.query<{ entry: Buffer }>('SELECT entry FROM audit_entry WHERE seq >= $1 ORDER BY seq', [size]);
      if (rows.length === 0) return last?.checkpoint;
      const tree = new FrontierBuilder(frontier, size);
      for (const r of rows) tree.push(leafHash(r.entry));
      const next = { size: tree.size, frontier: tree.frontier() };
      const root = tree.root();
      const issuedAt = (this.#o.now?.() ?? new Date()).toISOString();
      const statement = checkpointStatement({ site: signer.siteId, treeSize: next.size, root, issuedAt });
      const signature = sm2Sign(signer.key, Buffer.from(statement));
      await tx.query(
        `INSERT INTO audit_checkpoint (tree_size, root, frontier, issued_at, statement, signature, signer_site, signer_public_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
        [
          next.size,
          root,
          Buffer.concat(next.frontier),
          issuedAt,
          statement,
          signature,
          signer.siteId,
          signer.key.publicKey.toPem(),
        ],
      );
      return {
        treeSize: next.size,
        root,
        issuedAt,
        statement,
        signature,
        signerSite: signer.siteId,
        signerPublicKey: signer.key.publicKey.toPem(),
      };
    });
  }

  async latestCheckpoint(): Promise<Checkpoint | undefined> {
    return (await latest(this.#o.db))?.checkpoint;
  }

  /** Inclusion proof of entry `seq` in the tree of `treeSize` entries. */
  async inclusionProof(seq: number, treeSize: number): Promise<{ leafHash: Buffer; proof: Buffer[] }> {
    const leaves = await this.#leaves(treeSize);
    if (seq < 0 || seq >= leaves.length) throw new RangeError(`entry ${seq} is not in a tree of ${treeSize}`);
    return { leafHash: leaves[seq]!, proof: inclusionProof(leaves, seq, treeSize) };
  }

  /**
   * RFC 9162 consistency proof between the trees of `from` and `to` entries. Peers ask for one
   * on every cosigning round, so it is built from the frontier stored with the checkpoint at
   * (or before) `from`, the frontier where an exported and pruned prefix ends, and the entries
   * stored after those, not from the whole log; only when that is not enough are all entries
   * read. RangeError: the log cannot answer (entries gone without a checkpoint to stand in).
   */
  async consistencyProof(from: number, to: number): Promise<Buffer[]> {
    if (from < 1 || from > to) throw new RangeError(`no consistency proof from ${from} to ${to}`);
    const { db } = this.#o;
    const { rows } = await db.query<{ tree_size: bigint; frontier: Uint8Array }>(
      `(SELECT tree_size, frontier FROM audit_checkpoint WHERE tree_size <= $1 ORDER BY tree_size DESC LIMIT 1)
       UNION ALL
       (SELECT tree_size, frontier FROM audit_checkpoint WHERE tree_size = (SELECT min(seq) FROM audit_entry))`,
      [from],
    );
    const frontiers = rows.map((r) => ({ size: Number(r.tree_size), frontier: splitFrontier(Buffer.from(r.frontier)) }));
    const base = Math.max(0, ...frontiers.map((f) => f.size).filter((size) => size <= to));
    const after = await db.query<{ seq: bigint; entry: Buffer }>(
      'SELECT seq, entry FROM audit_entry WHERE seq >= $1 AND seq < $2 ORDER BY seq',
      [base, to],
    );
    // A gap in the entries (deleted rows) cannot give the proof; the full read below says why.
    if (after.rows.length === to - base && after.rows.every((r, i) => Number(r.seq) === base + i)) {
      try {
        const mth = frontierNodes(
          frontiers,
          base,
          after.rows.map((r) => leafHash(r.entry)),
        );
        return consistencyProofWith(mth, from, to);
      } catch (e) {
        if (!(e instanceof RangeError)) throw e;
      }
    }
    return consistencyProof(await this.#leaves(to), from, to);
  }

  /** Stores another site's signature over one of our checkpoints, after checking it. */
  async addCosignature(treeSize: number, site: string, signature: Buffer, publicKey: Sm2PublicKey): Promise<boolean> {
    const { rows } = await this.#o.db.query<{ statement: string }>(
      'SELECT statement FROM audit_checkpoint WHERE tree_size = $1',
      [treeSize],
    );
    if (!rows[0] || !sm2Verify(publicKey, Buffer.from(rows[0].statement), signature)) return false;
    await this.#o.db.query(
      'INSERT INTO audit_cosignature (tree_size, site, signature, public_key) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING',
      [treeSize, site, signature, publicKey.toPem()],
    );
    return true;
  }

  async #leaves(treeSize: number): Promise<Buffer[]> {
    const { rows } = await this.#o.db.query<{ entry: Buffer }>('SELECT entry FROM audit_entry WHERE seq < $1 ORDER BY seq', [
      treeSize,
    ]);
    if (rows.length < treeSize) throw new RangeError(`the log holds ${rows.length} entries, fewer than ${treeSize}`);
    return rows.map((r) => leafHash(r.entry));
  }
}

/** A checkpoint signed by another site, over the same statement bytes. */
export function cosign(statement: string, key: Sm2PrivateKey): Buffer {
  return sm2Sign(key, Buffer.from(statement));
}

async function latest(q: Queryable): Promise<{ treeSize: number; frontier: Buffer; checkpoint: Checkpoint } | undefined> {
  const { rows } = await q.query<{
    tree_size: bigint;
    root: Buffer;
    frontier: Buffer;
    issued_at: Date;
    statement: string;
    signature: Buffer;
    signer_site: string;
    signer_public_key: string;
  }>(
    `SELECT tree_size, root, frontier, issued_at, statement, signature, signer_site, signer_public_key
       FROM audit_checkpoint ORDER BY tree_size DESC LIMIT 1`,
  );
  const r = rows[0];
  if (!r) return undefined;
  const checkpoint: Checkpoint = {
    treeSize: Number(r.tree_size),
    root: Buffer.from(r.root),
    issuedAt: new Date(r.issued_at).toISOString(),
    statement: r.statement,
    signature: Buffer.from(r.signature),
    signerSite: r.signer_site,
    signerPublicKey: r.signer_public_key,
  };
  return { treeSize: Number(r.tree_size), frontier: Buffer.from(r.frontier), checkpoint };
}

export function splitFrontier(b: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < b.length; i += 32) out.push(b.subarray(i, i + 32));
  return out;
}
