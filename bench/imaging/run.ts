// bench/imaging: DICOM ingest with DCMTK's storescu into medmesh (DIMSE C-STORE SCP on
// PostgreSQL, every file SM4-CBC encrypted with its SHA-256 recorded) and into Orthanc
// (Debian's package: its default SQLite index, and its index in PostgreSQL when the
// orthanc-postgresql plugin is installed) in the same run, same files, same tool; then
// WADO-RS retrieval of a whole 100-instance study. Prints one JSON document on stdout.
//   node bench/imaging/run.ts [--quick]      (needs root for Orthanc's network namespace)
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { migrate, openPostgres, quoteIdent } from '../../src/db/index.ts';
import { FsBlobStore, ImagingStore, startDimseServer } from '../../src/imaging/index.ts';
import { dcmtk, sample } from '../../src/imaging/testing.ts';
import { startOrthanc } from '../../src/imaging/testing-orthanc.ts';
import { FileCryptoPool, Sm2PrivateKey } from '../../src/security/crypto/index.ts';
import { Kms } from '../../src/security/kms/index.ts';
import { progress, round } from '../harness.ts';

const quick = process.argv.includes('--quick');
const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const PER_STUDY = 100;
const STUDIES = quick ? 1 : 3;
const RETRIEVALS = quick ? 5 : 30;

/** A 512 x 512, 16-bit CT slice (the common size), pixel data random so nothing compresses it away. */
async function makeSet(dir: string): Promise<string[]> {
  const template = join(dir, 'template.dcm');
  const raw = join(dir, 'pixels.raw');
  await writeFile(template, await sample('CT_small.dcm'));
  await writeFile(raw, randomBytes(512 * 512 * 2));
  const t = await dcmtk('dcmodify', ['-nb', '-m', 'Rows=512', '-m', 'Columns=512', '-mf', `PixelData=${raw}`, template]);
  if (t.code !== 0) throw new Error(t.out);
  const files: string[] = [];
  for (let s = 1; s <= STUDIES; s++) {
    for (let i = 1; i <= PER_STUDY; i++) {
      const f = join(dir, `s${s}-${i}.dcm`);
      await writeFile(f, await import('node:fs/promises').then((fs) => fs.readFile(template)));
      const study = `1.2.826.0.1.3680043.10.1519.5.${s}`;
      const r = await dcmtk('dcmodify', [
        '-nb',
        '-m',
        `StudyInstanceUID=${study}`,
        '-m',
        `SeriesInstanceUID=${study}.1`,
        '-m',
        `SOPInstanceUID=${study}.1.${i}`,
        '-m',
        `InstanceNumber=${i}`,
        f,
      ]);
      if (r.code !== 0) throw new Error(r.out);
      files.push(f);
    }
    progress(`generated study ${s} of ${STUDIES}`);
  }
  return files;
}

function run(child: ChildProcess): Promise<{ code: number; out: string }> {
  let out = '';
  child.stdout?.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr?.on('data', (b: Buffer) => (out += b.toString()));
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code: code ?? 1, out })));
}

interface Timed {
  seconds: number;
  instances_per_s: number;
  mb_per_s: number;
}

/** Sends `files` with one storescu; seconds taken. */
async function sendAll(files: string[], exec: (args: string[]) => ChildProcess): Promise<number> {
  const t0 = performance.now();
  const r = await run(exec(['-nh', ...files]));
  if (r.code !== 0) throw new Error(`storescu failed: ${r.out.slice(-500)}`);
  return (performance.now() - t0) / 1000;
}

function timed(files: number, bytes: number, seconds: number): Timed {
  return { seconds: round(seconds), instances_per_s: round(files / seconds), mb_per_s: round(bytes / 2 ** 20 / seconds) };
}

async function admin(sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

const dir = await mkdtemp(join(os.tmpdir(), 'medmesh-bench-imaging-'));
const schema = `bench_imaging_${randomBytes(4).toString('hex')}`;
const db = await openPostgres({ connectionString: url, schema, maxConnections: 8 });
try {
  progress(`generating ${STUDIES * PER_STUDY} CT instances (512 x 512, 16 bit)`);
  const files = await makeSet(dir);
  const m = await migrate(db);
  if (!m.ok) throw new Error(m.error.message);
  const kms = new Kms({ db, siteId: 'B', policy: 'national' });
  await kms.init({
    custodians: ['one', 'two'].map((name) => ({ name, publicKey: Sm2PrivateKey.generate().publicKey })),
    threshold: 2,
  });
  const fileCrypto = new FileCryptoPool();
  const store = new ImagingStore({ db, kms, blobs: new FsBlobStore({ root: join(dir, 'blobs') }), files: fileCrypto });
  const srv = await startDimseServer({
    store,
    siteId: 'B',
    aeTitle: 'MEDMESH',
    port: 0,
    refuseUnknownAes: false,
    audit: () => Promise.resolve(true),
  });
  const orthanc = await startOrthanc();
  // Orthanc with its index in PostgreSQL (same server as medmesh's), when the plugin is here.
  const pgIndexDb = existsSync('/usr/lib/orthanc/libOrthancPostgreSQLIndex.so.4.0')
    ? `orthanc_bench_${randomBytes(4).toString('hex')}`
    : undefined;
  let orthancPg: Awaited<ReturnType<typeof startOrthanc>> | undefined;
  try {
    if (pgIndexDb) {
      await admin(`CREATE DATABASE ${quoteIdent(pgIndexDb)}`);
      orthancPg = await startOrthanc({ postgresIndex: { database: pgIndexDb } });
    }
    // Each side gets the same storescu on plain loopback (Orthanc's inside its namespace, no
    // relay), one study at a time, the sides taking turns: the machine's speed drifts over
    // minutes, and a side measured only at the end would carry all of that drift.
    const intoOrthanc = (o: Awaited<ReturnType<typeof startOrthanc>>, name: string, label: string) => ({
      name,
      label,
      exec: (args: string[]) =>
        o.exec('storescu', ['-aet', 'BENCH', '-aec', 'ORTHANC', '127.0.0.1', String(o.dicomPortInside), ...args]),
    });
    const sides = [
      intoOrthanc(orthanc, 'orthanc', 'Orthanc'),
      ...(orthancPg ? [intoOrthanc(orthancPg, 'orthanc_postgresql_index', 'Orthanc (PostgreSQL index)')] : []),
      {
        name: 'medmesh',
        label: 'medmesh',
        exec: (args: string[]) =>
          spawn('storescu', ['-aet', 'BENCH', '-aec', 'MEDMESH', '127.0.0.1', String(srv.port), ...args], {
            env: { ...process.env, TCP_NODELAY: '1' },
          }),
      },
    ];
    const seconds = new Map(sides.map((side) => [side.name, 0]));
    const roundRatios: number[] = [];
    for (let s = 0; s < STUDIES; s++) {
      const study = files.slice(s * PER_STUDY, (s + 1) * PER_STUDY);
      const took = new Map<string, number>();
      for (const side of sides) {
        progress(`study ${s + 1} of ${STUDIES}: storescu -> ${side.label}`);
        took.set(side.name, await sendAll(study, side.exec));
      }
      for (const [name, t] of took) seconds.set(name, seconds.get(name)! + t);
      roundRatios.push(round(took.get('orthanc')! / took.get('medmesh')!, 3));
    }
    const sent = (await Promise.all(files.map((f) => stat(f)))).reduce((n, st) => n + st.size, 0);
    const orthancIngest = timed(files.length, sent, seconds.get('orthanc')!);
    const medmeshIngest = timed(files.length, sent, seconds.get('medmesh')!);
    const orthancPgIngest = orthancPg ? timed(files.length, sent, seconds.get('orthanc_postgresql_index')!) : undefined;
    if (orthancPg) {
      const n = ((await (await fetch(`${orthancPg.http}/instances`)).json()) as unknown[]).length;
      if (n !== files.length) throw new Error(`Orthanc (PostgreSQL index) holds ${n} of ${files.length}`);
    }
    const held = (await db.query<{ n: number }>('SELECT count(*)::int AS n FROM imaging_instance')).rows[0]!.n;
    if (held !== files.length) throw new Error(`medmesh holds ${held} of ${files.length}`);
    const orthancHeld = ((await (await fetch(`${orthanc.http}/instances`)).json()) as unknown[]).length;
    if (orthancHeld !== files.length) throw new Error(`Orthanc holds ${orthancHeld} of ${files.length}`);

    progress(`WADO-RS whole study (${PER_STUDY} instances) x ${RETRIEVALS}`);
    const { buildWadoServer } = await import('./wado-server.ts');
    const wado = await buildWadoServer(store);
    const latencies: number[] = [];
    let bytes = 0;
    // The client is curl in its own process, as a viewer would be: the 53 MB it reads are not
    // parsed on the server's event loop.
    for (let i = 0; i < RETRIEVALS; i++) {
      const url = `${wado.url}/dicomweb/studies/1.2.826.0.1.3680043.10.1519.5.${(i % STUDIES) + 1}`;
      const r = await run(
        spawn('curl', [
          '-s',
          '-o',
          '/dev/null',
          '-H',
          'accept: multipart/related; type="application/dicom"',
          '-w',
          '%{http_code} %{size_download} %{time_total}',
          url,
        ]),
      );
      const [status, size, seconds] = r.out.trim().split(' ');
      if (r.code !== 0 || status !== '200') throw new Error(`WADO-RS answered ${status ?? '?'} (curl exit ${r.code})`);
      bytes = Number(size);
      latencies.push(Number(seconds) * 1000);
    }
    await wado.close();
    latencies.sort((a, b) => a - b);
    const pct = (p: number) => round(latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))]!);
    const ratio = round(medmeshIngest.instances_per_s / orthancIngest.instances_per_s, 3);
    const ratioPg = orthancPgIngest ? round(medmeshIngest.instances_per_s / orthancPgIngest.instances_per_s, 3) : null;
    const blobFiles = (await readdir(join(dir, 'blobs'), { recursive: true })).length;
    console.log(
      JSON.stringify(
        {
          benchmark: 'imaging',
          machine: {
            cpus: os.cpus().length,
            cpu: os.cpus()[0]?.model,
            node: process.version,
            memory_gb: round(os.totalmem() / 2 ** 30, 1),
          },
          instances: files.length,
          instance_bytes: (await stat(files[0]!)).size,
          note:
            'storescu, one association per side and study, sequential C-STOREs, the sides taking turns study by study; ' +
            'medmesh on PostgreSQL with SM4-CBC + HMAC-SM3 per file, SHA-256 at ingest; ' +
            'Orthanc 1.10 (Debian) with its default SQLite index ' +
            'and with its index in the same PostgreSQL (orthanc-postgresql), ' +
            'files on disk, no compression, storescu run inside its network namespace; ' +
            'WADO-RS fetched by curl (its own process), files decrypted and checked on worker threads',
          ingest: {
            medmesh: medmeshIngest,
            orthanc: orthancIngest,
            ratio_medmesh_vs_orthanc: ratio,
            ratio_per_study_vs_orthanc: roundRatios,
            orthanc_postgresql_index: orthancPgIngest ?? 'not run: the orthanc-postgresql plugin is not installed',
            ratio_medmesh_vs_orthanc_postgresql: ratioPg,
          },
          wado_rs_whole_study: {
            instances: PER_STUDY,
            bytes,
            requests: RETRIEVALS,
            p50_ms: pct(50),
            p99_ms: pct(99),
            max_ms: round(latencies.at(-1)!),
          },
          blob_entries: blobFiles,
          targets: { 'ingest >= 1.0x Orthanc (encryption on)': ratio >= 1, 'whole-study retrieval p99 <= 2 s': pct(99) <= 2000 },
        },
        null,
        2,
      ),
    );
  } finally {
    await srv.close();
    await fileCrypto.close();
    await orthanc.close();
    await orthancPg?.close();
    if (pgIndexDb) await admin(`DROP DATABASE IF EXISTS ${quoteIdent(pgIndexDb)}`);
  }
} finally {
  await db.close();
  await admin(`DROP SCHEMA IF EXISTS ${quoteIdent(schema)} CASCADE`);
  await rm(dir, { recursive: true, force: true });
}
