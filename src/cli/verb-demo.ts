import { createLogger } from '../common/index.ts';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Db } from '../db/index.ts';
import { openPglite } from '../db/index.ts';
import { openSite, type Site } from '../site/index.ts';
import type { RecordStore } from '../records/index.ts';
import { base32Decode } from '../security/identity/index.ts';
import { helpText, intFlag, parseFlags, type FlagSpec, type VerbSpec } from './args.ts';
import { EXAMPLE_REGION, loadRegionOrThrow, portOf } from './common.ts';
import { installDemoEmpiKey, unsealDemoSite } from './demo-keys.ts';
import { linkDemoSites } from './demo-links.ts';
import { seedRegion } from './seeding.ts';
import { waitForShutdown } from './shutdown.ts';

const spec = {
  name: 'demo',
  summary: 'run a whole region on this machine (embedded PGlite), seeded with synthetic patients',
  usage: 'medmesh demo [--reset] [--patients <n>] [--data <dir>] [--region <file>] [--port-offset <n>]',
  flags: {
    region: { type: 'string', help: 'region file', default: 'region.example.yaml (shipped)', placeholder: 'file' },
    data: {
      type: 'string',
      help: 'data root; each site keeps its database in <dir>/<site>',
      default: 'data/demo',
      placeholder: 'dir',
    },
    reset: { type: 'boolean', help: 'delete the demo data first and seed afresh', default: false },
    patients: { type: 'string', help: 'synthetic patients to seed into an empty region', default: '30', placeholder: 'n' },
    'port-offset': { type: 'string', help: "added to every site's configured port", default: '0', placeholder: 'n' },
  },
  examples: ['npm run demo', 'medmesh demo --reset --patients 100'],
} satisfies VerbSpec<Record<string, FlagSpec>>;

export async function demoVerb(argv: string[]): Promise<number> {
  const flags = parseFlags(spec, argv);
  if (flags === 'help') return (console.log(helpText(spec)), 0);
  const regionFile = flags.region.endsWith('(shipped)') ? EXAMPLE_REGION : flags.region;
  const patients = intFlag('patients', flags.patients, 0, 100_000);
  const offset = intFlag('port-offset', flags['port-offset'], 0, 50_000);
  const region = await loadRegionOrThrow(regionFile);
  if (flags.reset) await rm(flags.data, { recursive: true, force: true });

  console.log(`medmesh demo: region ${region.id} (${region.sites.length} sites), data in ${flags.data}/`);
  const running: Array<{ site: Site; db: Db; url: string }> = [];
  const stopAll = async () => {
    // Links first, everywhere: a site still pulling from one that has closed would report it.
    await Promise.all(running.map((r) => r.site.stopReplication()));
    for (const r of [...running].reverse()) {
      await r.site.close();
      await r.db.close();
    }
  };
  try {
    for (const [i, s] of region.sites.entries()) {
      const db = await openPglite({ dataDir: join(flags.data, s.id) });
      // Images are core data: the private sites take them, by DICOMweb and DIMSE (any calling AE in the demo).
      const dicomPort = 11112 + i + offset;
      const imaging =
        s.kind === 'private'
          ? {
              blobRoot: join(flags.data, `${s.id}-blobs`),
              dicom: { aeTitle: `MEDMESH_${s.id}`, host: '127.0.0.1', port: dicomPort, refuseUnknownAes: false },
            }
          : undefined;
      // The demo prints its own lines; the sites log errors only (LOG_LEVEL=info shows requests too).
      const logging = createLogger({ level: process.env.LOG_LEVEL ?? 'error', base: { site: s.id } });
      const opened = await openSite({ region, siteId: s.id, db, logging, ...(imaging ? { imaging } : {}) });
      if (!opened.ok) {
        await db.close();
        throw new Error(opened.error.message);
      }
      await unsealDemoSite(opened.site.kms, { dataRoot: flags.data, siteId: s.id });
      await installDemoEmpiKey(opened.site.kms, { dataRoot: flags.data });
      await opened.site.refreshEmpiKey();
      const port = portOf(s.url) + offset;
      await opened.site.app.listen({ port, host: '127.0.0.1' });
      const url = `http://127.0.0.1:${port}`;
      running.push({ site: opened.site, db, url });
      console.log(`  site ${s.id.padEnd(3)} ${s.kind.padEnd(8)} ${url}/fhir/R4   ${s.name ?? ''}`);
      if (imaging)
        console.log(`           images  ${url}/dicomweb   DICOM AE ${imaging.dicom.aeTitle} at 127.0.0.1:${dicomPort}`);
    }
    await linkDemoSites(running, { onError: (site, peer, m) => console.error(`  replication ${peer} -> ${site}: ${m}`) });
    const links = running.reduce((n, r) => n + r.site.peers.size, 0);
    console.log(
      `  replication: every site pulls every other (${links} links, checked for consistency every 5 minutes); ` +
        "core data only between a shard's residency sites",
    );
    console.log(
      "  audit: every site checks and cosigns the others' signed audit checkpoints every 10 s; " +
        'a cut or rewritten log alarms at its peers (/metrics, /audit/witness) and fails its own /audit/verify',
    );
    const stores = new Map<string, RecordStore>(running.map((r) => [r.site.siteId, r.site.store]));
    const existing = await Promise.all(
      running.map((r) =>
        r.db.query<{ n: number }>("SELECT count(*)::int AS n FROM resource_current WHERE resource_type = 'Patient'"),
      ),
    );
    if (existing.every((e) => (e.rows[0]?.n ?? 0) === 0) && patients > 0) {
      let last = 0;
      const report = await seedRegion({
        region,
        stores,
        patients,
        onProgress: (done, total) => {
          if (done === total || done - last >= Math.max(1, Math.floor(total / 5))) {
            process.stdout.write(`  seeding ${done}/${total}\r`);
            last = done;
          }
        },
      });
      console.log(
        `\n  seeded ${report.patients} patients, ${report.resources} resources (${Object.entries(report.bySite)
          .map(([k, v]) => `${k}: ${v}`)
          .join(', ')})`,
      );
    } else console.log('  existing data kept (use --reset to start over)');
    for (const r of running) await ensureDemoUsers(r.site, flags.data);
    console.log(`  demo users at every site: ${DEMO_ROLES.map((r) => `demo.${r}`).join(', ')} (password ${DEMO_PASSWORD})`);
    console.log(
      '  demo.administrator also needs a TOTP code ("totp" in the login body): ' +
        `each site's secret is in ${join(flags.data, 'totp')}/<site>.administrator.json`,
    );
    console.log('    (its otpauthUri for an authenticator app, or: oathtool --totp -b <base32>)');
    console.log('  (demo only: custodian keys and shares are kept in the data folder so sites unseal themselves)');
    printExamples(running[0]?.url ?? 'http://127.0.0.1:7101', region.config.identifierSystems.residentId);
    console.log('Ready. Press Ctrl-C to stop.');
  } catch (e) {
    await stopAll();
    throw e;
  }
  await waitForShutdown(stopAll);
  console.log('stopped cleanly');
  return 0;
}

const DEMO_PASSWORD = 'medmesh-demo-2026';
const DEMO_ROLES = [
  'doctor',
  'nurse',
  'pharmacist',
  'lab',
  'registrar',
  'administrator',
  'auditor',
  'researcher',
  'regulator',
  'patient',
  'integration',
];

/** One user per default role; existing ones are left as they are. */
async function ensureDemoUsers(site: Site, dataRoot: string): Promise<void> {
  // demo.patient is linked to the first patient homed at this site; clinicians work in cardiology.
  const { rows } = await site.ctx.db.query<{ id: string }>(
    "SELECT id FROM resource_current WHERE resource_type = 'Patient' AND NOT deleted ORDER BY id LIMIT 1",
  );
  const attributes: Record<string, Record<string, string>> = {
    doctor: { department: 'cardiology', title: 'attending' },
    nurse: { department: 'cardiology', title: 'charge-nurse' },
    researcher: { project: 'demo-study' },
    ...(rows[0] ? { patient: { patient: rows[0].id } } : {}),
  };
  for (const role of DEMO_ROLES) {
    const made = await site.identity.createUser({
      username: `demo.${role}`,
      password: DEMO_PASSWORD,
      roles: [role],
      attributes: attributes[role] ?? {},
    });
    // Demo only: the second factor's secret is kept beside the data so the operator APIs can be tried.
    if (made.ok && made.value.totpSecret) {
      await mkdir(join(dataRoot, 'totp'), { recursive: true });
      const secret = {
        username: `demo.${role}`,
        site: site.siteId,
        base32: made.value.totpSecret,
        hex: base32Decode(made.value.totpSecret).toString('hex'),
        otpauthUri: made.value.otpauthUri,
      };
      await writeFile(join(dataRoot, 'totp', `${site.siteId}.${role}.json`), `${JSON.stringify(secret, null, 2)}\n`, {
        mode: 0o600,
      });
    }
  }
}

function printExamples(base: string, residentIdSystem: string): void {
  const fhir = `${base}/fhir/R4`;
  console.log(
    [
      '',
      `Try it (every data call needs a token; each user sees what their role allows):`,
      `  login() { curl -s -X POST ${base}/auth/login -H 'content-type: application/json' \\`,
      `    -d "{\\"username\\":\\"demo.$1\\",\\"password\\":\\"${DEMO_PASSWORD}\\"}"` +
        ` | sed -E 's/.*"accessToken":"([^"]+)".*/\\1/'; }`,
      `  REG=$(login registrar); DOC=$(login doctor); NURSE=$(login nurse); RES=$(login researcher)`,
      `  curl -s -X POST '${fhir}/Patient' -H "authorization: Bearer $REG" -H 'content-type: application/fhir+json' \\`,
      `    -d '{"resourceType":"Patient","name":[{"family":"陈","given":["小明"]}],"gender":"male","birthDate":"1990-01-01",`,
      `         "identifier":[{"system":"${residentIdSystem}","value":"440106199001011235"}],` +
        `"telecom":[{"system":"phone","value":"13812345678"}]}'`,
      `  curl -s '${fhir}/Patient?name=%E9%99%88%E5%B0%8F%E6%98%8E' -H "authorization: Bearer $REG"` +
        '     # the registrar finds 陈小明',
      `  curl -s '${fhir}/Patient?_summary=count' -H "authorization: Bearer $DOC"` +
        '                 # the doctor counts only patients in their care',
      `  curl -s '${fhir}/Patient?_count=1' -H "authorization: Bearer $NURSE"` +
        '                     # resident ID and phone masked for a nurse',
      `  curl -s '${fhir}/Patient?_count=1' -H "authorization: Bearer $RES"` +
        '                       # research: HMAC-SM3 pseudonyms, no names',
      `  curl -s '${fhir}/metadata' | head -c 300                                                    # public`,
      '',
    ].join('\n'),
  );
}
