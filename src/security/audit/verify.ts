// Recomputes the whole audit log and says exactly what is wrong: entries whose MAC fails
// (altered or forged), missing sequence numbers (deleted), checkpoints whose root or
// signature does not match, and disagreement with a checkpoint the verifier trusts.
import { Worker } from 'node:worker_threads';
import type { Queryable } from '../../db/index.ts';
import { sm2Verify, type Sm2PublicKey } from '../crypto/index.ts';
import { checkpointStatement } from './audit-log.ts';
import { FrontierBuilder, leafHash } from './merkle.ts';

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

  const tree = new FrontierBuilder(); // over positions 0..n-1, a deleted entry counted as a zero leaf
  const macs = new MacWorker(opts.macKey);
  const macResults: Array<Promise<number[]>> = [];
  let expectedSeq = 0;
  const page = opts.pageSize ?? 10_000;
  const checkAt = (n: number) => {
    const want = sizesToCheck.get(n);
    if (!want) return;
    const ok = tree.root().equals(want);
    if (opts.trusted && n === opts.trusted.treeSize) report.trusted = { treeSize: n, consistent: ok };
    if (!ok && checkpoints.some((c) => c.size === n)) report.rootMismatch.push(n);
  };
  try {
    const fetchPage = (from: number) => q.query<{ seq: bigint; entry: Buffer; mac: Buffer }>('SELECT seq, entry, mac FROM audit_entry WHERE seq >= $1 ORDER BY seq LIMIT $2', [from, page]);
    let pending = fetchPage(0);
    for (;;) {
      const { rows } = await pending;
      if (rows.length === 0) break;
      // Fetch the next page while this one is hashed: the database and the hashing overlap.
      pending = fetchPage(Number(rows[rows.length - 1]!.seq) + 1);
      for (const r of rows) {
        const seq = Number(r.seq);
        if (seq > expectedSeq) {
          report.missing.push({ from: expectedSeq, to: seq - 1 });
          // The tree is over positions; a deleted entry can no longer be hashed, so roots past it mismatch.
          for (let s = expectedSeq; s < seq; s++) {
            tree.push(Buffer.alloc(32));
            checkAt(tree.size);
          }
        }
        tree.push(leafHash(r.entry));
        checkAt(tree.size);
        expectedSeq = seq + 1;
      }
      macResults.push(macs.check(rows));
      report.entries += rows.length;
      opts.onProgress?.(report.entries);
    }
      report.invalidMac = (await Promise.all(macResults)).flat().sort((a, b) => a - b);
  } finally {
    await macs.close();
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

/** MAC checks on a worker thread; each page travels as one transferred buffer. */
class MacWorker {
  readonly #worker = new Worker(new URL('./mac-worker.ts', import.meta.url));
  readonly #key: Uint8Array;
  readonly #pending = new Map<number, (bad: number[]) => void>();
  #next = 0;

  constructor(key: Uint8Array) {
    this.#key = key;
    this.#worker.on('message', (m: { id: number; bad: number[] }) => {
      this.#pending.get(m.id)?.(m.bad);
      this.#pending.delete(m.id);
    });
  }

  check(rows: ReadonlyArray<{ seq: bigint; entry: Uint8Array; mac: Uint8Array }>): Promise<number[]> {
    const size = rows.reduce((n, r) => n + 44 + r.entry.length, 0);
    const packed = new ArrayBuffer(size);
    const buf = Buffer.from(packed);
    let off = 0;
    for (const r of rows) {
      buf.writeBigUInt64BE(r.seq, off);
      buf.writeUInt32BE(r.entry.length, off + 8);
      buf.set(r.entry, off + 12); // PGlite hands back bytea as Uint8Array, pg as Buffer
      // A MAC of the wrong length is simply wrong: pad or cut to 32 so the layout holds.
      Buffer.concat([r.mac, Buffer.alloc(32)]).copy(buf, off + 12 + r.entry.length, 0, 32);
      off += 44 + r.entry.length;
    }
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, resolve);
      this.#worker.once('error', reject);
      this.#worker.postMessage({ id, key: this.#key, packed }, [packed]);
    });
  }

  close(): Promise<number> {
    return this.#worker.terminate();
  }
}
