import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  checkLeaseTiming,
  DEFAULT_MAX_DRIFT_RATE,
  DEFAULT_SAFETY_MARGIN_MS,
  extendStopAtMono,
  holderStopAtMono,
  mayWrite,
  usableLeaseMs,
  type LeaseTiming,
} from './lease-clock.ts';

describe('lease clock (the holder’s side)', () => {
  it('stops D·(1 − drift) − margin after the renewal was sent', () => {
    const t: LeaseTiming = { leaseMs: 3000, maxDriftRate: 0.01, safetyMarginMs: 250 };
    assert.equal(usableLeaseMs(t), 2720);
    assert.equal(holderStopAtMono(10_000, t), 12_720);
    assert.equal(mayWrite(12_720, 12_719), true);
    assert.equal(mayWrite(12_720, 12_720), false);
    assert.equal(mayWrite(undefined, 0), false, 'no lease, no writes');
    // Answers out of order: the later stop stands.
    assert.equal(extendStopAtMono(undefined, 10_000, t), 12_720);
    assert.equal(extendStopAtMono(13_000, 10_000, t), 13_000);
    assert.equal(extendStopAtMono(12_720, 10_500, t), 13_220);
  });

  it('checks a timing and says what is wrong with it', () => {
    const ok: LeaseTiming = { leaseMs: 3000, maxDriftRate: DEFAULT_MAX_DRIFT_RATE, safetyMarginMs: DEFAULT_SAFETY_MARGIN_MS };
    assert.equal(checkLeaseTiming(ok, 500), undefined);
    assert.match(checkLeaseTiming({ ...ok, leaseMs: 0 }) ?? '', /leaseMs must be a positive/);
    assert.match(checkLeaseTiming({ ...ok, maxDriftRate: 1 }) ?? '', /maxDriftRate must be in \[0, 1\)/);
    assert.match(checkLeaseTiming({ ...ok, safetyMarginMs: -1 }) ?? '', /safetyMarginMs/);
    assert.match(checkLeaseTiming({ ...ok, safetyMarginMs: 3000 }) ?? '', /leaves nothing/);
    assert.match(checkLeaseTiming(ok, 2720) ?? '', /renew more often/);
  });

  it('counting from the answer’s receipt instead would outlive the witness’s lease', () => {
    const t: LeaseTiming = { leaseMs: 3000, maxDriftRate: 0, safetyMarginMs: 0 };
    const sent = 0;
    const witnessExpiry = sent + 0 /* request delay */ + t.leaseMs;
    const received = 1000; // a slow answer
    assert.ok(holderStopAtMono(sent, t) <= witnessExpiry);
    assert.ok(holderStopAtMono(received, t) > witnessExpiry);
  });

  // Real time is the reference. The witness's clock runs at rate rw (it measures rw·x over a real
  // interval x), the holder's at rh, with rh ≥ (1 − drift)·rw: the holder's clock is at most
  // `drift` slower than the witness's. The witness starts D when it has the request (after the
  // request's delay and its own processing); the holder counts from its send time.
  it('the holder stops before the witness’s expiry for any delays and drift within bounds', () => {
    fc.assert(
      fc.property(
        fc.record({
          leaseMs: fc.integer({ min: 100, max: 60_000 }),
          drift: fc.double({ min: 0, max: 0.2, noNaN: true }),
          margin: fc.integer({ min: 0, max: 2000 }),
          sentReal: fc.integer({ min: 0, max: 1e9 }),
          requestDelay: fc.double({ min: 0, max: 10_000, noNaN: true }),
          processing: fc.double({ min: 0, max: 1000, noNaN: true }),
          answerDelay: fc.double({ min: 0, max: 10_000, noNaN: true }),
          witnessRate: fc.double({ min: 0.5, max: 2, noNaN: true }),
          // How the holder's rate relates to the witness's: from (1 − drift) up to 3 times.
          relative: fc.double({ min: 0, max: 1, noNaN: true }),
        }),
        (c) => {
          const t: LeaseTiming = { leaseMs: c.leaseMs, maxDriftRate: c.drift, safetyMarginMs: c.margin };
          fc.pre(usableLeaseMs(t) > 0);
          const holderRate = c.witnessRate * (1 - c.drift + c.relative * (2 + c.drift));
          const holderMonoAt = (real: number) => 50_000 + (real - c.sentReal) * holderRate; // any origin
          const sentMono = holderMonoAt(c.sentReal);
          const stopMono = holderStopAtMono(sentMono, t);
          const stopReal = c.sentReal + (stopMono - sentMono) / holderRate;
          const witnessExpiryReal = c.sentReal + c.requestDelay + c.processing + c.leaseMs / c.witnessRate;
          const eps = 1e-6 * Math.max(1, witnessExpiryReal);
          assert.ok(
            stopReal <= witnessExpiryReal + eps,
            `stops at ${stopReal}, the witness's lease ends at ${witnessExpiryReal}`,
          );
          // The margin is kept on the witness's clock: it sees the holder stop at least margin before its expiry.
          const witnessSeesStop = (stopReal - (c.sentReal + c.requestDelay + c.processing)) * c.witnessRate;
          assert.ok(witnessSeesStop <= c.leaseMs - c.margin + eps, `the witness sees ${witnessSeesStop} of ${c.leaseMs}`);
          // An answer that comes back after the stop gives no time to write.
          const receivedMono = holderMonoAt(c.sentReal + c.requestDelay + c.processing + c.answerDelay);
          if (receivedMono >= stopMono) assert.equal(mayWrite(stopMono, receivedMono), false);
        },
      ),
      { numRuns: 2000 },
    );
  });
});
