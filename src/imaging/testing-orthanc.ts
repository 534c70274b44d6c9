// A real Orthanc (Debian's package) for tests: run inside its own network namespace whose
// only interface is loopback (Orthanc cannot bind to 127.0.0.1 alone), reached from this
// host's loopback through Unix-socket relays (relay.ts). Orthanc's DICOM and HTTP ports
// appear at 127.0.0.1 here; Orthanc reaches medmesh's DIMSE port the other way round.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Server } from 'node:net';
import { randomBytes } from 'node:crypto';
import { relay } from './relay.ts';

export interface TestOrthanc {
  aeTitle: string;
  /** Orthanc's DICOM port as seen from this host. */
  dicomPort: number;
  /** Orthanc's REST API as seen from this host. */
  http: string;
  /** Runs a command inside Orthanc's network namespace (where its ports are plain loopback). */
  exec(command: string, args: string[]): ChildProcess;
  /** Orthanc's DICOM port inside its namespace. */
  dicomPortInside: number;
  /** Uploads a Part 10 file through the REST API; returns Orthanc's instance id. */
  upload(file: Buffer): Promise<string>;
  close(): Promise<void>;
}

export interface OrthancOptions {
  aeTitle?: string;
  /** Remote AEs Orthanc knows (for C-MOVE destinations): AE title -> a port on this host. */
  modalities?: Record<string, number>;
  storageCompression?: boolean;
  /**
   * Orthanc's index in PostgreSQL (Debian's orthanc-postgresql plugin) instead of SQLite: an
   * existing, empty database, reached through the server's Unix socket (the namespace has no
   * route to this host's loopback).
   */
  postgresIndex?: { database: string; socketDir?: string };
  /** Serve DICOMweb at <http>/dicom-web (Debian's orthanc-dicomweb plugin). */
  dicomweb?: boolean;
}

/** Debian's orthanc-dicomweb plugin, when installed (its file name carries the version). */
export function orthancDicomwebPlugin(): string | undefined {
  const dir = '/usr/lib/orthanc';
  const name = existsSync(dir) ? readdirSync(dir).find((f) => f.startsWith('libOrthancDicomWeb.so')) : undefined;
  return name ? join(dir, name) : undefined;
}

const PG_INDEX_PLUGIN = '/usr/lib/orthanc/libOrthancPostgreSQLIndex.so.4.0';

const IN_NS = { dicom: 4242, http: 8042 };

function dicomwebPlugin(): string {
  const plugin = orthancDicomwebPlugin();
  if (!plugin) throw new Error('Orthanc with DICOMweb needs the plugin: apt-get install orthanc-dicomweb');
  return plugin;
}

export async function startOrthanc(opts: OrthancOptions = {}): Promise<TestOrthanc> {
  const id = randomBytes(3).toString('hex');
  const ns = `mmorthanc-${id}`;
  const dir = await mkdtemp(join(tmpdir(), 'medmesh-orthanc-'));
  execFileSync('ip', ['netns', 'add', ns]);
  const children: ChildProcess[] = [];
  const servers: Server[] = [];
  const cleanup = async () => {
    for (const c of children) c.kill('SIGKILL');
    for (const s of servers) s.close();
    try {
      execFileSync('ip', ['netns', 'del', ns]);
    } catch {
      // already gone
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    execFileSync('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up']);
    const aeTitle = opts.aeTitle ?? 'ORTHANC';
    // Inside the namespace, each modality is reached on its own loopback port (relayed out).
    const modalityPorts = Object.keys(opts.modalities ?? {}).map((ae, i) => [ae, 11112 + i] as const);
    const config = {
      Name: `medmesh-test-${id}`,
      StorageDirectory: join(dir, 'storage'),
      IndexDirectory: join(dir, 'index'),
      StorageCompression: opts.storageCompression ?? false,
      Plugins: [...(opts.postgresIndex ? [PG_INDEX_PLUGIN] : []), ...(opts.dicomweb ? [dicomwebPlugin()] : [])],
      ...(opts.dicomweb ? { DicomWeb: { Enable: true, Root: '/dicom-web/', EnableWado: false } } : {}),
      ...(opts.postgresIndex
        ? {
            PostgreSQL: {
              EnableIndex: true,
              EnableStorage: false,
              Host: opts.postgresIndex.socketDir ?? '/var/run/postgresql',
              Port: 5432,
              Database: opts.postgresIndex.database,
              Username: 'postgres',
              Password: '',
              Lock: false,
              IndexConnectionsCount: 1,
            },
          }
        : {}),
      HttpServerEnabled: true,
      HttpPort: IN_NS.http,
      RemoteAccessAllowed: false,
      AuthenticationEnabled: false,
      DicomServerEnabled: true,
      DicomAet: aeTitle,
      DicomPort: IN_NS.dicom,
      DicomCheckCalledAet: false,
      UnknownSopClassAccepted: true,
      DicomAlwaysAllowStore: true,
      DicomAlwaysAllowEcho: true,
      DicomAlwaysAllowFind: true,
      DicomAlwaysAllowMove: true,
      DicomAlwaysAllowGet: true,
      DicomModalities: Object.fromEntries(modalityPorts.map(([ae, port]) => [ae, [ae, '127.0.0.1', port]])),
      ConcurrentJobs: 2,
      SaveJobs: false,
      StableAge: 1,
    };
    const configPath = join(dir, 'orthanc.json');
    await writeFile(configPath, JSON.stringify(config));
    const orthanc = spawn('ip', ['netns', 'exec', ns, 'Orthanc', configPath], {
      env: { ...process.env, TCP_NODELAY: '1' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    children.push(orthanc);
    let log = '';
    orthanc.stderr.on('data', (b: Buffer) => {
      log = (log + b.toString()).slice(-4000);
    });
    // Relays inside the namespace: its loopback ports <-> Unix sockets in `dir`.
    const inside = [
      `unix:${join(dir, 'dicom.sock')}=tcp:${IN_NS.dicom}`,
      `unix:${join(dir, 'http.sock')}=tcp:${IN_NS.http}`,
      ...modalityPorts.map(([ae, port]) => `tcp:${port}=unix:${join(dir, `modality-${ae}.sock`)}`),
    ];
    const relayChild = spawn('ip', ['netns', 'exec', ns, process.execPath, join(import.meta.dirname, 'relay.ts'), ...inside], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(relayChild);
    await new Promise<void>((resolve, reject) => {
      relayChild.stdout.once('data', () => resolve());
      relayChild.once('exit', (code) => reject(new Error(`the relay in ${ns} exited (${code})`)));
    });
    // Relays on this host: 127.0.0.1 ports <-> the same sockets.
    const dicomOut = await relay({ tcp: 0 }, { unix: join(dir, 'dicom.sock') });
    const httpOut = await relay({ tcp: 0 }, { unix: join(dir, 'http.sock') });
    servers.push(dicomOut, httpOut);
    for (const [ae, port] of Object.entries(opts.modalities ?? {}))
      servers.push(await relay({ unix: join(dir, `modality-${ae}.sock`) }, { tcp: port }));
    const portOf = (s: Server) => (s.address() as { port: number }).port;
    const http = `http://127.0.0.1:${portOf(httpOut)}`;
    for (const until = Date.now() + 30_000; ;) {
      const up = await fetch(`${http}/system`).then(
        (r) => r.ok,
        () => false,
      );
      if (up) break;
      if (orthanc.exitCode !== null || Date.now() > until) throw new Error(`Orthanc did not start: ${log}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    return {
      aeTitle,
      dicomPort: portOf(dicomOut),
      dicomPortInside: IN_NS.dicom,
      exec: (command, args) =>
        spawn('ip', ['netns', 'exec', ns, command, ...args], {
          env: { ...process.env, TCP_NODELAY: '1' },
          stdio: ['ignore', 'pipe', 'pipe'],
        }),
      http,
      async upload(file: Buffer) {
        const r = await fetch(`${http}/instances`, { method: 'POST', body: file });
        if (!r.ok) throw new Error(`Orthanc refused the upload: ${r.status} ${await r.text()}`);
        return ((await r.json()) as { ID: string }).ID;
      },
      close: cleanup,
    };
  } catch (e) {
    await cleanup();
    throw e;
  }
}
