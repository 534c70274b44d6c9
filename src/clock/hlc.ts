// Hybrid logical clock (Kulkarni, Demirbas et al., 2014), packed into 64 bits:
// 48 bits of physical milliseconds, 16 bits of logical counter. Packed values compare
// as plain integers, so PostgreSQL `bigint` ordering is HLC ordering.

export type Hlc = bigint;

const LOGICAL_BITS = 16n;
const LOGICAL_MAX = (1 << 16) - 1;
const PHYSICAL_MAX = 2 ** 48 - 1;

export function packHlc(physicalMs: number, logical: number): Hlc {
  if (!Number.isInteger(physicalMs) || physicalMs < 0 || physicalMs > PHYSICAL_MAX)
    throw new RangeError(`HLC physical part out of range: ${physicalMs}`);
  if (!Number.isInteger(logical) || logical < 0 || logical > LOGICAL_MAX)
    throw new RangeError(`HLC logical part out of range: ${logical}`);
  return (BigInt(physicalMs) << LOGICAL_BITS) | BigInt(logical);
}

export function unpackHlc(hlc: Hlc): { physicalMs: number; logical: number } {
  return { physicalMs: Number(hlc >> LOGICAL_BITS), logical: Number(hlc & BigInt(LOGICAL_MAX)) };
}

/** Fixed-width hex: lexicographic order equals HLC order. */
export function hlcToHex(hlc: Hlc): string {
  return hlc.toString(16).padStart(16, '0');
}

export function hlcFromHex(hex: string): Hlc | undefined {
  return /^[0-9a-f]{16}$/.test(hex) ? BigInt(`0x${hex}`) : undefined;
}

export function hlcToIso(hlc: Hlc): string {
  const { physicalMs, logical } = unpackHlc(hlc);
  return `${new Date(physicalMs).toISOString()}+${logical}`;
}

export interface ClockSkewError {
  kind: 'clock-skew';
  remoteMs: number;
  localMs: number;
  maxOffsetMs: number;
  message: string;
}

/** Persists the clock's reserved upper bound so a restart never issues a smaller HLC. */
export interface HlcBoundStore {
  load(): Promise<number>;
  /** Must keep the greater of the stored and the given bound. */
  save(upperMs: number): Promise<void>;
}

export interface HybridClockOptions {
  store: HlcBoundStore;
  maxOffsetMs: number;
  /** Wall clock in ms; injectable for tests. */
  wallMs?: () => number;
  /** How far ahead of the current physical time the persisted bound reaches. */
  reserveMs?: number;
}

export class HybridClock {
  #l = 0;
  #c = 0;
  #upper = 0;
  #extending: Promise<void> | undefined;
  readonly #store: HlcBoundStore;
  readonly #wall: () => number;
  readonly #reserve: number;
  readonly maxOffsetMs: number;

  private constructor(opts: HybridClockOptions) {
    this.#store = opts.store;
    this.#wall = opts.wallMs ?? Date.now;
    this.#reserve = opts.reserveMs ?? 10_000;
    this.maxOffsetMs = opts.maxOffsetMs;
  }

  /** Starts a clock strictly after everything a previous run could have issued. */
  static async start(opts: HybridClockOptions): Promise<HybridClock> {
    const clock = new HybridClock(opts);
    const persisted = await opts.store.load();
    clock.#l = Math.max(clock.#wall(), persisted + 1);
    clock.#c = 0;
    clock.#upper = persisted;
    await clock.#extend(clock.#l + clock.#reserve);
    return clock;
  }

  /** The last issued value (for lag metrics and watermarks), without advancing. */
  peek(): Hlc {
    return packHlc(this.#l, this.#c);
  }

  /** Local or send event. */
  async now(): Promise<Hlc> {
    const pt = this.#wall();
    if (pt > this.#l) {
      this.#l = pt;
      this.#c = 0;
    } else this.#bumpLogical();
    return this.#issue();
  }

  /**
   * Receive event: merges a remote (or causal parent's) timestamp. Timestamps further
   * ahead of the local wall clock than maxOffsetMs are rejected and leave the clock as is.
   */
  async receive(remote: Hlc): Promise<{ ok: true; hlc: Hlc } | { ok: false; error: ClockSkewError }> {
    const pt = this.#wall();
    const { physicalMs: lm, logical: cm } = unpackHlc(remote);
    if (lm - pt > this.maxOffsetMs) {
      return {
        ok: false,
        error: {
          kind: 'clock-skew',
          remoteMs: lm,
          localMs: pt,
          maxOffsetMs: this.maxOffsetMs,
          message: `remote clock is ${lm - pt} ms ahead (max ${this.maxOffsetMs} ms)`,
        },
      };
    }
    const l = Math.max(this.#l, lm, pt);
    if (l === this.#l && l === lm) this.#c = Math.max(this.#c, cm);
    else if (l === lm) this.#c = cm;
    else if (l !== this.#l) this.#c = -1;
    this.#l = l;
    this.#bumpLogical();
    return { ok: true, hlc: await this.#issue() };
  }

  #bumpLogical(): void {
    if (this.#c >= LOGICAL_MAX) {
      // Counter exhausted within one millisecond: borrow the next millisecond.
      this.#l += 1;
      this.#c = 0;
    } else this.#c += 1;
  }

  async #issue(): Promise<Hlc> {
    const l = this.#l;
    const hlc = packHlc(l, this.#c);
    // Ahead of need, in the background; should it fail, the first issue that needs the bound
    // extends it itself below and gets the error.
    if (l > this.#upper - this.#reserve / 2 && !this.#extending) void this.#extend(l + this.#reserve).catch(() => undefined);
    // Wait only when the value would pass the persisted bound; otherwise extension runs in the background.
    while (l > this.#upper) await (this.#extending ?? this.#extend(l + this.#reserve));
    return hlc;
  }

  #extend(upper: number): Promise<void> {
    const run = this.#store.save(upper).then(
      () => {
        this.#upper = Math.max(this.#upper, upper);
        this.#extending = undefined;
      },
      (e: unknown) => {
        this.#extending = undefined;
        throw e;
      },
    );
    this.#extending = run;
    return run;
  }
}

/** In-memory bound store for tests and tools that need no persistence. */
export function memoryBoundStore(initial = 0): HlcBoundStore & { value: number } {
  const s = {
    value: initial,
    load: () => Promise.resolve(s.value),
    save: (upper: number) => {
      s.value = Math.max(s.value, upper);
      return Promise.resolve();
    },
  };
  return s;
}
