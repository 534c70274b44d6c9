// medmesh audit verify | export | verify-file: recompute the site's audit log and report
// exactly what is wrong; export old segments to signed archive files (and prune them);
// check archive files on their own.
import { readFile } from 'node:fs/promises';
import type { Db } from '../db/index.ts';
import type { Region } from '../region/index.ts';
import {
  checkArchivedSegments,
  exportAuditSegments,
  pruneExportedAudit,
  verifyAuditLog,
  verifySegmentFile,
  verifyWithPeers,
  type AuditReport,
} from '../security/audit/index.ts';
import { Sm2PublicKey } from '../security/crypto/index.ts';
import { AssertionCache } from '../security/identity/index.ts';
import type { Kms } from '../security/kms/index.ts';
import { helpText, intFlag, parseFlags, UsageError, type FlagSpec, type VerbSpec } from './args.ts';
import { SITE_DB_FLAGS } from './common.ts';
import { openUnsealedKms, UNSEAL_FLAG } from './offline-kms.ts';

const spec = {
  name: 'audit verify',
  summary:
    "verify the site's audit log: entry MACs, gaps, Merkle roots, checkpoint signatures, " +
    'and against the checkpoints its peers cosigned',
  usage:
    'medmesh audit verify --region <file> --site <id> --unseal <share:key> ... [--peer-url <site=url> ...] [--offline] ' +
    '[--trusted-size <n> --trusted-root <hex>]',
  flags: {
    ...SITE_DB_FLAGS,
    ...UNSEAL_FLAG,
    'peer-url': {
      type: 'string',
      multiple: true,
      help:
        'where to reach a peer site, if not at its region-file url ' +
        "(the peers are asked for this log's latest checkpoint they cosigned)",
      placeholder: 'site=url',
    },
    archive: {
      type: 'string',
      help:
        'where the exported archive files are (default: where the export wrote them); ' +
        'the pruned prefix is checked against them',
      placeholder: 'dir',
    },
    offline: {
      type: 'boolean',
      help: 'check the local log only, without asking the peers (entries cut from its end then go unnoticed)',
      default: false,
    },
    'trusted-size': { type: 'string', help: 'tree size of a checkpoint you trust (e.g. kept by another site)', placeholder: 'n' },
    'trusted-root': { type: 'string', help: 'its Merkle root (hex)', placeholder: 'hex' },
  },
} satisfies VerbSpec<Record<string, FlagSpec>>;

const exportSpec = {
  name: 'audit export',
  summary:
    'export audit segments older than the online period to signed archive files; --prune then removes them from the database',
  usage: 'medmesh audit export --region <file> --site <id> --out <dir> --unseal <share:key> ... [--prune]',
  flags: {
    ...SITE_DB_FLAGS,
    ...UNSEAL_FLAG,
    out: { type: 'string', help: 'directory for the archive files (the WORM archive picks them up there)', placeholder: 'dir' },
    prune: { type: 'boolean', help: 'after export and read-back, delete the exported entries from the database', default: false },
  },
} satisfies VerbSpec<Record<string, FlagSpec>>;

const fileSpec = {
  name: 'audit verify-file',
  summary: 'check audit archive files on their own: file signature, entries, Merkle root, checkpoint signature',
  usage: 'medmesh audit verify-file --file <segment.jsonl> ... --signer-key <site public key pem>',
  flags: {
    file: { type: 'string', multiple: true, help: 'archive file', placeholder: 'file' },
    'signer-key': {
      type: 'string',
      multiple: true,
      help: "the site's SM2 public key (PEM), as published at /auth/keys",
      placeholder: 'pem',
    },
  },
} satisfies VerbSpec<Record<string, FlagSpec>>;

export async function auditVerb(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'export') return exportVerb(rest);
  if (sub === 'verify-file') return verifyFileVerb(rest);
  if (sub !== 'verify') {
    console.log([helpText(spec), helpText(exportSpec), helpText(fileSpec)].join('\n'));
    return sub === '--help' || sub === '-h' ? 0 : 2;
  }
  const f = parseFlags(spec, rest);
  if (f === 'help') return (console.log(helpText(spec)), 0);
  if ((f['trusted-size'] === undefined) !== (f['trusted-root'] === undefined))
    throw new UsageError('--trusted-size and --trusted-root go together');
  if (f['trusted-root'] !== undefined && !/^[0-9a-f]{64}$/.test(f['trusted-root']))
    throw new UsageError('--trusted-root must be 64 hex digits (an SM3 root)');
  const trusted =
    f['trusted-size'] !== undefined
      ? {
          treeSize: intFlag('trusted-size', f['trusted-size'], 1, Number.MAX_SAFE_INTEGER),
          root: Buffer.from(f['trusted-root']!, 'hex'),
        }
      : undefined;
  const overrides = peerUrls(f['peer-url']);
  const { db, kms, siteId, region } = await openUnsealedKms(f, f.unseal);
  try {
    const opts = {
      macKey: kms.deriveSecret('audit-entry-mac'),
      signers: [kms.signingKey()!.key.publicKey],
      onlineDays: region.config.policies.auditOnlineDays,
      ...(trusted ? { trusted } : {}),
      onProgress: (n: number) => process.stderr.write(`  verified ${n} entries\r`),
    };
    // The pruned prefix is in the archive files: export records alone could be written to cover a deletion.
    const archive = await checkArchivedSegments(db, {
      signers: opts.signers,
      macKey: opts.macKey,
      ...(f.archive ? { dir: f.archive } : {}),
    });
    const badArchive = archive.filter((a) => a.status === 'bad' || (a.status === 'missing' && f.archive !== undefined));
    const archiveNote = () => {
      for (const a of badArchive)
        console.error(`ARCHIVE ${a.status.toUpperCase()}: entries ${a.fromSeq}..${a.toSeq}: ${a.problems.join('; ')}`);
      const unseen = archive.filter((a) => a.status === 'missing' && f.archive === undefined);
      if (unseen.length)
        console.error(
          `note: ${unseen.length} exported segment(s) were not found where the export wrote them ` +
            `(${unseen[0]!.file}${unseen.length > 1 ? ', ...' : ''}); ` +
            'give --archive <dir> to check the pruned entries against the archive',
        );
    };
    if (f.offline) {
      const report = await verifyAuditLog(db, opts);
      process.stderr.write('\n');
      console.log(JSON.stringify({ ...report, archive }, null, 2));
      archiveNote();
      console.error(
        report.ok
          ? `local audit log intact: ${report.entries} entries, ${report.checkpoints} signed checkpoints ` +
              '(--offline: not compared with the checkpoints the peers cosigned, so entries cut from the end would not show)'
          : tampered(report),
      );
      return report.ok && !badArchive.length ? 0 : 1;
    }
    const v = await verifyWithPeers(db, opts, peerAccess({ db, kms, siteId, region, overrides }));
    process.stderr.write('\n');
    console.log(JSON.stringify({ ...v.report, peers: v.peers, confirmed: v.confirmed, archive }, null, 2));
    archiveNote();
    const held = (v.report.witnesses ?? []).filter((w) => w.consistent).map((w) => `${w.peer} (${w.treeSize} entries)`);
    const answers = v.peers.map((p) => `${p.peer}: ${p.status}${p.problem ? ` — ${p.problem}` : ''}`).join('; ');
    if (!v.report.ok) console.error(tampered(v.report));
    else if (!v.confirmed)
      console.error(
        `NOT CONFIRMED: the local log checks out (${v.report.entries} entries), ` +
          `but no peer confirmed it (${answers}); ` +
          'entries cut from its end would not show. --offline checks the local log alone.',
      );
    else
      console.error(
        `audit log intact: ${v.report.entries} entries, ${v.report.checkpoints} signed checkpoints; ` +
          `consistent with the checkpoints cosigned by ${held.join(', ') || 'no peer (no other site in the region)'}`,
      );
    return v.report.ok && v.confirmed && !badArchive.length ? 0 : 1;
  } finally {
    await db.close();
  }
}

function tampered(r: AuditReport): string {
  const cut = (r.witnesses ?? []).filter((w) => !w.consistent && !w.archived);
  return [
    'AUDIT LOG TAMPERED: see invalidMac, timeMismatch, columnMismatch, missing, rootMismatch, badSignature, ' +
      'prunedEarly and witnesses above',
    ...(r.prunedEarly
      ? [
          `  entries before ${r.prunedEarly.before} were pruned although signed on ${r.prunedEarly.issuedAt}, ` +
            'within the online period',
        ]
      : []),
    ...cut.map(
      (w) =>
        `  site ${w.peer} cosigned a checkpoint of ${w.treeSize} entries that this log ` +
        (w.treeSize > r.entries + r.archivedBefore
          ? 'no longer reaches: its newest entries were cut'
          : 'no longer gives: entries were changed or replaced'),
    ),
  ].join('\n');
}

function peerUrls(specs: string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const s of specs) {
    const m = /^([^=]+)=(https?:\/\/.+)$/.exec(s);
    if (!m) throw new UsageError(`--peer-url ${s}: expected site=http(s)://host:port`);
    out.set(m[1]!, m[2]!.replace(/\/+$/, ''));
  }
  return out;
}

/** The peers to ask (region file, then --peer-url), their registered keys, and this site's service credentials. */
function peerAccess(o: { db: Db; kms: Kms; siteId: string; region: Region; overrides: Map<string, string> }) {
  const peers = new Map(
    o.region.sites.filter((s) => s.id !== o.siteId && s.kind !== 'edge').map((s) => [s.id, s.url.replace(/\/+$/, '')]),
  );
  for (const [id, url] of o.overrides) {
    if (!peers.has(id)) throw new UsageError(`--peer-url ${id}: not another site of region ${o.region.id}`);
    peers.set(id, url);
  }
  const key = o.kms.signingKey()!.key;
  const assertions = new AssertionCache();
  return {
    siteId: o.siteId,
    peers,
    peerKey: async (id: string) => {
      const { rows } = await o.db.query<{ public_key: string }>(
        "SELECT public_key FROM iam_service WHERE id = $1 AND kind = 'site'",
        [id],
      );
      return rows[0] ? Sm2PublicKey.fromPem(rows[0].public_key) : undefined;
    },
    authorization: (peer: string) => `MedmeshService ${assertions.for({ serviceId: o.siteId, key, site: peer })}`,
  };
}

async function exportVerb(argv: string[]): Promise<number> {
  const f = parseFlags(exportSpec, argv);
  if (f === 'help') return (console.log(helpText(exportSpec)), 0);
  if (!f.out) throw new UsageError('--out is required (the directory for the archive files)');
  const { db, kms, siteId, region } = await openUnsealedKms(f, f.unseal);
  try {
    const days = region.config.policies.auditOnlineDays;
    const olderThan = new Date(Date.now() - days * 86_400_000);
    const segments = await exportAuditSegments({
      db,
      siteId,
      signer: kms.signingKey()!.key,
      dir: f.out,
      olderThan,
      onProgress: (seg) => console.log(`exported ${seg.entries} entries (${seg.fromSeq}..${seg.toSeq}) to ${seg.file}`),
    });
    console.log(
      `${segments.length} segment(s) exported; entries younger than ${days} days (policies.auditOnlineDays) stay online`,
    );
    if (f.prune) console.log(`pruned ${await pruneExportedAudit(db, { olderThan })} exported entries from the database`);
    return 0;
  } finally {
    await db.close();
  }
}

async function verifyFileVerb(argv: string[]): Promise<number> {
  const f = parseFlags(fileSpec, argv);
  if (f === 'help') return (console.log(helpText(fileSpec)), 0);
  if (f.file.length === 0) throw new UsageError('--file is required');
  if (f['signer-key'].length === 0) throw new UsageError("--signer-key is required (the site's public key, PEM)");
  const signers = await Promise.all(f['signer-key'].map(async (k) => Sm2PublicKey.fromPem(await readFile(k, 'utf8'))));
  let bad = 0;
  for (const file of f.file) {
    const r = await verifySegmentFile(file, { signers });
    if (!r.ok) bad++;
    console.log(
      r.ok
        ? `ok       ${file}: entries ${r.fromSeq}..${r.toSeq} of site ${r.site}`
        : `TAMPERED ${file}: ${r.problems.join('; ')}`,
    );
  }
  return bad ? 1 : 0;
}
