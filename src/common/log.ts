// The logger every context carries (pino, JSON lines). A background failure is never
// swallowed: it is logged at warn or error under the component it happened in (a child
// logger: `log.child({ component: 'audit-witness' })`), and every such line is counted per
// component and level, so /metrics shows it (`medmesh_log_problems_total`) without anyone
// reading logs.
import { pino, type Logger, type LoggerOptions } from 'pino';

export type { Logger };

/** Counts of warn and error lines per component and level. */
export class LogCounts {
  readonly #counts = new Map<string, number>();

  add(component: string, level: 'warn' | 'error' | 'fatal'): void {
    const k = `${component}\u0000${level}`;
    this.#counts.set(k, (this.#counts.get(k) ?? 0) + 1);
  }

  /** { component, level, count }, sorted. */
  entries(): Array<{ component: string; level: string; count: number }> {
    return [...this.#counts]
      .map(([k, count]) => {
        const [component, level] = k.split('\u0000') as [string, string];
        return { component, level, count };
      })
      .sort((a, b) => (a.component === b.component ? (a.level < b.level ? -1 : 1) : a.component < b.component ? -1 : 1));
  }

  prometheus(labels: Record<string, string> = {}): string {
    const base = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
    const lines = [
      '# HELP medmesh_log_problems_total ' +
        'Warnings and errors logged, per component and level (a background failure is always one).',
      '# TYPE medmesh_log_problems_total counter',
    ];
    for (const e of this.entries())
      lines.push(
        `medmesh_log_problems_total{${[...base, `component="${e.component}"`, `level="${e.level}"`].join(',')}} ${e.count}`,
      );
    return `${lines.join('\n')}\n`;
  }
}

const LEVELS: Record<number, 'warn' | 'error' | 'fatal'> = { 40: 'warn', 50: 'error', 60: 'fatal' };

/**
 * A logger whose warn and error lines are counted in `counts`. `destination`: where lines go
 * (default stdout); `level` defaults to LOG_LEVEL or info.
 */
/** A logger and the counts of its problems (what /metrics shows). */
export interface Logging {
  log: Logger;
  counts: LogCounts;
}

export function createLogger(
  opts: { level?: string; base?: Record<string, unknown>; destination?: pino.DestinationStream; counts?: LogCounts } = {},
): Logging {
  const counts = opts.counts ?? new LogCounts();
  const level = opts.level ?? process.env.LOG_LEVEL ?? 'info';
  // Warnings and errors are counted whatever is written: the logger runs at warn at least, and
  // the stream writes only what `level` asks for.
  const written = level === 'silent' ? Infinity : (pino.levels.values[level] ?? 30);
  const options: LoggerOptions = {
    level: written > 40 ? 'warn' : level,
    base: { pid: process.pid, ...opts.base },
    hooks: {
      logMethod(args, method, lvl) {
        const name = LEVELS[lvl];
        if (name) {
          const component: unknown = this.bindings().component;
          counts.add(typeof component === 'string' ? component : 'site', name);
        }
        method.apply(this, args);
      },
    },
  };
  const streams =
    written === Infinity
      ? []
      : [{ level: pino.levels.labels[written] as pino.Level, stream: opts.destination ?? pino.destination(1) }];
  return { log: pino(options, pino.multistream(streams)), counts };
}

/** Logging that writes nothing (tests, and tools that print for themselves); problems are still counted. */
export function silentLogging(): Logging {
  return createLogger({ level: 'silent' });
}

/** A logger that writes nothing (tests and tools that print for themselves); problems are still counted. */
export function silentLogger(counts = new LogCounts()): Logger {
  return createLogger({ level: 'silent', counts }).log;
}

/** The message of anything thrown. */
export function reasonOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
