// The test command: the whole suite on embedded PGlite, then the database-backed suites
// again on the PostgreSQL server (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/test).
// Locally an unreachable server is skipped with a warning; under CI (CI=true) it is a failure.
import { spawn } from 'node:child_process';
import pg from 'pg';

const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const ci = process.env.CI === 'true' || process.env.CI === '1';
const explicit = process.argv.slice(2);
/** Suites whose code runs against the Db interface: these run on both engines. */
const DB_SUITES = [
  'src/db/**/*.test.ts',
  'src/records/**/*.test.ts',
  'src/replication/**/*.test.ts',
  'src/http/**/*.test.ts',
  'src/security/kms/**/*.test.ts',
  'src/security/audit/**/*.test.ts',
  'src/security/identity/**/*.test.ts',
  'src/imaging/**/*.test.ts',
  'src/cli/replication-kill.test.ts',
  // The embedded coordination store (its etcd twin, etcd-store.test.ts, runs once, with the PGlite run).
  'src/failover/embedded-store.test.ts',
  // The witness service on the embedded store (its etcd half runs in both runs; it is quick).
  'src/failover/witness.test.ts',
  // The site's lease keeper and the ended epoch's tail, on the site's own database.
  'src/failover/lease-keeper.test.ts',
  'src/failover/failover-tail.test.ts',
];

/**
 * A whole run never takes longer than this: a hung test must fail CI, not stall it. The PGlite
 * run is the long one (its process-level fault tests spawn whole sites): it took over 20 minutes
 * here with a CPU-heavy process beside it.
 */
const RUN_LIMIT_MS = Number(process.env.MEDMESH_TEST_RUN_LIMIT_MS ?? 30 * 60_000);

async function run(backend: 'pglite' | 'postgres'): Promise<number> {
  const files = explicit.length ? explicit : backend === 'pglite' ? ['src/**/*.test.ts'] : DB_SUITES;
  console.log(`\n=== test suite on ${backend}${backend === 'postgres' ? ` (${url.replace(/:[^:@/]*@/, ':***@')})` : ''} ===`);
  // --test-force-exit: a file whose tests are done exits even if a handle stays open.
  // Its own process group, so the watchdog can stop the runner and every test process.
  const child = spawn(
    process.execPath,
    ['--test', '--test-concurrency=2', '--test-timeout=300000', '--test-force-exit', ...files],
    {
      stdio: 'inherit',
      detached: true,
      env: { ...process.env, MEDMESH_TEST_DB: backend, DATABASE_URL: url },
    },
  );
  const watchdog = setTimeout(() => {
    console.error(`\nFAIL: the ${backend} run exceeded ${RUN_LIMIT_MS / 60_000} minutes; stopping it (a test is hung).`);
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      child.kill('SIGKILL');
    }
  }, RUN_LIMIT_MS);
  const status = await new Promise<number>((resolve) => child.on('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0))));
  clearTimeout(watchdog);
  return status;
}

async function postgresReachable(): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3000 });
  try {
    await client.connect();
    await client.query('SELECT 1');
    return undefined;
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  } finally {
    await client.end().catch(() => undefined);
  }
}

const pgliteStatus = await run('pglite');
const unreachable = await postgresReachable();
let postgresStatus = 0;
if (unreachable) {
  const msg = `PostgreSQL at ${url} is unreachable (${unreachable})`;
  if (ci) {
    console.error(`\nFAIL: ${msg}; under CI the PostgreSQL run is required. Start PostgreSQL or set DATABASE_URL.`);
    postgresStatus = 1;
  } else console.warn(`\nSKIPPED the PostgreSQL run: ${msg}. Start PostgreSQL or set DATABASE_URL to run it.`);
} else postgresStatus = await run('postgres');

console.log(
  `\nsuite results: pglite ${pgliteStatus === 0 ? 'passed' : 'FAILED'}, ` +
    `postgres ${unreachable ? (ci ? 'FAILED (unreachable)' : 'skipped') : postgresStatus === 0 ? 'passed' : 'FAILED'}`,
);
process.exit(pgliteStatus || postgresStatus);
