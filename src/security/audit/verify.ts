// Recomputes the whole audit log and says exactly what is wrong: entries whose MAC fails
// (altered or forged), missing sequence numbers (deleted), checkpoints whose root or
// signature does not match, and disagreement with a checkpoint the verifier trusts.
import type { Queryable } from '../../db/index.ts';
import { equalConstantTime, sm2Verify, type Sm2PublicKey } from '../crypto/index.ts';
import { checkpointStatement, entryMac } from './audit-log.ts';
import { extendFrontier, leafHash, rootOfFrontier } from './merkle.ts';

export interface AuditReport {
  ok: boolean;
  entries: number;
  checkpoints: number;
  /** Entries whose bytes no longer match their MAC: altered, or inserted by someone without the key. */
  invalidMac: number[];
  /** Ranges of sequence numbers that are gone (deleted rows). */
  missing: Array<{ from: number; to: number }>;
  /** Checkpoints whose Merkle root differs from the entries now stored. */
  rootMismatch: number[];
  /** Checkpoints whose signature or statement does not verify. */
  badSignature: number[];
  /** Against the trusted checkpoint given to the verifier, if any. */
  trusted?: { treeSize: number; consistent: boolean };
  /** Entries after the last checkpoint (not yet covered by a signature). */
  unsignedTail: number;
  seconds: number;
}

export interface VerifyOptions {
  macKey: Uint8Array;
  /** Keys whose checkpoint signatures are accepted (the site's own key at least). */
  signers: Sm2PublicKey[];
  trusted?: { treeSize: number; root: Uint8Array };
  pageSize?: number;
  onProgress?: (entries: number) => void;
}

export async function verifyAuditLog(q: Queryable, opts: VerifyOptions): Promise<AuditReport> {
  const t0 = performance.now();
  const report: AuditReport = { ok: true, entries: 0, checkpoints: 0, invalidMac: [], missing: [], rootMismatch: [], badSignature: [], unsignedTail: 0, seconds: 0 };
  const { rows: cps } = await q.query<{ tree_size: bigint; root: Buffer; statement: string; signature: Buffer; signer_site: string; issued_at: Date }>(
    'SELECT tree_size, root, statement, signature, signer_site, issued_at FROM audit_checkpoint ORDER BY tree_size',
  );
  const checkpoints = cps.map((c) => ({ ...c, size: Number(c.tree_size) }));
  report.checkpoints = checkpoints.length;
  for (const c of checkpoints) {
    const expected = checkpointStatement({ site: c.signer_site, treeSize: c.size, root: c.root, issuedAt: new Date(c.issued_at).toISOString() });
    const signed = opts.signers.some((k) => sm2Verify(k, Buffer.from(c.statement), c.signature));
    if (!signed || expected !== c.statement) report.badSignature.push(c.size);
  }
  const sizesToCheck = new Map(checkpoints.map((c) => [c.size, c.root]));
  if (opts.trusted) sizesToCheck.set(opts.trusted.treeSize, Buffer.from(opts.trusted.root));

  let frontier: Buffer[] = [];
  let size = 0; // leaves folded so far (positions 0..size-1, gaps counted as missing)
  let expectedSeq = 0;
  const page = opts.pageSize ?? 10_000;
  const checkAt = (n: number) => {
    const want = sizesToCheck.get(n);
    if (!want) return;
    const ok = rootOfFrontier(frontier).equals(want);
    if (opts.trusted && n === opts.trusted.treeSize) report.trusted = { treeSize: n, consistent: ok };
    if (!ok && checkpoints.some((c) => c.size === n)) report.rootMismatch.push(n);
  };
  for (;;) {
    const { rows } = await q.query<{ seq: bigint; entry: Buffer; mac: Buffer }>('SELECT seq, entry, mac FROM audit_entry WHERE seq >= $1 ORDER BY seq LIMIT $2', [expectedSeq, page]);
    if (rows.length === 0) break;
    const leaves: Buffer[] = [];
    for (const r of rows) {
      const seq = Number(r.seq);
      if (seq > expectedSeq) {
        report.missing.push({ from: expectedSeq, to: seq - 1 });
        // The tree is over positions; a deleted entry can no longer be hashed, so roots past it mismatch.
        for (let s = expectedSeq; s < seq; s++) leaves.push(Buffer.alloc(32));
      }
      if (!equalConstantTime(entryMac(opts.macKey, seq, r.entry), r.mac)) report.invalidMac.push(seq);
      leaves.push(leafHash(r.entry));
      expectedSeq = seq + 1;
    }
    for (const leaf of leaves) {
      ({ frontier, size } = extendFrontier(frontier, size, [leaf]));
      checkAt(size);
    }
    report.entries += rows.length;
    opts.onProgress?.(report.entries);
  }
  const lastSigned = checkpoints.at(-1)?.size ?? 0;
  if (lastSigned > expectedSeq) {
    report.missing.push({ from: expectedSeq, to: lastSigned - 1 });
    report.rootMismatch.push(lastSigned);
  }
  if (opts.trusted && !report.trusted) report.trusted = { treeSize: opts.trusted.treeSize, consistent: false };
  report.unsignedTail = Math.max(0, expectedSeq - lastSigned);
  report.ok = !report.invalidMac.length && !report.missing.length && !report.rootMismatch.length && !report.badSignature.length && (report.trusted?.consistent ?? true);
  report.seconds = (performance.now() - t0) / 1000;
  return report;
}
