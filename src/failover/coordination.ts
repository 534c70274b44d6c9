// The coordination store the witness keeps its state in: a small key-value store with one
// global revision (etcd's model), compare-and-set, transactions, watches and leader election
// with fencing tokens. Two implementations keep the same contract (coordination.contract.ts):
// the embedded store on the witness's own database, and etcd for a witness of several processes.
import type { Result } from '../common/index.ts';

/** A key's current value. Revisions are the store's global revision (like etcd's). */
export interface Entry {
  key: string;
  /** JSON text. */
  value: string;
  /** The revision of the key's last change. */
  revision: bigint;
  /** The revision that created the key (since it last did not exist). */
  createRevision: bigint;
}

export interface ListPage {
  /** Ordered by key (bytes of its UTF-8 form). */
  entries: Entry[];
  /** More keys under the prefix follow the last entry (ask again `from` just after it). */
  more: boolean;
  /** The store revision the page was read at: watch from `revision + 1` to miss nothing after it. */
  revision: bigint;
}

export interface PutConflict {
  code: 'conflict';
  /** The key's revision now (absent: the key does not exist). */
  current?: bigint;
}

export interface TxnRequest {
  /** Every key's last-change revision must equal `revision` (0n: the key must not exist). */
  compare?: Array<{ key: string; revision: bigint }>;
  put?: Array<{ key: string; value: string }>;
  delete?: string[];
  /**
   * Succeeds only while this leadership is still held (checked atomically with the writes). It must
   * have been won through this store instance (another's is refused as invalid).
   */
  leadership?: Leadership;
}

export interface TxnResult {
  succeeded: boolean;
  /** The revision the writes got when it succeeded (the store's revision when nothing changed or it failed). */
  revision: bigint;
}

export interface WatchEvent {
  type: 'put' | 'delete';
  key: string;
  /** The new value of a put. */
  value?: string;
  revision: bigint;
}

export interface WatchOptions {
  /** First revision to deliver (inclusive; it may be in the past). Default: changes after the watch starts. */
  fromRevision?: bigint;
  /** The watch cannot go on (its history was compacted away); it has stopped. Transient failures are retried. */
  onError?: (e: CoordinationError) => void;
}

export interface Watch {
  close(): Promise<void>;
}

export interface CampaignOptions {
  /** Who campaigns (shown by `leader()`), e.g. "witness@host:pid". */
  candidate: string;
  /** How long a leader that stops renewing keeps the leadership (etcd: whole seconds, at least etcd's minimum). */
  ttlMs: number;
  /** Stops campaigning: the promise rejects with the signal's reason. */
  signal?: AbortSignal;
}

export interface Leadership {
  readonly name: string;
  readonly candidate: string;
  /** Fencing token: strictly greater than every earlier leader's of this name. */
  readonly fence: bigint;
  /**
   * Aborts when the leadership is gone or may be: the store says so (revoked, taken), renewals
   * failed for `ttlMs` since the last one that succeeded was sent (so before the store can give it
   * to another), resign() or close(). Its reason is an Error saying which.
   */
  readonly lost: AbortSignal;
  /** Gives the leadership up at once (the next campaigner takes over without waiting for the ttl). */
  resign(): Promise<void>;
}

export interface LeaderInfo {
  candidate: string;
  fence: bigint;
}

export interface CoordinationStore {
  readonly kind: 'embedded' | 'etcd';
  get(key: string): Promise<Entry | undefined>;
  /** Keys under `prefix` in key order, from the key `from` (inclusive), at most `limit` (default 1000). */
  list(prefix: string, opts?: { limit?: number; from?: string }): Promise<ListPage>;
  /** `expectRevision`: the key's current revision must be this (0n: the key must not exist). */
  put(key: string, value: string, opts?: { expectRevision?: bigint }): Promise<Result<{ revision: bigint }, PutConflict>>;
  txn(req: TxnRequest): Promise<TxnResult>;
  /** Resolves when this candidate is the leader of `name` (one at a time per name). */
  campaign(name: string, opts: CampaignOptions): Promise<Leadership>;
  /** Changes of keys under `prefix`, in revision order. Resolves once the starting revision is fixed. */
  watch(prefix: string, onChange: (e: WatchEvent) => void, opts?: WatchOptions): Promise<Watch>;
  /** Drops the change history before `revision`: watches from an earlier revision get `compacted`. */
  compact(revision: bigint): Promise<void>;
  /** The current leader of `name` as the store sees it (a dead one until its ttl runs out). */
  leader(name: string): Promise<LeaderInfo | undefined>;
  /** Resigns the leaderships it holds, stops campaigns and watches. Does not close a database it was given. */
  close(): Promise<void>;
}

export type CoordinationErrorCode = 'invalid' | 'closed' | 'unavailable' | 'compacted';

/**
 * invalid: bad input (nothing was changed); closed: the store was closed; unavailable: the
 * backing store did not answer (the cause attached); compacted: a watch asked for history
 * that is gone.
 */
export class CoordinationError extends Error {
  override name = 'CoordinationError';
  readonly code: CoordinationErrorCode;
  constructor(code: CoordinationErrorCode, message: string, opts?: { cause?: unknown }) {
    super(message, opts);
    this.code = code;
  }
}

/** Keys are 1-1024 bytes of UTF-8 text without NUL; an election name also without '/'. */
const MAX_KEY_BYTES = 1024;
/** etcd's default request limit is 1.5 MiB; a value is at most 1 MiB. */
const MAX_VALUE_BYTES = 1 << 20;

export function checkKey(key: string, what = 'key'): void {
  if (typeof key !== 'string' || key.length === 0) throw new CoordinationError('invalid', `${what} must be a non-empty string`);
  if (key.includes('\u0000')) throw new CoordinationError('invalid', `${what} ${JSON.stringify(key)} contains NUL`);
  if (!key.isWellFormed()) throw new CoordinationError('invalid', `${what} ${JSON.stringify(key)} is not well-formed Unicode`);
  if (Buffer.byteLength(key) > MAX_KEY_BYTES)
    throw new CoordinationError('invalid', `${what} is longer than ${MAX_KEY_BYTES} bytes`);
}

export function checkPrefix(prefix: string): void {
  if (prefix === '') return; // the whole store
  checkKey(prefix, 'prefix');
}

export function checkValue(key: string, value: string): void {
  if (typeof value !== 'string') throw new CoordinationError('invalid', `value of ${key} must be JSON text`);
  if (Buffer.byteLength(value) > MAX_VALUE_BYTES)
    throw new CoordinationError('invalid', `value of ${key} is larger than ${MAX_VALUE_BYTES} bytes`);
  try {
    JSON.parse(value);
  } catch {
    throw new CoordinationError('invalid', `value of ${key} is not JSON text`);
  }
  if (value.includes('\u0000')) throw new CoordinationError('invalid', `value of ${key} contains NUL`);
}

export function checkRevision(r: bigint, what: string): void {
  if (typeof r !== 'bigint' || r < 0n) throw new CoordinationError('invalid', `${what} must be a bigint >= 0n`);
}

export function checkTxn(req: TxnRequest): void {
  for (const c of req.compare ?? []) {
    checkKey(c.key);
    checkRevision(c.revision, `compare revision of ${c.key}`);
  }
  const written = new Set<string>();
  for (const p of req.put ?? []) {
    checkKey(p.key);
    checkValue(p.key, p.value);
    if (written.has(p.key)) throw new CoordinationError('invalid', `key ${p.key} is written twice in one transaction`);
    written.add(p.key);
  }
  for (const d of req.delete ?? []) {
    checkKey(d);
    if (written.has(d)) throw new CoordinationError('invalid', `key ${d} is written twice in one transaction`);
    written.add(d);
  }
}

export function checkCampaign(name: string, opts: CampaignOptions): void {
  checkKey(name, 'election name');
  if (name.includes('/')) throw new CoordinationError('invalid', `election name ${name} contains '/'`);
  if (typeof opts.candidate !== 'string' || opts.candidate.length === 0 || opts.candidate.length > 256)
    throw new CoordinationError('invalid', 'candidate must be 1-256 characters');
  if (!Number.isInteger(opts.ttlMs) || opts.ttlMs < 100 || opts.ttlMs > 3_600_000)
    throw new CoordinationError('invalid', 'ttlMs must be an integer between 100 and 3600000');
}

export function checkListOptions(opts: { limit?: number; from?: string }): void {
  if (opts.limit !== undefined && (!Number.isInteger(opts.limit) || opts.limit < 1 || opts.limit > 10_000))
    throw new CoordinationError('invalid', 'limit must be an integer between 1 and 10000');
  if (opts.from !== undefined) checkKey(opts.from, 'from');
}

/** The key just after every key that starts with `prefix` (for byte ranges), or undefined for no end. */
export function prefixEnd(prefix: string | Buffer): Buffer | undefined {
  const b = Buffer.from(prefix);
  for (let i = b.length - 1; i >= 0; i--) {
    if (b[i]! < 0xff) {
      const end = Buffer.from(b.subarray(0, i + 1));
      end[i] = b[i]! + 1;
      return end;
    }
  }
  return undefined;
}
