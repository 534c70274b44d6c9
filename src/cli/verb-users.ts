// medmesh users add: creates a user at a site (the first administrator, service desks,
// interface accounts). Run against the site's database, like migrate; roles that need a
// second factor need the master key (--unseal) to seal the TOTP secret.
import { SECOND_FACTOR_ROLES, IdentityService } from '../security/identity/index.ts';
import { DEFAULT_POLICIES } from '../security/access/index.ts';
import { migrate, type Db } from '../db/index.ts';
import type { Kms } from '../security/kms/index.ts';
import { helpText, parseFlags, UsageError, type FlagSpec, type VerbSpec } from './args.ts';
import { openSiteFromFlags, SITE_DB_FLAGS } from './common.ts';
import { openUnsealedKms, UNSEAL_FLAG } from './offline-kms.ts';

const spec = {
  name: 'users add',
  summary: 'create a user at a site',
  usage:
    'MEDMESH_PASSWORD=... medmesh users add --region <file> --site <id> --username <name> --role <role> ' +
    '[--attr key=value ...] [--unseal share:key ...]',
  flags: {
    ...SITE_DB_FLAGS,
    ...UNSEAL_FLAG,
    username: { type: 'string', help: 'login name', placeholder: 'name' },
    role: {
      type: 'string',
      multiple: true,
      help: `role (defaults: ${DEFAULT_POLICIES.map((p) => p.role).join(', ')})`,
      placeholder: 'role',
    },
    attr: {
      type: 'string',
      multiple: true,
      help: 'ABAC attribute: department, title, practitioner, patient, project',
      placeholder: 'key=value',
    },
    'password-env': {
      type: 'string',
      help: 'environment variable holding the password (kept out of the process list)',
      default: 'MEDMESH_PASSWORD',
      placeholder: 'name',
    },
  },
} satisfies VerbSpec<Record<string, FlagSpec>>;

export async function usersVerb(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== 'add') {
    console.log(helpText(spec));
    return sub === '--help' || sub === '-h' ? 0 : 2;
  }
  const f = parseFlags(spec, rest);
  if (f === 'help') return (console.log(helpText(spec)), 0);
  if (!f.username) throw new UsageError('--username is required');
  if (f.role.length === 0) throw new UsageError('--role is required (repeat it for several roles)');
  const attributes: Record<string, string> = {};
  for (const a of f.attr) {
    const m = /^([a-z][a-zA-Z0-9]*)=(.+)$/.exec(a);
    if (!m) throw new UsageError(`--attr ${a}: expected key=value`);
    attributes[m[1]!] = m[2]!;
  }
  const password = process.env[f['password-env']];
  if (!password) throw new UsageError(`set the password in $${f['password-env']} (it is not taken on the command line)`);
  const needsKms = f.role.some((r) => SECOND_FACTOR_ROLES.has(r));
  if (needsKms && f.unseal.length === 0)
    throw new UsageError(
      `role ${f.role.filter((r) => SECOND_FACTOR_ROLES.has(r)).join(', ')} needs a second factor: ` +
        'give --unseal shares so its TOTP secret can be sealed',
    );
  const opened: { db: Db; siteId: string; kms?: Kms } = needsKms ? await openUnsealedKms(f, f.unseal) : await openPlain(f);
  const { db, siteId, kms } = opened;
  try {
    const identity = new IdentityService({
      db,
      siteId,
      issuer: () => kms?.signingKey(),
      secrets: {
        seal: async (b) => {
          if (!kms) throw new UsageError('the master key is needed (--unseal)');
          await kms.ensureKey('identity');
          return kms.encrypt('identity', b);
        },
        open: (b) => (kms ? kms.decrypt(b) : Promise.reject(new UsageError('the master key is needed (--unseal)'))),
      },
    });
    const r = await identity.createUser({ username: f.username, password, roles: f.role, attributes });
    if (!r.ok) throw new UsageError(r.error.message);
    console.log(`user ${f.username} (${r.value.id}) created at site ${siteId} with role(s) ${f.role.join(', ')}`);
    if (r.value.otpauthUri)
      console.log(`second factor: add this to the user's authenticator app, then forget it:\n  ${r.value.otpauthUri}`);
    return 0;
  } finally {
    await db.close();
  }
}

async function openPlain(f: Parameters<typeof openSiteFromFlags>[0]) {
  const { siteId, db } = await openSiteFromFlags(f);
  const m = await migrate(db);
  if (!m.ok) {
    await db.close();
    throw new UsageError(m.error.message);
  }
  return { db, siteId };
}
