// Small benchmark harness: runs an operation at a fixed concurrency for a bounded count
// and time, and reports throughput and latency percentiles (and, where asked, CPU per operation).
import { readdirSync, readFileSync } from 'node:fs';

export interface Measured {
  ops: number;
  seconds: number;
  ops_per_s: number;
  p50_ms: number;
  p99_ms: number;
  max_ms: number;
}

export async function measure(opts: {
  count: number;
  concurrency: number;
  maxSeconds: number;
  op: (i: number) => Promise<void>;
}): Promise<Measured> {
  const latencies: number[] = [];
  let next = 0;
  const started = performance.now();
  const deadline = started + opts.maxSeconds * 1000;
  const worker = async () => {
    while (next < opts.count && performance.now() < deadline) {
      const i = next++;
      const t0 = performance.now();
      await opts.op(i);
      latencies.push(performance.now() - t0);
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency }, worker));
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  const pct = (p: number) => round(latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))] ?? 0);
  return {
    ops: latencies.length,
    seconds: round(seconds),
    ops_per_s: round(latencies.length / seconds),
    p50_ms: pct(50),
    p99_ms: pct(99),
    max_ms: round(latencies.at(-1) ?? 0),
  };
}

export function round(x: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

export function progress(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`);
}

/**
 * CPU spent by this process and by the local PostgreSQL server's processes, in seconds: where
 * a phase's time goes, beside its throughput. `postgres` is undefined when no PostgreSQL runs
 * on this machine (or /proc cannot be read).
 */
export function cpuSeconds(): { node: number; postgres: number | undefined } {
  const u = process.cpuUsage();
  let postgres: number | undefined;
  try {
    const tick = 100; // USER_HZ on Linux
    for (const pid of readdirSync('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      let stat: string;
      try {
        stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      } catch {
        continue; // gone meanwhile
      }
      // "pid (comm) state ... utime stime": fields after the closing parenthesis, utime 14th, stime 15th overall.
      const close = stat.lastIndexOf(')');
      if (stat.slice(stat.indexOf('(') + 1, close) !== 'postgres') continue;
      const f = stat.slice(close + 2).split(' ');
      postgres = (postgres ?? 0) + (Number(f[11]) + Number(f[12])) / tick;
    }
  } catch {
    postgres = undefined;
  }
  return { node: (u.user + u.system) / 1e6, postgres };
}

/** CPU microseconds per operation between two readings. */
export function cpuPerOp(
  before: ReturnType<typeof cpuSeconds>,
  after: ReturnType<typeof cpuSeconds>,
  ops: number,
): { node_us: number; postgres_us?: number } {
  const per = (s: number) => round((s / Math.max(1, ops)) * 1e6, 0);
  return {
    node_us: per(after.node - before.node),
    ...(before.postgres !== undefined && after.postgres !== undefined
      ? { postgres_us: per(after.postgres - before.postgres) }
      : {}),
  };
}

/**
 * Busy CPU seconds of the whole machine (every process and the kernel; /proc/stat less idle
 * and iowait): what a phase costs where the client, the server and PostgreSQL share the cores.
 */
export function machineBusy(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  return (total - f[3]! - f[4]!) / 100; // USER_HZ
}
