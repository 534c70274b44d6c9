import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { packHlc } from '../clock/index.ts';
import { epochCuts } from './epoch-cuts.ts';
import type { Decision } from './lease-book.ts';
import { testWitness } from './testing-votes.ts';

const T0 = 1_700_000_000_000;
const at = (ms: number) => packHlc(T0 + ms, 0);
const decided = (r: { ok: true; value: Decision } | { ok: false; error: { code: string; message: string } }): Decision => {
  assert.ok(r.ok, r.ok ? '' : `${r.error.code}: ${r.error.message}`);
  return r.value;
};

describe('epoch cuts from the vote chain', () => {
  it('cuts a claimed epoch at the claimant applied position and a switchover at the final one, from any vote on', () => {
    const w = testWitness();
    w.record(decided(w.book.renew('north', 'B', { position: at(0) }, 0)), 0);
    w.record(decided(w.book.renew('north', 'B', { position: at(1000) }, 1000)), 1000);
    // B goes dark; after its lease ran out C claims, having applied B's changes up to 900.
    w.record(decided(w.book.claim('north', 'C', { appliedPosition: at(900) }, 5000)), 5000);
    // Later C hands the shard back to B in a planned switchover at its final position.
    w.record(decided(w.book.renew('north', 'C', { position: at(6000) }, 6000)), 6000);
    w.record(decided(w.book.release('north', 'C', { finalPosition: at(6100), successor: 'B' }, 6100)), 6100);
    w.record(decided(w.book.claim('north', 'B', { appliedPosition: at(6100) }, 6200)), 6200);
    const votes = w.chain.votes();
    assert.deepEqual(
      votes.map((v) => v.kind),
      ['grant', 'claim', 'release', 'switchover'],
    );
    const cuts = epochCuts(votes);
    assert.deepEqual(cuts, [
      { shard: 'north', epoch: 1, holder: 'B', cut: at(900), voteSeq: 2 },
      { shard: 'north', epoch: 2, holder: 'C', cut: at(6100), voteSeq: 4 },
    ]);
    // A site that holds the first votes already derives the rest from what they left held.
    const held = new Map<string, { epoch: number; holder: string }>();
    assert.deepEqual(epochCuts(votes.slice(0, 2), held), cuts.slice(0, 1));
    assert.deepEqual(epochCuts(votes.slice(2), held), cuts.slice(1));
  });

  it('cuts nothing for a first grant, and a fence leaves the last holder epoch for the next transfer to cut', () => {
    const w = testWitness();
    w.record(decided(w.book.renew('south', 'C', { position: at(0) }, 0)), 0);
    assert.deepEqual(epochCuts(w.chain.votes()), []);
    const fence = w.approve({
      action: 'fence',
      shard: 'south',
      toSite: null,
      fromEpoch: 1,
      requestedAt: new Date(T0).toISOString(),
      reason: 'C is being rebuilt',
    });
    w.record(decided(w.book.fence('south', fence, 100)), 100);
    assert.deepEqual(epochCuts(w.chain.votes()), []);
    const move = w.approve({
      action: 'manual-failover',
      shard: 'south',
      toSite: 'B',
      fromEpoch: 2,
      requestedAt: new Date(T0).toISOString(),
      reason: 'C stays down for days',
    });
    w.record(decided(w.book.manualFailover('south', 'B', move, 10_000)), 10_000);
    const cuts = epochCuts(w.chain.votes());
    assert.equal(cuts.length, 1);
    assert.deepEqual({ ...cuts[0], cut: undefined }, { shard: 'south', epoch: 1, holder: 'C', cut: undefined, voteSeq: 3 });
  });
});
