// medmesh audit verify: recomputes the site's audit log and reports exactly what is wrong.
import { verifyAuditLog } from '../security/audit/index.ts';
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

export async function auditVerb(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== 'verify') {
    console.log(helpText(spec));
    return sub === '--help' || sub === '-h' ? 0 : 2;
  }
  const f = parseFlags(spec, rest);
  if (f === 'help') return (console.log(helpText(spec)), 0);
  if ((f['trusted-size'] === undefined) !== (f['trusted-root'] === undefined)) throw new UsageError('--trusted-size and --trusted-root go together');
  if (f['trusted-root'] !== undefined && !/^[0-9a-f]{64}$/.test(f['trusted-root'])) throw new UsageError('--trusted-root must be 64 hex digits (an SM3 root)');
  const trusted = f['trusted-size'] !== undefined ? { treeSize: intFlag('trusted-size', f['trusted-size'], 1, Number.MAX_SAFE_INTEGER), root: Buffer.from(f['trusted-root']!, 'hex') } : undefined;
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
    console.error(report.ok ? `audit log intact: ${report.entries} entries, ${report.checkpoints} signed checkpoints` : 'AUDIT LOG TAMPERED: see invalidMac, missing, rootMismatch and badSignature above');
    return report.ok ? 0 : 1;
  } finally {
    await db.close();
  }
}
