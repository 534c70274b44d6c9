// medmesh keys destroy-request | approve | destroy | verify-certificate: key destruction on the
// signed approval of two custodians. An operator writes the request; each approving custodian
// signs it on their own machine with their own key; destroy checks every signature against the
// custodians of the site's master key, erases the material, rewrites the table, records the
// certificate in the audit log and prints it; anyone can check a certificate with public keys.
import { readFile, writeFile } from 'node:fs/promises';
import { AuditLog } from '../security/audit/index.ts';
import { sm3, Sm2PrivateKey, Sm2PublicKey } from '../security/crypto/index.ts';
import {
  approveRequest,
  parseApproval,
  parseRequest,
  requestDigest,
  verifyCertificate,
  type DestructionCertificate,
} from '../security/kms/index.ts';
import { helpText, intFlag, parseFlags, UsageError, type FlagSpec, type VerbSpec } from './args.ts';
import { SITE_DB_FLAGS } from './common.ts';
import { openKms, openUnsealedKms, UNSEAL_FLAG } from './offline-kms.ts';

export const DESTROY_SUBCOMMANDS = {
  'destroy-request': 'write a request to destroy key versions, for custodians to approve',
  approve: 'sign a destruction request with your custodian key (on your own machine)',
  destroy: 'destroy key versions on a request two custodians approved; prints the signed certificate',
  'verify-certificate': 'check a destruction certificate and its approvals with public keys alone',
} as const;

const readText = (flag: string, file: string) =>
  readFile(file, 'utf8').catch(() => {
    throw new UsageError(`--${flag}: cannot read ${file}`);
  });

export async function destroyRequest(argv: string[]): Promise<number> {
  const spec = {
    name: 'keys destroy-request',
    summary: DESTROY_SUBCOMMANDS['destroy-request'],
    usage:
      'medmesh keys destroy-request --region <file> --site <id> --name <key> --version <n> ... --reason <text> ' +
      '[--valid-hours 72] --out <file>',
    flags: {
      ...SITE_DB_FLAGS,
      name: { type: 'string', help: 'key name', placeholder: 'key' },
      version: { type: 'string', multiple: true, help: 'version to destroy', placeholder: 'n' },
      reason: { type: 'string', help: 'why', placeholder: 'text' },
      'valid-hours': { type: 'string', help: 'approvals may be acted on this long', default: '72', placeholder: 'n' },
      out: { type: 'string', help: 'request file to hand to the custodians', placeholder: 'file' },
    },
  } satisfies VerbSpec<Record<string, FlagSpec>>;
  const f = parseFlags(spec, argv);
  if (f === 'help') return (console.log(helpText(spec)), 0);
  if (!f.name || !f.out || !f.reason) throw new UsageError('--name, --reason and --out are required');
  if (f.version.length === 0) throw new UsageError('--version is required (repeat it for several)');
  const versions = f.version.map((v) => intFlag('version', v, 1, 1_000_000));
  const validHours = intFlag('valid-hours', f['valid-hours'], 1, 720);
  const { db, kms } = await openKms(f);
  try {
    const request = await kms.destructionRequest({ keyName: f.name, versions, reason: f.reason, validHours });
    await writeFile(f.out, `${request}\n`, { flag: 'wx' }).catch((e: NodeJS.ErrnoException) => {
      throw new UsageError(e.code === 'EEXIST' ? `${f.out} exists; not overwriting` : `cannot write ${f.out}: ${e.message}`);
    });
    const r = parseRequest(request);
    console.log(
      `request ${r.id} to destroy version ${r.versions.join(', ')} of key ${r.keyName} at site ${r.site}: ` +
        `${f.out} (SM3 ${requestDigest(r)}); valid until ${r.expiresAt}. Two custodians approve it with medmesh keys approve.`,
    );
    return 0;
  } finally {
    await db.close();
  }
}

export async function approve(argv: string[]): Promise<number> {
  const spec = {
    name: 'keys approve',
    summary: DESTROY_SUBCOMMANDS.approve,
    usage: 'medmesh keys approve --request <file> --custodian <name> --key <your-key.pem> --out <approval.json>',
    flags: {
      request: { type: 'string', help: 'the destruction request', placeholder: 'file' },
      custodian: { type: 'string', help: 'your custodian name (as at keys init)', placeholder: 'name' },
      key: { type: 'string', help: 'your custodian private key', placeholder: 'pem' },
      out: { type: 'string', help: 'your signed approval, for the operator', placeholder: 'file' },
    },
  } satisfies VerbSpec<Record<string, FlagSpec>>;
  const f = parseFlags(spec, argv);
  if (f === 'help') return (console.log(helpText(spec)), 0);
  if (!f.request || !f.custodian || !f.key || !f.out)
    throw new UsageError('--request, --custodian, --key and --out are required');
  const r = parseRequest(await readText('request', f.request));
  let key: Sm2PrivateKey;
  try {
    key = Sm2PrivateKey.fromPem(await readText('key', f.key));
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`--key ${f.key}: not an SM2 private key in PEM`);
  }
  if (Date.now() > Date.parse(r.expiresAt)) throw new UsageError(`the request expired at ${r.expiresAt}`);
  const approval = approveRequest(r, { approver: f.custodian, key });
  await writeFile(f.out, `${JSON.stringify(approval, null, 2)}\n`);
  console.log(
    `${f.custodian} approves destroying version ${r.versions.join(', ')} of key ${r.keyName} at site ${r.site} (${r.reason}); ` +
      `request ${r.id}, SM3 ${approval.request}: ${f.out}`,
  );
  return 0;
}

export async function destroy(argv: string[]): Promise<number> {
  const spec = {
    name: 'keys destroy',
    summary: DESTROY_SUBCOMMANDS.destroy,
    usage:
      'medmesh keys destroy --region <file> --site <id> --unseal <share:key> ... ' +
      '--request <file> --approval <file> --approval <file>',
    flags: {
      ...SITE_DB_FLAGS,
      ...UNSEAL_FLAG,
      request: { type: 'string', help: 'the destruction request (keys destroy-request)', placeholder: 'file' },
      approval: {
        type: 'string',
        multiple: true,
        help: "a custodian's signed approval (keys approve); two or more",
        placeholder: 'file',
      },
      'wipe-wait': {
        type: 'string',
        help: 'seconds to wait for transactions older than the destruction before rewriting the table',
        default: '30',
        placeholder: 's',
      },
      approver: {
        type: 'string',
        multiple: true,
        help: 'no longer accepted: approvers sign the request (keys approve)',
        placeholder: 'name',
      },
    },
  } satisfies VerbSpec<Record<string, FlagSpec>>;
  const f = parseFlags(spec, argv);
  if (f === 'help') return (console.log(helpText(spec)), 0);
  if (f.approver.length)
    throw new UsageError(
      '--approver names are not approvals: write a request (keys destroy-request), ' +
        'have two custodians sign it (keys approve), and give their files with --approval',
    );
  if (!f.request || f.approval.length === 0) throw new UsageError('--request and at least two --approval are required');
  const request = await readText('request', f.request);
  const approvals = await Promise.all(f.approval.map(async (a) => parseApproval(await readText('approval', a))));
  const wipeWaitMs = intFlag('wipe-wait', f['wipe-wait'], 0, 3600) * 1000;
  const { db, kms, siteId } = await openUnsealedKms(f, f.unseal);
  try {
    const { certificate, wipe } = await kms.destroyVersions({ request, approvals, wipeWaitMs });
    const doc = JSON.parse(certificate.document) as { id: string; keyName: string; versions: number[]; approvers: string[] };
    // The destruction goes into the site's tamper-evident log too (DESIGN §8): a certificate row
    // deleted later still leaves its SM3 in a MAC'd, signed entry.
    const log = new AuditLog({
      db,
      macKey: kms.deriveSecret('audit-entry-mac'),
      signer: { siteId, key: kms.signingKey()!.key },
    });
    const logged = await log.append({
      time: new Date().toISOString(),
      site: siteId,
      actor: { kind: 'user', id: doc.approvers.join('+'), role: 'custodian' },
      action: 'key-destruction',
      outcome: 'success',
      resource: `Key/${doc.keyName}`,
      detail:
        `certificate ${doc.id} (SM3 ${sm3(Buffer.from(certificate.document)).toString('hex')}): ` +
        `versions ${doc.versions.join(', ')} destroyed on the signed approval of ${doc.approvers.join(', ')}; ${wipe.note}`,
    });
    await log.close();
    console.log(JSON.stringify(certificate, null, 2));
    console.error(`${wipe.rewritten && wipe.complete ? '' : 'WARNING: '}${wipe.note}`);
    if (!logged.ok)
      console.error(`WARNING: the destruction could not be written to the audit log: ${logged.error.issues.join('; ')}`);
    return 0;
  } finally {
    await db.close();
  }
}

export async function verifyCertificateVerb(argv: string[]): Promise<number> {
  const spec = {
    name: 'keys verify-certificate',
    summary: DESTROY_SUBCOMMANDS['verify-certificate'],
    usage:
      'medmesh keys verify-certificate --certificate <file> [--site-key <site.service.pub.pem>] ' +
      '[--approver-key <name=pub.pem> ...]',
    flags: {
      certificate: { type: 'string', help: 'the certificate keys destroy printed', placeholder: 'file' },
      'site-key': {
        type: 'string',
        help: "the site's public key (otherwise the one the certificate carries)",
        placeholder: 'pem',
      },
      'approver-key': {
        type: 'string',
        multiple: true,
        help: "a custodian's public key: that approval counts only if made with it",
        placeholder: 'name=pub.pem',
      },
    },
  } satisfies VerbSpec<Record<string, FlagSpec>>;
  const f = parseFlags(spec, argv);
  if (f === 'help') return (console.log(helpText(spec)), 0);
  if (!f.certificate) throw new UsageError('--certificate is required');
  let cert: DestructionCertificate;
  try {
    cert = JSON.parse(await readText('certificate', f.certificate)) as DestructionCertificate;
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`--certificate ${f.certificate}: not JSON`);
  }
  const pub = async (flag: string, file: string) => {
    try {
      return Sm2PublicKey.fromPem(await readText(flag, file));
    } catch (e) {
      if (e instanceof UsageError) throw e;
      throw new UsageError(`--${flag} ${file}: not an SM2 public key in PEM`);
    }
  };
  const approverKeys = new Map<string, Sm2PublicKey>();
  for (const a of f['approver-key']) {
    const [name, file] = a.split('=', 2);
    if (!name || !file) throw new UsageError(`--approver-key ${a}: expected name=pub.pem`);
    approverKeys.set(name, await pub('approver-key', file));
  }
  const check = verifyCertificate(cert, {
    ...(f['site-key'] ? { siteKey: await pub('site-key', f['site-key']) } : {}),
    ...(approverKeys.size ? { approverKeys } : {}),
  });
  console.log(JSON.stringify({ valid: check.valid, approvals: check.approvals, problems: check.problems }, null, 2));
  console.error(
    check.valid
      ? `valid: ${check.document?.keyName} version ${check.document?.versions.join(', ')} ` +
          `destroyed at site ${check.document?.site}, approved by ${check.approvals.map((a) => a.approver).join(', ')}` +
          `${approverKeys.size ? ' (with the keys given)' : " (approvers' keys not compared: give --approver-key)"}` +
          `${f['site-key'] ? '' : "; signed with the key the certificate carries: give --site-key to check it is the site's"}`
      : `NOT VALID: ${check.problems.join('; ')}`,
  );
  return check.valid ? 0 : 1;
}
