// medmesh command line: one binary, several roles (DESIGN.md §3).
import { DataDirInUseError } from '../db/index.ts';
import { CryptoError } from '../security/crypto/index.ts';
import { KmsError } from '../security/kms/index.ts';
import { UsageError } from './args.ts';
import { auditVerb } from './verb-audit.ts';
import { demoVerb } from './verb-demo.ts';
import { keysVerb } from './verb-keys.ts';
import { migrateVerb } from './verb-migrate.ts';
import { regionVerb } from './verb-region.ts';
import { seedVerb } from './verb-seed.ts';
import { siteVerb } from './verb-site.ts';
import { usersVerb } from './verb-users.ts';
import { verifyVerb } from './verb-verify.ts';
import { peersVerb } from './verb-peers.ts';
import { witnessVerb } from './verb-witness.ts';

const VERBS: Record<string, { run: (argv: string[]) => Promise<number>; summary: string }> = {
  demo: { run: demoVerb, summary: 'run a whole demo region on this machine (embedded defaults)' },
  site: { run: siteVerb, summary: 'run one site API node' },
  witness: { run: witnessVerb, summary: 'run the witness (write leases, epochs, signed votes); witness trust|keys init' },
  migrate: { run: migrateVerb, summary: "apply a site's database migrations" },
  seed: { run: seedVerb, summary: 'write synthetic patients at a site' },
  region: { run: regionVerb, summary: 'check a region file (medmesh region check --region FILE)' },
  audit: { run: auditVerb, summary: 'verify the audit log (medmesh audit verify --region FILE --site ID --unseal ...)' },
  users: { run: usersVerb, summary: 'create users (medmesh users add --region FILE --site ID --username NAME --role ROLE)' },
  peers: { run: peersVerb, summary: "trust other sites' service keys for replication (medmesh peers trust|list)" },
  verify: { run: verifyVerb, summary: "check a site's replicas against its peers, --repair to fix (medmesh verify --url URL)" },
  keys: { run: keysVerb, summary: 'key management: init, unseal, status, create, rotate, rewrap, destroy, shares' },
};

export function usage(): string {
  return [
    'medmesh — regional medical data platform',
    '',
    'Usage: medmesh <command> [options]',
    '',
    'Commands:',
    ...Object.entries(VERBS).map(([k, v]) => `  ${k.padEnd(10)} ${v.summary}`),
    '',
    "Run 'medmesh <command> --help' for a command's options.",
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [verb, ...rest] = argv;
  if (verb === undefined || verb === '--help' || verb === '-h' || verb === 'help') {
    console.log(usage());
    return verb === undefined ? 2 : 0;
  }
  const v = VERBS[verb];
  if (!v) {
    console.error(`medmesh: unknown command '${verb}'\n\n${usage()}`);
    return 2;
  }
  try {
    return await v.run(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`medmesh ${verb}: ${e.message}`);
      return 2;
    }
    // Domain errors carry a message written for the operator; no stack trace needed.
    if (e instanceof KmsError || e instanceof CryptoError || e instanceof DataDirInUseError) {
      console.error(`medmesh ${verb}: ${e.message}`);
      return 1;
    }
    console.error(`medmesh ${verb} failed:`, e instanceof Error ? (e.stack ?? e.message) : e);
    return 1;
  }
}
