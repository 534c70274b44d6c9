// Recomputes the whole audit log and says exactly what is wrong: entries whose MAC fails
// (altered or forged), missing sequence numbers (deleted), checkpoints whose root or
// signature does not match, disagreement with a checkpoint the verifier trusts, and append
// times moved away from the time the entry itself carries, and search columns that no longer
// say what the entry says.
import { Worker } from 'node:worker_threads';
import type { Queryable } from '../../db/index.ts';
import { sm2Verify, type Sm2PublicKey } from '../crypto/index.ts';
import { checkpointStatement, splitFrontier } from './audit-log.ts';
import { NULL_TEXT } from './entry-columns.ts';
import { FrontierBuilder } from './merkle.ts';

export interface AuditReport {
  ok: boolean;
  entries: number;
  checkpoints: number;
  /** Entries whose bytes no longer match their MAC: altered, or inserted by someone without the key. */
  invalidMac: number[];
  /**
   * Entries whose append time (`recorded_at`, what AuditEvent `date` searches and retention
   * use) is further than the allowed skew from the time in their own bytes: moved to hide
   * an entry from a date search, or to age it out early. The bytes are under the MAC; this
   * column is not, so it is checked against them.
   */
  timeMismatch: number[];
  /**
   * Entries whose search columns (`entity`, `agent`: what AuditEvent searches by patient and by
   * user find them through) disagree with their own bytes — changed to hide an entry from an
   * auditor's search. Like the append time, these columns sit beside the MAC'd bytes.
   */
  columnMismatch: number[];
  /** Ranges of sequence numbers that are gone (deleted rows). */
  missing: Array<{ from: number; to: number }>;
  /** Checkpoints whose Merkle root differs from the entries now stored. */
  rootMismatch: number[];
  /** Checkpoints whose signature or statement does not verify. */
  badSignature: number[];
  /** Against the trusted checkpoint given to the verifier, if any. */
  trusted?: { treeSize: number; consistent: boolean };
  /**
   * Against the latest checkpoints of this log that other sites hold (they checked and cosigned
   * them): a log now shorter than one of them, or whose entries no longer give its root, was
   * truncated or rewritten. `archived`: the checkpoint lies inside the exported prefix and
   * cannot be recomputed here (not counted against the log).
   */
  witnesses?: Array<{ peer: string; treeSize: number; consistent: boolean; archived?: true }>;
  /** Entries after the last checkpoint (not yet covered by a signature). */
  unsignedTail: number;
  /** Entries before this sequence number were exported to archive files and pruned (checked there). */
  archivedBefore: number;
  /**
   * The pruned prefix ends at a checkpoint signed within the online period (`onlineDays`):
   * entries left the database before their time — with export records written to cover it.
   */
  prunedEarly?: { before: number; issuedAt: string };
  seconds: number;
}

export interface VerifyOptions {
  macKey: Uint8Array;
  /** Keys whose checkpoint signatures are accepted (the site's own key at least). */
  signers: Sm2PublicKey[];
  trusted?: { treeSize: number; root: Uint8Array };
  /** Checkpoints of this log held by other sites (see `askWitnesses`). */
  witnessed?: ReadonlyArray<{ peer: string; treeSize: number; root: Uint8Array }>;
  /** Entries stay online at least this many days (policies.auditOnlineDays): a younger pruned prefix fails. */
  onlineDays?: number;
  now?: Date;
  /** How far an entry's append time may be from its own time (clocks of API nodes and database, queueing). Default 5 minutes. */
  maxAppendSkewMs?: number;
  pageSize?: number;
  onProgress?: (entries: number) => void;
}

/**
 * The exported-and-pruned prefix of the log: the entries before the first one still stored,
 * when export records cover them without a gap and a checkpoint marks where they end.
 */
async function archivedPrefix(q: Queryable): Promise<{ size: number; frontier: Buffer[]; issuedAt: Date } | undefined> {
  const { rows } = await q.query<{ first: bigint | null; covered: bigint | null }>(
    `SELECT (SELECT min(seq) FROM audit_entry) AS first,
            (SELECT coalesce(max(to_seq) + 1, 0) FROM audit_export) AS covered`,
  );
  const covered = Number(rows[0]?.covered ?? 0);
  if (covered === 0) return undefined;
  const first = rows[0]?.first === null || rows[0]?.first === undefined ? covered : Number(rows[0].first);
  if (first === 0) return undefined;
  const exports = await q.query<{ from_seq: bigint; to_seq: bigint }>(
    'SELECT from_seq, to_seq FROM audit_export ORDER BY from_seq',
  );
  let next = 0;
  for (const e of exports.rows) {
    if (Number(e.from_seq) !== next) return undefined; // a hole in the export records: verify everything as stored
    next = Number(e.to_seq) + 1;
  }
  if (first > next) return undefined; // more is gone than was exported: reported as missing
  const cp = await q.query<{ frontier: Uint8Array; issued_at: Date }>(
    'SELECT frontier, issued_at FROM audit_checkpoint WHERE tree_size = $1',
    [first],
  );
  if (!cp.rows[0]) return undefined;
  return { size: first, frontier: splitFrontier(Buffer.from(cp.rows[0].frontier)), issuedAt: new Date(cp.rows[0].issued_at) };
}

export async function verifyAuditLog(q: Queryable, opts: VerifyOptions): Promise<AuditReport> {
  const t0 = performance.now();
  const report: AuditReport = {
    ok: true,
    entries: 0,
    checkpoints: 0,
    invalidMac: [],
    timeMismatch: [],
    columnMismatch: [],
    missing: [],
    rootMismatch: [],
    badSignature: [],
    unsignedTail: 0,
    archivedBefore: 0,
    seconds: 0,
  };
  const archived = await archivedPrefix(q);
  const { rows: cps } = await q.query<{
    tree_size: bigint;
    root: Buffer;
    statement: string;
    signature: Buffer;
    signer_site: string;
    issued_at: Date;
  }>('SELECT tree_size, root, statement, signature, signer_site, issued_at FROM audit_checkpoint ORDER BY tree_size');
  const checkpoints = cps.map((c) => ({ ...c, size: Number(c.tree_size) }));
  report.checkpoints = checkpoints.length;
  for (const c of checkpoints) {
    const expected = checkpointStatement({
      site: c.signer_site,
      treeSize: c.size,
      root: c.root,
      issuedAt: new Date(c.issued_at).toISOString(),
    });
    const signed = opts.signers.some((k) => sm2Verify(k, Buffer.from(c.statement), c.signature));
    if (!signed || expected !== c.statement) report.badSignature.push(c.size);
  }
  // What the tree must hash to at given sizes: the stored checkpoints, the trusted one, the witnessed ones.
  const expected = new Map<number, Array<{ root: Buffer; done: (ok: boolean) => void }>>();
  const expect = (size: number, root: Uint8Array, done: (ok: boolean) => void) => {
    const list = expected.get(size) ?? [];
    list.push({ root: Buffer.from(root), done });
    expected.set(size, list);
  };
  for (const c of checkpoints) expect(c.size, c.root, (ok) => void (ok || report.rootMismatch.push(c.size)));
  if (opts.trusted) {
    const t = opts.trusted;
    expect(t.treeSize, t.root, (consistent) => (report.trusted = { treeSize: t.treeSize, consistent }));
  }
  if (opts.witnessed) {
    report.witnesses = [];
    for (const w of opts.witnessed) {
      const entry: NonNullable<AuditReport['witnesses']>[number] = { peer: w.peer, treeSize: w.treeSize, consistent: false };
      report.witnesses.push(entry);
      if (archived && w.treeSize <= archived.size) entry.archived = true;
      else expect(w.treeSize, w.root, (ok) => (entry.consistent = ok));
    }
  }

  // Over positions 0..n-1, a deleted entry counted as a zero leaf; a pruned (exported) prefix
  // is taken from the signed checkpoint it ended at.
  const tree = new FrontierBuilder(archived?.frontier ?? [], archived?.size ?? 0);
  report.archivedBefore = archived?.size ?? 0;
  // Pruning takes only entries older than the online period, so the checkpoint where the pruned
  // prefix ends is that old too (a day's leeway for clocks and for when pruning runs).
  if (archived && opts.onlineDays !== undefined) {
    const limit = (opts.now ?? new Date()).getTime() - (opts.onlineDays - 1) * 86_400_000;
    if (archived.issuedAt.getTime() > limit)
      report.prunedEarly = { before: archived.size, issuedAt: archived.issuedAt.toISOString() };
  }
  const macs = new MacWorker(opts.macKey);
  const bad: number[] = [];
  const columns: number[] = [];
  let expectedSeq = archived?.size ?? 0;
  const page = opts.pageSize ?? 10_000;
  const maxSkew = opts.maxAppendSkewMs ?? 5 * 60_000;
  const checkAt = (n: number) => {
    const want = expected.get(n);
    if (!want) return;
    const root = tree.root();
    for (const w of want) w.done(root.equals(w.root));
  };
  /** Folds a checked page into the tree, in order, with a zero leaf for each deleted entry. */
  const fold = async (p: { seqs: number[]; checked: Promise<PageCheck> }) => {
    const c = await p.checked;
    bad.push(...c.bad);
    columns.push(...c.columns);
    const leaves = Buffer.from(c.leaves);
    p.seqs.forEach((seq, i) => {
      if (seq > expectedSeq) {
        report.missing.push({ from: expectedSeq, to: seq - 1 });
        // The tree is over positions; a deleted entry can no longer be hashed, so roots past it mismatch.
        for (let s = expectedSeq; s < seq; s++) {
          tree.push(Buffer.alloc(32));
          checkAt(tree.size);
        }
      }
      tree.push(leaves.subarray(i * 32, i * 32 + 32));
      checkAt(tree.size);
      expectedSeq = seq + 1;
    });
  };
  try {
    // The append time as epoch milliseconds: a float parses far faster than a timestamptz.
    const fetchPage = (from: number) =>
      q.query<{ seq: bigint; entry: Buffer; mac: Buffer; at: number | string; entity: string | null; agent: string | null }>(
        `SELECT seq, entry, mac, extract(epoch FROM recorded_at)::float8 * 1000 AS at, entity, agent FROM audit_entry
          WHERE seq >= $1 ORDER BY seq LIMIT $2`,
        [from, page],
        { name: 'audit-verify-page' },
      );
    // Three stages overlap: the database reads page k+1, the worker checks and hashes page k,
    // and this thread folds page k-1 into the tree.
    let pending = fetchPage(expectedSeq);
    let previous: { seqs: number[]; checked: Promise<PageCheck> } | undefined;
    for (;;) {
      const { rows } = await pending;
      if (rows.length === 0) break;
      pending = fetchPage(Number(rows[rows.length - 1]!.seq) + 1);
      const current = { seqs: rows.map((r) => Number(r.seq)), checked: macs.check(rows) };
      // Awaited when folded; a page still in flight when verification fails must not become an unhandled rejection.
      current.checked.catch(() => undefined);
      for (const r of rows) {
        const own = entryTimeMs(r.entry);
        if (own === undefined || Math.abs(Number(r.at) - own) > maxSkew) report.timeMismatch.push(Number(r.seq));
      }
      report.entries += rows.length;
      if (previous) await fold(previous);
      previous = current;
      opts.onProgress?.(report.entries);
    }
    if (previous) await fold(previous);
    report.invalidMac = bad.sort((a, b) => a - b);
    report.columnMismatch = columns.sort((a, b) => a - b);
  } finally {
    await macs.close();
  }
  const lastSigned = checkpoints.at(-1)?.size ?? 0;
  // The log must reach every size something vouches for: its own last checkpoint, the trusted
  // one, and what its peers hold. Falling short is a truncation (those roots stay unmatched).
  const end = Math.max(lastSigned, opts.trusted?.treeSize ?? 0, ...(opts.witnessed ?? []).map((w) => w.treeSize));
  if (end > expectedSeq) report.missing.push({ from: expectedSeq, to: end - 1 });
  if (lastSigned > expectedSeq) report.rootMismatch.push(lastSigned);
  if (opts.trusted && !report.trusted) report.trusted = { treeSize: opts.trusted.treeSize, consistent: false };
  report.unsignedTail = Math.max(0, expectedSeq - lastSigned);
  report.ok =
    !report.invalidMac.length &&
    !report.timeMismatch.length &&
    !report.columnMismatch.length &&
    !report.missing.length &&
    !report.rootMismatch.length &&
    !report.badSignature.length &&
    !report.prunedEarly &&
    (report.trusted?.consistent ?? true) &&
    (report.witnesses ?? []).every((w) => w.consistent || w.archived);
  report.seconds = (performance.now() - t0) / 1000;
  return report;
}

const TIME_KEY = Buffer.from('"time":"');

/**
 * The `time` an entry carries, read straight from its canonical bytes: keys are sorted, so
 * `time` is the last top-level key, and inside a JSON string a quote is always escaped, so
 * the last `"time":"` is the key itself. Undefined when the bytes hold no readable time.
 */
export function entryTimeMs(entry: Uint8Array): number | undefined {
  const bytes = Buffer.isBuffer(entry) ? entry : Buffer.from(entry.buffer, entry.byteOffset, entry.byteLength);
  const at = bytes.lastIndexOf(TIME_KEY);
  if (at < 0) return undefined;
  const start = at + TIME_KEY.length;
  const end = bytes.indexOf(0x22, start);
  if (end < 0) return undefined;
  const ms = Date.parse(bytes.toString('latin1', start, end));
  return Number.isNaN(ms) ? undefined : ms;
}

/** What the worker finds in one page: failing MACs, disagreeing search columns, and the page's Merkle leaf hashes in order. */
interface PageCheck {
  bad: number[];
  columns: number[];
  /** 32 bytes per row of the page. */
  leaves: ArrayBuffer;
}

/** MAC, search-column and leaf-hash work on a worker thread; each page travels as one transferred buffer. */
class MacWorker {
  readonly #worker = new Worker(new URL('./mac-worker.ts', import.meta.url));
  readonly #key: Uint8Array;
  readonly #pending = new Map<number, { resolve: (r: PageCheck) => void; reject: (e: Error) => void }>();
  #next = 0;

  constructor(key: Uint8Array) {
    this.#key = key;
    this.#worker.on('message', (m: PageCheck & { id: number }) => {
      this.#pending.get(m.id)?.resolve(m);
      this.#pending.delete(m.id);
    });
    // One listener for the worker's life (not one per page): a failure fails every page in flight.
    this.#worker.on('error', (e: Error) => {
      for (const p of this.#pending.values()) p.reject(e);
      this.#pending.clear();
    });
  }

  check(
    rows: ReadonlyArray<{ seq: bigint; entry: Uint8Array; mac: Uint8Array; entity: string | null; agent: string | null }>,
  ): Promise<PageCheck> {
    const text = (v: string | null) => (v === null ? 0 : Buffer.byteLength(v));
    const size = rows.reduce((n, r) => n + 53 + r.entry.length + text(r.entity) + text(r.agent), 0);
    const packed = new ArrayBuffer(size); // zeroed: the leaf prefix 0x00 before each entry is already there
    const buf = Buffer.from(packed);
    let off = 0;
    const putText = (v: string | null) => {
      buf.writeUInt32BE(v === null ? NULL_TEXT : Buffer.byteLength(v), off);
      off += 4 + (v === null ? 0 : buf.write(v, off + 4));
    };
    for (const r of rows) {
      buf.writeBigUInt64BE(r.seq, off);
      buf.writeUInt32BE(r.entry.length, off + 8);
      buf.set(r.entry, off + 13); // PGlite hands back bytea as Uint8Array, pg as Buffer
      // A MAC of the wrong length is simply wrong: pad (the buffer is zeroed) or cut to 32 so the layout holds.
      buf.set(r.mac.length > 32 ? r.mac.subarray(0, 32) : r.mac, off + 13 + r.entry.length);
      off += 45 + r.entry.length;
      putText(r.entity);
      putText(r.agent);
    }
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.postMessage({ id, key: this.#key, packed, count: rows.length }, [packed]);
    });
  }

  close(): Promise<number> {
    return this.#worker.terminate();
  }
}
