// medmesh audit verify | export | verify-file: recompute the site's audit log and report
// exactly what is wrong; export old segments to signed archive files (and prune them);
// check archive files on their own.
import { readFile } from 'node:fs/promises';
import { exportAuditSegments, pruneExportedAudit, verifyAuditLog, verifySegmentFile } from '../security/audit/index.ts';
import { Sm2PublicKey } from '../security/crypto/index.ts';
import { helpText, intFlag, parseFlags, UsageError, type FlagSpec, type VerbSpec } from './args.ts';
import { SITE_DB_FLAGS } from './common.ts';
import { openUnsealedKms, UNSEAL_FLAG } from './offline-kms.ts';

const spec = {
  name: 'audit verify',
  summary: "verify the site's audit log: entry MACs, gaps, Merkle roots, checkpoint signatures",
  usage: 'medmesh audit verify --region <file> --site <id> --unseal <share:key> ... [--trusted-size <n> --trusted-root <hex>]',
  flags: {
    ...SITE_DB_FLAGS,
    ...UNSEAL_FLAG,
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
  const { db, kms } = await openUnsealedKms(f, f.unseal);
  try {
    const report = await verifyAuditLog(db, {
      macKey: kms.deriveSecret('audit-entry-mac'),
      signers: [kms.signingKey()!.key.publicKey],
      ...(trusted ? { trusted } : {}),
      onProgress: (n) => process.stderr.write(`  verified ${n} entries\r`),
    });
    process.stderr.write('\n');
    console.log(JSON.stringify(report, null, 2));
    console.error(
      report.ok
        ? `audit log intact: ${report.entries} entries, ${report.checkpoints} signed checkpoints`
        : 'AUDIT LOG TAMPERED: see invalidMac, timeMismatch, columnMismatch, missing, rootMismatch and badSignature above',
    );
    return report.ok ? 0 : 1;
  } finally {
    await db.close();
  }
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
