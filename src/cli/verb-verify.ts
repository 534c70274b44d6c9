// medmesh verify: asks a running site to check its replicas against its peers (bucketed SM3
// digests at a common HLC watermark) and, with --repair, to fix what it should take from
// them. Prints each divergent resource and the accuracy; exits 1 while divergence remains.
import { helpText, parseFlags, UsageError, type FlagSpec, type VerbSpec } from './args.ts';

const spec = {
  name: 'verify',
  summary: 'check (and repair) the replicas of a site against its peers',
  usage:
    'MEDMESH_TOKEN=<operator token> medmesh verify --url <site url> [--peer <id> ...] [--repair] [--grace <seconds>] [--json]',
  flags: {
    url: { type: 'string', help: "the site's API base URL", placeholder: 'url' },
    peer: { type: 'string', multiple: true, help: 'peer site to compare with (default: every peer)', placeholder: 'id' },
    repair: { type: 'boolean', help: "take the peer's authoritative copies of what differs, through the apply path" },
    grace: { type: 'string', help: 'ignore changes younger than this (still on the wire)', default: '5', placeholder: 'seconds' },
    json: { type: 'boolean', help: 'print the reports as JSON' },
  },
  examples: ['MEDMESH_TOKEN=$ADMIN_TOKEN medmesh verify --url http://127.0.0.1:8082 --peer B --repair'],
} satisfies VerbSpec<Record<string, FlagSpec>>;

interface Report {
  site: string;
  peer: string;
  watermark: string;
  resources: number;
  buckets: number;
  mismatchedBuckets: number;
  accuracy: number;
  divergent: Array<{ resource: string; versions: Array<{ versionId: string; kind: string; origin: string }> }>;
  derivedState: Array<{
    resource: string;
    kind: string;
    here?: { current: string; conflicts: string[] };
    there?: { current: string; conflicts: string[] };
  }>;
  repair?: { fetched: number; replaced: number; refused: number; leftForPeer: number; recomputed: number };
  divergentBeforeRepair?: number;
}

export async function verifyVerb(argv: string[]): Promise<number> {
  const flags = parseFlags(spec, argv);
  if (flags === 'help') return (console.log(helpText(spec)), 0);
  if (!flags.url || !/^https?:\/\/\S+$/.test(flags.url))
    throw new UsageError('--url: the base URL of the site to check, e.g. http://127.0.0.1:8082');
  const grace = Number(flags.grace);
  if (!Number.isFinite(grace) || grace < 0 || grace > 3600)
    throw new UsageError(`--grace must be 0-3600 seconds (got ${flags.grace})`);
  const token = process.env.MEDMESH_TOKEN;
  if (!token) throw new UsageError('MEDMESH_TOKEN: set it to an administrator or operator access token (POST /auth/login)');
  const res = await fetch(`${flags.url.replace(/\/+$/, '')}/replication/verify`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ peers: flags.peer, repair: flags.repair, graceSeconds: grace }),
  }).catch((e: unknown) => {
    throw new UsageError(`--url: cannot reach ${flags.url} (${e instanceof Error ? e.message : String(e)})`);
  });
  if (res.status !== 200) {
    console.error(`medmesh verify: the site answered ${res.status}: ${(await res.text()).slice(0, 500)}`);
    return 1;
  }
  const reports = (await res.json()) as Report[];
  if (flags.json) console.log(JSON.stringify(reports, null, 2));
  else for (const r of reports) console.log(describe(r));
  return reports.every((r) => r.divergent.length === 0 && r.derivedState.length === 0) ? 0 : 1;
}

function describe(r: Report): string {
  const lines = [
    `${r.site} vs ${r.peer} at HLC ${r.watermark}: ${r.resources} resources in ${r.buckets} buckets, ` +
      `${r.mismatchedBuckets} differing; accuracy ${(r.accuracy * 100).toFixed(3)} %`,
  ];
  if (r.repair)
    lines.push(
      `  repaired: ${r.divergentBeforeRepair ?? 0} divergent before; ` +
        `fetched ${r.repair.fetched}, replaced ${r.repair.replaced}, refused ${r.repair.refused}, ` +
        `derived state rebuilt ${r.repair.recomputed}; ${r.repair.leftForPeer} for ${r.peer} to take from here`,
    );
  for (const d of r.divergent)
    lines.push(`  ${d.resource}: ${d.versions.map((v) => `${v.versionId} ${v.kind} (origin ${v.origin})`).join(', ')}`);
  const state = (s: { current: string; conflicts: string[] } | undefined) =>
    s ? `current ${s.current}, ${s.conflicts.length ? `conflicts ${s.conflicts.join(' ')}` : 'no conflicts'}` : '';
  for (const d of r.derivedState)
    lines.push(
      d.kind === 'stale-here'
        ? `  ${d.resource}: derived state: the current row at ${r.site} is not its greatest version`
        : `  ${d.resource}: derived state differs: ${r.site} ${state(d.here)}; ${r.peer} ${state(d.there)}`,
    );
  if (r.divergent.length === 0 && r.derivedState.length === 0) lines.push('  in step');
  return lines.join('\n');
}
