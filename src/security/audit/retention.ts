// Audit retention: segments of the log older than the online period are exported to signed,
// self-verifying archive files (JSON lines, ready for the WORM archive), read back and
// checked, recorded in audit_export, and only then may be pruned from the database. The
// database refuses any other deletion (trigger in migration 0007).
//
// File: line 1 a header (site, range, the frontier before the segment, the signed checkpoint
// it ends at); then one line per entry {seq, entry, mac} (base64, the canonical bytes as
// stored); last line {sm3, signature}: SM3 of every byte before it, signed with SM2.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { access, mkdir, open, rename } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Db, Queryable } from '../../db/index.ts';
import { sm2Sign, sm2Verify, type Sm2PrivateKey, type Sm2PublicKey } from '../crypto/index.ts';
import { entryMacFor } from './appender.ts';
import { checkpointStatement, splitFrontier } from './audit-log.ts';
import { FrontierBuilder, leafHash } from './merkle.ts';

export const SEGMENT_FORMAT = 'medmesh-audit-segment/1';

export interface SegmentExport {
  file: string;
  fromSeq: number;
  toSeq: number;
  entries: number;
  sm3: string;
}

export interface SegmentCheck {
  ok: boolean;
  site?: string;
  fromSeq?: number;
  toSeq?: number;
  entries: number;
  problems: string[];
  /** The SM3 the file's trailer names (what the export recorded). */
  sm3?: string;
}

interface CheckpointRow {
  tree_size: bigint;
  root: Uint8Array;
  frontier: Uint8Array;
  issued_at: Date;
  statement: string;
  signature: Uint8Array;
  signer_site: string;
  signer_public_key: string;
}

/** Exports every whole segment (checkpoint to checkpoint) whose entries are all older than `olderThan`. */
export async function exportAuditSegments(opts: {
  db: Db;
  siteId: string;
  signer: Sm2PrivateKey;
  dir: string;
  olderThan: Date;
  maxEntriesPerFile?: number;
  onProgress?: (s: SegmentExport) => void;
}): Promise<SegmentExport[]> {
  const { db } = opts;
  await mkdir(opts.dir, { recursive: true });
  const done: SegmentExport[] = [];
  for (;;) {
    const end = Number(
      (await db.query<{ n: bigint }>('SELECT coalesce(max(to_seq) + 1, 0)::bigint AS n FROM audit_export')).rows[0]!.n,
    );
    const young = (
      await db.query<{ s: bigint | null }>('SELECT min(seq) AS s FROM audit_entry WHERE seq >= $1 AND recorded_at >= $2', [
        end,
        opts.olderThan.toISOString(),
      ])
    ).rows[0]?.s;
    const limit = Math.min(
      young === null || young === undefined ? Number.MAX_SAFE_INTEGER : Number(young),
      end + (opts.maxEntriesPerFile ?? 1_000_000),
    );
    const { rows: cps } = await db.query<CheckpointRow>(
      `SELECT tree_size, root, frontier, issued_at, statement, signature, signer_site, signer_public_key FROM audit_checkpoint
        WHERE tree_size > $1 AND tree_size <= $2 ORDER BY tree_size DESC LIMIT 1`,
      [end, limit],
    );
    const cp = cps[0];
    if (!cp) return done;
    const before =
      end === 0
        ? []
        : splitFrontier(
            Buffer.from(
              (await db.query<{ frontier: Uint8Array }>('SELECT frontier FROM audit_checkpoint WHERE tree_size = $1', [end]))
                .rows[0]?.frontier ?? Buffer.alloc(0),
            ),
          );
    if (end > 0 && before.length === 0) throw new Error(`no checkpoint at ${end} to continue the export from`);
    const seg = await writeSegment(db, { siteId: opts.siteId, signer: opts.signer, dir: opts.dir, from: end, cp, before });
    const check = await verifySegmentFile(seg.file, { signers: [opts.signer.publicKey] });
    if (!check.ok) throw new Error(`the exported file ${seg.file} does not verify: ${check.problems.join('; ')}`);
    await db.query(
      'INSERT INTO audit_export (from_seq, to_seq, file_name, file_sm3, checkpoint_tree_size) VALUES ($1, $2, $3, $4, $5)',
      [seg.fromSeq, seg.toSeq, seg.file, Buffer.from(seg.sm3, 'hex'), Number(cp.tree_size)],
    );
    done.push(seg);
    opts.onProgress?.(seg);
  }
}

async function writeSegment(
  db: Db,
  o: { siteId: string; signer: Sm2PrivateKey; dir: string; from: number; cp: CheckpointRow; before: Buffer[] },
): Promise<SegmentExport> {
  const to = Number(o.cp.tree_size) - 1;
  const name = `audit-${o.siteId}-${String(o.from).padStart(12, '0')}-${String(to).padStart(12, '0')}.jsonl`;
  const file = join(o.dir, name);
  const tmp = `${file}.partial`;
  const fh = await open(tmp, 'w');
  const digest = createHash('sm3');
  const tree = new FrontierBuilder(o.before, o.from);
  let sm3: string | undefined;
  const write = async (line: string) => {
    const b = Buffer.from(`${line}\n`, 'utf8');
    digest.update(b);
    await fh.write(b);
  };
  try {
    await write(
      JSON.stringify({
        format: SEGMENT_FORMAT,
        site: o.siteId,
        fromSeq: o.from,
        toSeq: to,
        frontierBefore: o.before.map((h) => h.toString('hex')),
        checkpoint: {
          treeSize: Number(o.cp.tree_size),
          root: Buffer.from(o.cp.root).toString('hex'),
          issuedAt: new Date(o.cp.issued_at).toISOString(),
          statement: o.cp.statement,
          signature: Buffer.from(o.cp.signature).toString('base64'),
          signerSite: o.cp.signer_site,
          signerPublicKey: o.cp.signer_public_key,
        },
        exportedAt: new Date().toISOString(),
      }),
    );
    let next = o.from;
    while (next <= to) {
      const { rows } = await db.query<{ seq: bigint; entry: Uint8Array; mac: Uint8Array }>(
        'SELECT seq, entry, mac FROM audit_entry WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT 5000',
        [next, to],
      );
      if (rows.length === 0) break;
      for (const r of rows) {
        if (Number(r.seq) !== next) throw new Error(`audit entry ${next} is missing: refusing to export a log with a gap`);
        tree.push(leafHash(r.entry));
        await write(
          JSON.stringify({
            seq: next,
            entry: Buffer.from(r.entry).toString('base64'),
            mac: Buffer.from(r.mac).toString('base64'),
          }),
        );
        next++;
      }
    }
    if (next !== to + 1) throw new Error(`audit entries ${next}..${to} are missing: refusing to export`);
    if (!tree.root().equals(Buffer.from(o.cp.root)))
      throw new Error(
        `entries ${o.from}..${to} do not match the signed checkpoint ${to + 1}: the log was altered; run medmesh audit verify`,
      );
    sm3 = digest.digest('hex');
    await fh.write(
      `${JSON.stringify({ sm3, signature: sm2Sign(o.signer, Buffer.from(`${SEGMENT_FORMAT}|${sm3}`)).toString('base64') })}\n`,
    );
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
  return { file, fromSeq: o.from, toSeq: to, entries: to - o.from + 1, sm3: sm3 ?? '' };
}

type Header = {
  format?: string;
  site?: string;
  fromSeq?: number;
  toSeq?: number;
  frontierBefore?: string[];
  checkpoint?: { treeSize: number; root: string; issuedAt: string; statement: string; signature: string; signerSite: string };
};

/**
 * Checks an archive file on its own: the file signature, every entry contiguous, the Merkle
 * root against the signed checkpoint, the checkpoint's signature and, given the key, each MAC.
 * The file is read line by line (a segment may hold a million entries).
 */
export async function verifySegmentFile(
  file: string,
  opts: { signers: Sm2PublicKey[]; macKey?: Uint8Array },
): Promise<SegmentCheck> {
  const problems: string[] = [];
  const digest = createHash('sm3'); // of every line before the trailer
  const mac = opts.macKey ? entryMacFor(opts.macKey) : undefined;
  const badMac: number[] = [];
  let header: (Header & { fromSeq: number; toSeq: number; checkpoint: NonNullable<Header['checkpoint']> }) | undefined;
  let tree: FrontierBuilder | undefined;
  let expected = 0;
  let entries = 0;
  let broken = false;
  // A line is known not to be the trailer only once the next one arrives.
  let previous: string | undefined;
  const take = (line: string): string | undefined => {
    digest.update(Buffer.from(`${line}\n`, 'utf8'));
    if (!header) {
      let h: Header;
      try {
        h = JSON.parse(line) as Header;
      } catch {
        return 'not a medmesh audit segment (the header is not JSON)';
      }
      if (h.format !== SEGMENT_FORMAT || !h.checkpoint || h.fromSeq === undefined || h.toSeq === undefined)
        return `not a ${SEGMENT_FORMAT} file`;
      header = { ...h, fromSeq: h.fromSeq, toSeq: h.toSeq, checkpoint: h.checkpoint };
      tree = new FrontierBuilder(
        (h.frontierBefore ?? []).map((x) => Buffer.from(x, 'hex')),
        h.fromSeq,
      );
      expected = h.fromSeq;
      return undefined;
    }
    if (broken) return undefined;
    let row: { seq: number; entry: string; mac: string };
    try {
      row = JSON.parse(line) as { seq: number; entry: string; mac: string };
    } catch {
      problems.push(`line for entry ${expected} is not JSON`);
      broken = true;
      return undefined;
    }
    if (row.seq !== expected) problems.push(`entry ${expected} is missing (found ${row.seq})`);
    const entry = Buffer.from(row.entry, 'base64');
    tree!.push(leafHash(entry));
    if (mac && !mac(row.seq, entry).equals(Buffer.from(row.mac, 'base64'))) badMac.push(row.seq);
    expected = row.seq + 1;
    entries++;
    return undefined;
  };
  try {
    const rl = createInterface({ input: createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity });
    for await (const line of rl) {
      if (previous !== undefined) {
        const fatal = take(previous);
        if (fatal) {
          rl.close();
          return { ok: false, entries: 0, problems: [fatal] };
        }
      }
      previous = line;
    }
  } catch (e) {
    return { ok: false, entries: 0, problems: [`cannot read ${file}: ${e instanceof Error ? e.message : String(e)}`] };
  }
  if (!header) return { ok: false, entries: 0, problems: [`not a ${SEGMENT_FORMAT} file (no header and trailer)`] };
  let trailer: { sm3?: string; signature?: string };
  try {
    trailer = JSON.parse(previous ?? '{}') as { sm3?: string; signature?: string };
  } catch {
    return { ok: false, entries, problems: ['not a medmesh audit segment (the trailer is not JSON)'] };
  }
  if (trailer.sm3 !== digest.digest('hex'))
    problems.push('the file was changed after it was written (SM3 of its contents differs from the trailer)');
  if (
    !opts.signers.some((k) =>
      sm2Verify(k, Buffer.from(`${SEGMENT_FORMAT}|${trailer.sm3 ?? ''}`), Buffer.from(trailer.signature ?? '', 'base64')),
    )
  )
    problems.push('the file signature does not verify with the given key(s)');
  const cp = header.checkpoint;
  const statementOk =
    cp.statement ===
    checkpointStatement({ site: cp.signerSite, treeSize: cp.treeSize, root: Buffer.from(cp.root, 'hex'), issuedAt: cp.issuedAt });
  if (!statementOk || !opts.signers.some((k) => sm2Verify(k, Buffer.from(cp.statement), Buffer.from(cp.signature, 'base64'))))
    problems.push(`checkpoint ${cp.treeSize}: statement or signature does not verify`);
  if (cp.treeSize !== header.toSeq + 1)
    problems.push(`the segment ends at ${header.toSeq} but its checkpoint covers ${cp.treeSize} entries`);
  if (expected !== header.toSeq + 1) problems.push(`the file holds entries up to ${expected - 1}, not ${header.toSeq}`);
  if (!tree!.root().equals(Buffer.from(cp.root, 'hex')))
    problems.push(`the entries do not hash to the signed root of checkpoint ${cp.treeSize}`);
  if (badMac.length) problems.push(`entries failing their MAC: ${badMac.join(', ')}`);
  return {
    ok: problems.length === 0,
    site: header.site ?? '',
    fromSeq: header.fromSeq,
    toSeq: header.toSeq,
    entries,
    problems,
    ...(typeof trailer.sm3 === 'string' ? { sm3: trailer.sm3 } : {}),
  };
}

/**
 * Deletes exported entries older than `olderThan` from the database (a prefix of the log).
 * The trigger refuses any row outside an exported segment, so nothing leaves without export.
 */
export async function pruneExportedAudit(db: Db, opts: { olderThan: Date }): Promise<number> {
  return db.transaction(async (tx) => {
    await tx.query("SELECT set_config('medmesh.audit_prune', 'on', true)");
    const { rows } = await tx.query<{ n: number }>(
      `WITH bound AS (
         SELECT least((SELECT coalesce(max(to_seq) + 1, 0) FROM audit_export),
                      coalesce((SELECT min(seq) FROM audit_entry WHERE recorded_at >= $1::timestamptz),
                               9223372036854775807)) AS b),
       d AS (DELETE FROM audit_entry WHERE seq < (SELECT b FROM bound) RETURNING 1)
       SELECT count(*)::int AS n FROM d`,
      [opts.olderThan.toISOString()],
    );
    return rows[0]?.n ?? 0;
  });
}

export interface ArchivedSegmentCheck {
  fromSeq: number;
  toSeq: number;
  file: string;
  /**
   * missing: not found where recorded (or in the directory given); bad: found, and it does not
   * verify or is not the file exported.
   */
  status: 'ok' | 'missing' | 'bad';
  problems: string[];
}

/**
 * Checks every exported segment against its archive file: the file recorded at export (or the
 * file of that name in `dir`, where the archive is mounted) must be the one written (its SM3),
 * cover the recorded range and verify on its own. Export records are rows an attacker with
 * database access can add to make a deleted prefix look archived; the files show it.
 */
export async function checkArchivedSegments(
  q: Queryable,
  opts: { dir?: string; signers: Sm2PublicKey[]; macKey?: Uint8Array },
): Promise<ArchivedSegmentCheck[]> {
  const { rows } = await q.query<{ from_seq: bigint; to_seq: bigint; file_name: string; file_sm3: Uint8Array }>(
    'SELECT from_seq, to_seq, file_name, file_sm3 FROM audit_export ORDER BY from_seq',
  );
  const out: ArchivedSegmentCheck[] = [];
  for (const r of rows) {
    const file = opts.dir ? join(opts.dir, basename(r.file_name)) : r.file_name;
    const base = { fromSeq: Number(r.from_seq), toSeq: Number(r.to_seq), file };
    try {
      await access(file);
    } catch {
      out.push({ ...base, status: 'missing', problems: [`${file} is not there`] });
      continue;
    }
    const check = await verifySegmentFile(file, { signers: opts.signers, ...(opts.macKey ? { macKey: opts.macKey } : {}) });
    const problems = [...check.problems];
    if (check.sm3 !== Buffer.from(r.file_sm3).toString('hex'))
      problems.push('not the file that was exported (its SM3 differs from the export record)');
    if (check.fromSeq !== base.fromSeq || check.toSeq !== base.toSeq)
      problems.push(`it covers ${check.fromSeq ?? '?'}..${check.toSeq ?? '?'}, the export record ${base.fromSeq}..${base.toSeq}`);
    out.push({ ...base, status: problems.length ? 'bad' : 'ok', problems });
  }
  return out;
}
