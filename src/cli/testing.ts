// Test helpers for the medmesh command: run a verb to completion, or start a long-running
// one and wait for its ready line; every started process is killed when a test file ends.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const BIN = fileURLToPath(new URL('../../bin/medmesh.js', import.meta.url));
export const EXAMPLE = fileURLToPath(new URL('../../region.example.yaml', import.meta.url));
// The CLI uses embedded PGlite unless a test passes --database-url itself.
const { DATABASE_URL: _ignored, ...env } = process.env;
export const ENV: NodeJS.ProcessEnv = env;

/** Runs the CLI; a trailing object adds environment variables. */
export const medmesh = (...args: Array<string | Record<string, string>>) => {
  const extra = typeof args.at(-1) === 'object' ? (args.pop() as Record<string, string>) : {};
  return spawnSync(process.execPath, [BIN, ...(args as string[])], {
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...ENV, ...extra },
  });
};

const children = new Set<ReturnType<typeof spawn>>();

/** A failed test must not leave a server behind (it would keep the runner waiting). */
export function killChildren(): void {
  for (const c of children) c.kill('SIGKILL');
}

/** Starts a long-running verb and resolves once `ready` appears on stdout. */
export function startVerb(args: string[], ready: RegExp) {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: ENV });
  children.add(child);
  child.on('exit', () => children.delete(child));
  let out = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const started = new Promise<void>((resolve, reject) => {
    // Generous: on a loaded two-core machine three embedded databases take a while to start.
    const timer = setTimeout(() => reject(new Error(`not ready after 180 s:\n${out}\n${err}`)), 180_000);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (ready.test(out)) {
        clearTimeout(timer);
        resolve();
      }
    });
    void exited.then((code) => (clearTimeout(timer), reject(new Error(`exited with ${code} before ready:\n${out}\n${err}`))));
  });
  return { child, started, exited, output: () => out, errors: () => err };
}

export async function loginAt(base: string, username: string, password: string, totp?: string): Promise<string> {
  const r = await fetch(`${base}/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username, password, ...(totp ? { totp } : {}) }),
  });
  assert.equal(r.status, 200, `login as ${username}`);
  return ((await r.json()) as { accessToken: string }).accessToken;
}
