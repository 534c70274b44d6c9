// The holder's side of a lease: until when a site may write a shard after a renewal, on its own
// monotonic clock, so that it has stopped before the lease can have expired on the witness's.
//
// The rule: stop at  sentAtMono + D·(1 − drift) − margin,  counted from when the renewal was
// SENT, not when the answer came back. The witness starts its D no earlier than it received the
// request, and it received it after the site sent it: whatever the delays on the way there and
// back, the witness's D starts after the site's. Counting from the receipt of the answer would
// add the answer's delay (and the witness's processing) to the site's lease, and a slow answer
// would carry the site past the witness's expiry. The witness's clock may also run faster than
// the site's: `drift` bounds that (while the site's clock measures x, the witness's measures at
// most x / (1 − drift)), so the site counts D·(1 − drift) of its own time for the witness's D.
// Then, over the real interval from send to stop, the witness's clock measures at most
// D − margin / (1 − drift) < D: the site stops at least margin of its own time early.
//
// The margin covers what the formula cannot see: a write checks the lease and commits a little
// later (transaction length, a GC or scheduling pause between checking and committing), so a
// write that checked its lease just before the stop must still land before the witness's expiry.
// Monotonic clocks only (performance.now, process.hrtime): a wall clock jumping ±60 s moves
// neither side's lease.

export interface LeaseTiming {
  /** The lease duration D the witness grants, ms on its clock. */
  leaseMs: number;
  /** Bound on how much slower the holder's clock may run than the witness's (0.01 = 1 %, far beyond quartz's 10⁻⁴). */
  maxDriftRate: number;
  /** Time the holder stops early for writes in flight and pauses, ms. */
  safetyMarginMs: number;
}

/** Defaults for the drift bound and margin; the lease duration is the region's choice. */
export const DEFAULT_MAX_DRIFT_RATE = 0.01;
export const DEFAULT_SAFETY_MARGIN_MS = 250;

/** The usable part of a lease on the holder's clock: D·(1 − drift) − margin. */
export function usableLeaseMs(t: LeaseTiming): number {
  return t.leaseMs * (1 - t.maxDriftRate) - t.safetyMarginMs;
}

/** Checks a timing is usable, and that renewals every `renewEveryMs` keep the holder writing; a clear message otherwise. */
export function checkLeaseTiming(t: LeaseTiming, renewEveryMs?: number): string | undefined {
  if (!Number.isFinite(t.leaseMs) || t.leaseMs <= 0) return `leaseMs must be a positive number of ms, got ${t.leaseMs}`;
  if (!Number.isFinite(t.maxDriftRate) || t.maxDriftRate < 0 || t.maxDriftRate >= 1)
    return `maxDriftRate must be in [0, 1), got ${t.maxDriftRate}`;
  if (!Number.isFinite(t.safetyMarginMs) || t.safetyMarginMs < 0)
    return `safetyMarginMs must be a non-negative number of ms, got ${t.safetyMarginMs}`;
  const usable = usableLeaseMs(t);
  if (usable <= 0) return `a lease of ${t.leaseMs} ms leaves nothing after drift and a ${t.safetyMarginMs} ms margin`;
  if (renewEveryMs !== undefined && renewEveryMs >= usable)
    return `renewing every ${renewEveryMs} ms cannot keep a lease usable for ${Math.floor(usable)} ms: renew more often`;
  return undefined;
}

/** When the holder must stop writing after a renewal it sent at `sentAtMono` (its own monotonic clock). */
export function holderStopAtMono(sentAtMono: number, t: LeaseTiming): number {
  return sentAtMono + usableLeaseMs(t);
}

/**
 * The holder's stop time after one more granted renewal: the later of the two. Answers may come
 * back out of order; each one alone is safe, so the later stop is too.
 */
export function extendStopAtMono(currentStopAtMono: number | undefined, sentAtMono: number, t: LeaseTiming): number {
  const next = holderStopAtMono(sentAtMono, t);
  return currentStopAtMono === undefined ? next : Math.max(currentStopAtMono, next);
}

/** Whether the holder may still write at `nowMono` (its own clock). */
export function mayWrite(stopAtMono: number | undefined, nowMono: number): boolean {
  return stopAtMono !== undefined && nowMono < stopAtMono;
}
