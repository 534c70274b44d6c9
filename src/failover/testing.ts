// Test helpers for the coordination stores: a real etcd on 127.0.0.1 (free ports, a temporary
// data directory), a TCP link that can be cut (packets dropped: a partition, not a clean close),
// a Db whose link can be cut, a child process that campaigns (to be killed with SIGKILL), and a
// wait for a condition.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, createConnection, type Server, type Socket, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Db } from '../db/index.ts';

/** Waits until `check` answers true (asked every `everyMs`), or fails naming `what`. */
export async function eventually(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 15_000, everyMs = 20) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** The etcd server binary: ETCD_BIN, /usr/bin/etcd (Debian etcd-server) or etcd on PATH. */
export function etcdBinary(): string | undefined {
  if (process.env.ETCD_BIN && existsSync(process.env.ETCD_BIN)) return process.env.ETCD_BIN;
  if (existsSync('/usr/bin/etcd')) return '/usr/bin/etcd';
  for (const dir of (process.env.PATH ?? '').split(delimiter)) if (dir && existsSync(join(dir, 'etcd'))) return join(dir, 'etcd');
  return undefined;
}

export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve, reject) => s.once('error', reject).listen(0, '127.0.0.1', () => resolve()));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

export interface EtcdServer {
  endpoint: string;
  /** Kills the server with `signal` (default SIGKILL) and waits for it to exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same ports and data. */
  restart(): Promise<void>;
  /** Stops it and removes its data. */
  stop(): Promise<void>;
}

/**
 * A one-member etcd on 127.0.0.1. A short election timeout brings etcd's minimum lease ttl
 * down to 1 s (it is 1.5 x the election timeout, rounded up to whole seconds).
 */
export async function startEtcd(binary: string): Promise<EtcdServer> {
  const dir = await mkdtemp(join(tmpdir(), 'medmesh-etcd-'));
  const [client, peer] = [await freePort(), await freePort()];
  const endpoint = `http://127.0.0.1:${client}`;
  let child: ChildProcess | undefined;
  let log = '';
  const start = async () => {
    const c = spawn(
      binary,
      [
        ...['--name', 'test', '--data-dir', join(dir, 'data')],
        ...['--listen-client-urls', endpoint, '--advertise-client-urls', endpoint],
        ...['--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`],
        ...['--initial-cluster', `test=http://127.0.0.1:${peer}`],
        ...['--heartbeat-interval', '50', '--election-timeout', '500', '--logger', 'zap', '--log-level', 'warn'],
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    c.stderr.on('data', (b: Buffer) => (log = (log + b.toString()).slice(-4000)));
    c.on('error', (e) => (log += `\nspawn failed: ${e.message}`));
    child = c;
    await eventually(
      `etcd at ${endpoint} to be healthy (log: ${log})`,
      async () => {
        if (c.exitCode !== null) throw new Error(`etcd exited with ${c.exitCode}: ${log}`);
        try {
          const r = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(500) });
          return r.ok && ((await r.json()) as { health?: string }).health === 'true';
        } catch {
          return false;
        }
      },
      20_000,
      50,
    );
  };
  const kill = async (signal: NodeJS.Signals = 'SIGKILL') => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    c.kill(signal);
    await exited;
  };
  await start();
  return {
    endpoint,
    kill,
    restart: start,
    async stop() {
      await kill('SIGTERM');
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A TCP link in front of a server. `cut()` drops every byte both ways and holds new connections
 * without answering (a partition: the peers hear nothing, not even a reset); `restore()` drops
 * the connections that lived through the cut and lets new ones through.
 */
export class TcpLink {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #cut = false;
  port = 0;

  private constructor(target: { host: string; port: number }) {
    this.#server = createServer((inbound) => {
      this.#sockets.add(inbound);
      inbound.on('close', () => this.#sockets.delete(inbound));
      inbound.on('error', () => inbound.destroy());
      if (this.#cut) {
        inbound.on('data', () => undefined); // swallowed
        return;
      }
      const outbound = createConnection(target);
      this.#sockets.add(outbound);
      outbound.on('close', () => this.#sockets.delete(outbound));
      const end = () => {
        inbound.destroy();
        outbound.destroy();
      };
      outbound.on('error', end).on('close', end);
      inbound.on('close', end);
      inbound.on('data', (b) => {
        if (!this.#cut) outbound.write(b);
      });
      outbound.on('data', (b) => {
        if (!this.#cut) inbound.write(b);
      });
    });
  }

  static async open(targetUrl: string): Promise<TcpLink> {
    const u = new URL(targetUrl);
    const link = new TcpLink({ host: u.hostname, port: Number(u.port) });
    await new Promise<void>((resolve, reject) => link.#server.once('error', reject).listen(0, '127.0.0.1', () => resolve()));
    link.port = (link.#server.address() as AddressInfo).port;
    return link;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  cut(): void {
    this.#cut = true;
  }

  restore(): void {
    this.#cut = false;
    for (const s of this.#sockets) s.destroy();
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

/** `db` behind a link that can be cut: while cut, every new query and transaction fails. */
export function cuttableDb(db: Db): { db: Db; cut(): void; restore(): void } {
  let cut = false;
  const refuse = () => Promise.reject(new Error('link to the database cut (test fault)'));
  const wrapped: Db = {
    ...db,
    query: (sql, params, opts) => (cut ? refuse() : db.query(sql, params, opts)),
    exec: (sql) => (cut ? refuse() : db.exec(sql)),
    transaction: (fn) => (cut ? refuse() : db.transaction(fn)),
  };
  return {
    db: wrapped,
    cut: () => (cut = true),
    restore: () => (cut = false),
  };
}

export type CampaignerBackend =
  { backend: 'etcd'; endpoints: string[]; namespace: string } | { backend: 'postgres'; url: string; schema: string };

export interface ChildCampaigner {
  fence: bigint;
  /** SIGKILL; resolves when the process is gone. */
  kill(): Promise<void>;
}

/** Starts testing-campaigner.ts in a child process and resolves once it is the leader of `name`. */
export async function spawnCampaigner(
  target: CampaignerBackend,
  o: { name: string; candidate: string; ttlMs: number },
): Promise<ChildCampaigner> {
  const script = new URL('./testing-campaigner.ts', import.meta.url).pathname;
  const child = spawn(process.execPath, [script, JSON.stringify({ ...target, ...o })], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr = (stderr + b.toString()).slice(-4000)));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const lines = createInterface({ input: child.stdout });
  const fence = await new Promise<bigint>((resolve, reject) => {
    lines.on('line', (l) => {
      const m = /^elected (\d+)$/.exec(l);
      if (m) resolve(BigInt(m[1]!));
    });
    void exited.then(() => reject(new Error(`the campaigner exited before it was elected: ${stderr}`)));
  });
  return {
    fence,
    async kill() {
      child.kill('SIGKILL');
      await exited;
    },
  };
}
