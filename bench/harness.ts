// Small benchmark harness: runs an operation at a fixed concurrency for a bounded count
// and time, and reports throughput and latency percentiles.

export interface Measured {
  ops: number;
  seconds: number;
  ops_per_s: number;
  p50_ms: number;
  p99_ms: number;
  max_ms: number;
}

export async function measure(opts: { count: number; concurrency: number; maxSeconds: number; op: (i: number) => Promise<void> }): Promise<Measured> {
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
  return { ops: latencies.length, seconds: round(seconds), ops_per_s: round(latencies.length / seconds), p50_ms: pct(50), p99_ms: pct(99), max_ms: round(latencies.at(-1) ?? 0) };
}

export function round(x: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

export function progress(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`);
}
