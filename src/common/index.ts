// The bottom of the ladder: what every domain shares and nothing else — the Result type,
// the logger a context carries (warn and error lines counted per component for /metrics)
// the message of anything thrown, and a seeded generator for synthetic data and tests. Depends on nothing in src.
export { ok, err } from './result.ts';
export type { Result } from './result.ts';
export { createLogger, silentLogger, silentLogging, reasonOf, LogCounts } from './log.ts';
export type { Logger, Logging } from './log.ts';
export { seededRandom } from './random.ts';
