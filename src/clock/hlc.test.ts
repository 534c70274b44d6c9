import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { HybridClock, hlcFromHex, hlcToHex, memoryBoundStore, packHlc, unpackHlc } from './hlc.ts';

type Op = { kind: 'tick'; advance: number } | { kind: 'receive'; advance: number; remoteDelta: number; remoteLogical: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('tick' as const), advance: fc.integer({ min: -50, max: 50 }) }),
  fc.record({
    kind: fc.constant('receive' as const),
    advance: fc.integer({ min: -50, max: 50 }),
    remoteDelta: fc.integer({ min: -1000, max: 400 }),
    remoteLogical: fc.integer({ min: 0, max: 65535 }),
  }),
);

describe('HLC packing', () => {
  it('round-trips and preserves order', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 ** 48 - 1 }),
        fc.integer({ min: 0, max: 65535 }),
        fc.integer({ min: 0, max: 2 ** 48 - 1 }),
        fc.integer({ min: 0, max: 65535 }),
        (p1, l1, p2, l2) => {
          const a = packHlc(p1, l1);
          const b = packHlc(p2, l2);
          assert.deepEqual(unpackHlc(a), { physicalMs: p1, logical: l1 });
          assert.equal(hlcFromHex(hlcToHex(a)), a);
          const tupleOrder = p1 === p2 ? Math.sign(l1 - l2) : Math.sign(p1 - p2);
          assert.equal(a === b ? 0 : a > b ? 1 : -1, tupleOrder);
          assert.equal(hlcToHex(a) < hlcToHex(b), a < b);
        },
      ),
    );
  });
  it('rejects out-of-range parts', () => {
    assert.throws(() => packHlc(2 ** 48, 0), RangeError);
    assert.throws(() => packHlc(0, 65536), RangeError);
    assert.equal(hlcFromHex('xyz'), undefined);
  });
});

describe('HybridClock', () => {
  it('issues strictly increasing timestamps whatever the wall clock and remote clocks do', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 200 }), async (ops) => {
        let wall = 1_700_000_000_000;
        const clock = await HybridClock.start({ store: memoryBoundStore(), maxOffsetMs: 500, wallMs: () => wall });
        let last = clock.peek();
        let maxSeen = wall; // greatest wall clock or accepted remote physical time so far
        for (const op of ops) {
          wall += op.advance;
          maxSeen = Math.max(maxSeen, wall);
          if (op.kind === 'tick') {
            const t = await clock.now();
            assert.ok(t > last, 'tick must advance');
            last = t;
          } else {
            const remote = packHlc(Math.max(0, wall + op.remoteDelta), op.remoteLogical);
            const r = await clock.receive(remote);
            if (op.remoteDelta > 500) {
              assert.equal(r.ok, false, 'remote beyond max offset must be rejected');
              assert.equal(clock.peek(), last, 'a rejected remote leaves the clock unchanged');
            } else {
              assert.ok(r.ok);
              assert.ok(r.hlc > last && r.hlc > remote, 'receive must exceed both the local and the remote timestamp');
              last = r.hlc;
              maxSeen = Math.max(maxSeen, unpackHlc(remote).physicalMs);
            }
          }
          // Bounded drift: the physical part never runs ahead of the greatest time seen (plus counter overflows).
          assert.ok(unpackHlc(last).physicalMs <= maxSeen + ops.length);
        }
      }),
      { numRuns: 200 },
    );
  });

  it('stays monotonic across restarts even when the wall clock moves backwards', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 5 }),
        fc.integer({ min: 1, max: 60_000 }),
        async (bursts, backwards) => {
          const store = memoryBoundStore();
          let wall = 1_700_000_000_000;
          let last = 0n;
          for (const n of bursts) {
            const clock = await HybridClock.start({ store, maxOffsetMs: 500, wallMs: () => wall, reserveMs: 1000 });
            for (let i = 0; i < n; i++) {
              wall += 7;
              const t = await clock.now();
              assert.ok(t > last);
              last = t;
              assert.ok(unpackHlc(t).physicalMs <= store.value, 'every issued value is covered by the persisted bound');
            }
            wall -= backwards; // a restart after an NTP step backwards
          }
        },
      ),
      { numRuns: 100 },
    );
  });

  it('reports a skewed remote clock with the numbers an operator needs', async () => {
    const wall = 1_700_000_000_000;
    const clock = await HybridClock.start({ store: memoryBoundStore(), maxOffsetMs: 250, wallMs: () => wall });
    const r = await clock.receive(packHlc(wall + 1000, 0));
    assert.equal(r.ok, false);
    if (!r.ok) {
      assert.equal(r.error.kind, 'clock-skew');
      assert.equal(r.error.remoteMs - r.error.localMs, 1000);
      assert.match(r.error.message, /1000 ms ahead/);
    }
  });

  it('borrows the next millisecond when the logical counter is exhausted', async () => {
    const wall = 1_700_000_000_000;
    const clock = await HybridClock.start({ store: memoryBoundStore(), maxOffsetMs: 500, wallMs: () => wall });
    const r = await clock.receive(packHlc(wall, 65535));
    assert.ok(r.ok);
    assert.deepEqual(unpackHlc(r.hlc), { physicalMs: wall + 1, logical: 0 });
  });

  it('fails a write rather than issue a value the bound store could not persist', async () => {
    let wall = 1_700_000_000_000;
    let failing = false;
    const store = {
      value: 0,
      load: () => Promise.resolve(0),
      save: (v: number) => (failing ? Promise.reject(new Error('disk full')) : ((store.value = v), Promise.resolve())),
    };
    const clock = await HybridClock.start({ store, maxOffsetMs: 500, wallMs: () => wall, reserveMs: 100 });
    failing = true;
    wall += 1000;
    await assert.rejects(clock.now(), /disk full/);
  });
});
