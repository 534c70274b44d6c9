// Where each ended write epoch was cut (DESIGN.md §6): from the vote chain alone, for every
// vote that moved a shard to another holder, the epoch that ended, who held it, and how far
// the new holder had applied that holder's changes when it took over. Versions the old holder
// wrote at that epoch above the cut are its unreplicated tail: sites fence them out for review
// (records: recordEpochCuts). A pure function of the votes, so every site derives the same cuts.
import type { Hlc } from '../clock/index.ts';
import { detailOf, positionOf, type VoteBody } from './vote.ts';

export interface EpochCutOf {
  shard: string;
  /** The epoch that ended. */
  epoch: number;
  /** The site that held it. */
  holder: string;
  /** The holder's versions of that epoch above this position were not seen by its successor. */
  cut: Hlc;
  /** The vote that ended it. */
  voteSeq: number;
}

/**
 * The cuts a chain's votes (in order, from genesis or from any vote on: pass `held` from the
 * votes before) make. A claim cuts at the claimant's applied position; a planned switchover at
 * the old holder's final position (nothing above it: zero loss); a manual failover at the new
 * holder's applied position when it reported one, else at the old holder's last known position
 * (the operator accepted what lies beyond). A fence ends nothing by itself: the holder's lease
 * runs out at its epoch, and the next transfer cuts that epoch.
 */
export function epochCuts(
  votes: ReadonlyArray<VoteBody & { seq: number }>,
  held: Map<string, { epoch: number; holder: string }> = new Map(),
): EpochCutOf[] {
  const cuts: EpochCutOf[] = [];
  for (const v of votes) {
    const before = held.get(v.shard);
    let cut: Hlc | undefined;
    if (v.kind === 'claim') cut = positionOf(detailOf({ ...v, kind: v.kind }).appliedPosition);
    else if (v.kind === 'switchover') cut = positionOf(detailOf({ ...v, kind: v.kind }).finalPosition);
    else if (v.kind === 'manual-failover') {
      const d = detailOf({ ...v, kind: v.kind });
      cut = positionOf(d.appliedPosition ?? d.holderPosition);
    }
    if (cut !== undefined && before && before.holder !== v.site)
      cuts.push({ shard: v.shard, epoch: before.epoch, holder: before.holder, cut, voteSeq: v.seq });
    // Who holds the shard after this vote (a fence leaves the last holder's epoch as the one to cut).
    if (v.kind === 'grant' || v.kind === 'claim' || v.kind === 'switchover' || v.kind === 'manual-failover')
      held.set(v.shard, { epoch: v.epoch, holder: v.site });
  }
  return cuts;
}
