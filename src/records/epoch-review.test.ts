// The tail of an ended write epoch (DESIGN.md §6): versions the old holder wrote after its
// successor's cut are kept but fenced out (never current, outside conflicts, listed for
// review), whatever order the versions and the cut arrive in, at the successor and at the old
// holder alike.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Patient } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { applyVersions, type RemoteVersion } from './apply-versions.ts';
import { listFencedOut, recordEpochCuts, type EpochCut } from './epoch-review.ts';
import { openTestStore, type TestStore } from './testing.ts';

const SHARD = 'guangzhou';
const T0 = BigInt(Date.UTC(2026, 11, 1)) << 16n;
const at = (ms: number) => T0 + (BigInt(ms) << 16n);
const hex = (h: bigint) => h.toString(16).padStart(16, '0');

function version(o: {
  id: string;
  site: string;
  hlc: bigint;
  parent: { hlc: bigint; site: string } | null;
  epoch: number;
  gender: Patient['gender'];
}): RemoteVersion {
  const versionId = `${hex(o.hlc)}-${o.site}`;
  const lastUpdated = new Date(Number(o.hlc >> 16n)).toISOString();
  return {
    resourceType: 'Patient',
    id: o.id,
    versionId,
    hlc: o.hlc,
    parentHlc: o.parent?.hlc ?? null,
    parentOrigin: o.parent?.site ?? null,
    originSite: o.site,
    epoch: BigInt(o.epoch),
    shard: SHARD,
    dataClass: 'core',
    patientId: o.id,
    deleted: false,
    lastUpdated,
    content: { resourceType: 'Patient', id: o.id, gender: o.gender, meta: { versionId, lastUpdated } },
  };
}

/** The story of one resource: B creates it and writes a tail after C's cut; C takes over and updates it. */
function story(id: string, epoch: number) {
  const v1 = version({ id, site: 'B', hlc: at(100), parent: null, epoch, gender: 'female' });
  const cut: EpochCut = { shard: SHARD, epoch: BigInt(epoch), holder: 'B', cutHlc: at(150), voteSeq: epoch };
  const v3 = version({ id, site: 'C', hlc: at(300), parent: { hlc: v1.hlc, site: 'B' }, epoch: epoch + 1, gender: 'male' });
  // Written later by the clock than C's update: without the cut, last-writer-wins would make it current.
  const tail = version({ id, site: 'B', hlc: at(400), parent: { hlc: v1.hlc, site: 'B' }, epoch, gender: 'other' });
  return { v1, v3, tail, cut };
}

type Step = 'v1' | 'v3' | 'tail' | 'cut';

function permutations<T>(xs: readonly T[]): T[][] {
  if (xs.length <= 1) return [xs.slice()];
  return xs.flatMap((x, i) => permutations([...xs.slice(0, i), ...xs.slice(i + 1)]).map((p) => [x, ...p]));
}

describe(`the tail of an ended epoch goes to review (${testBackend()})`, () => {
  let c: TestStore;
  before(async () => {
    c = await openTestStore({ siteId: 'C' });
  });
  after(() => c.close());

  const stateOf = async (id: string) => {
    const cur = await c.db.query<{ version_id: string }>(
      "SELECT version_id FROM resource_current WHERE resource_type = 'Patient' AND id = $1",
      [id],
    );
    const conflicts = await c.db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM resource_conflict WHERE resource_type = 'Patient' AND id = $1",
      [id],
    );
    const review = (await listFencedOut(c.db, { shard: SHARD, limit: 1000 })).filter((v) => v.id === id);
    return { current: cur.rows[0]?.version_id, conflicts: conflicts.rows[0]!.n, review: review.map((v) => v.versionId) };
  };

  it('keeps the tail out of the current state in every arrival order (24 orders)', async () => {
    const orders = permutations<Step>(['v1', 'v3', 'tail', 'cut']);
    for (const [n, order] of orders.entries()) {
      // One resource and one epoch per order: cuts are per shard and epoch.
      const id = `tail-${n}`;
      const s = story(id, 10 + 2 * n);
      for (const step of order)
        await c.db.transaction(async (tx) => {
          if (step === 'cut') await recordEpochCuts(c.ctx, tx, [s.cut]);
          else await applyVersions(c.ctx, tx, [s[step]]);
        });
      assert.deepEqual(
        await stateOf(id),
        { current: s.v3.versionId, conflicts: 0, review: [s.tail.versionId] },
        `order ${order.join(' ')}`,
      );
    }
  });

  it('without the cut the tail would win: the same versions make it current (the test can fail)', async () => {
    const s = story('no-cut', 900);
    await c.db.transaction((tx) => applyVersions(c.ctx, tx, [s.v1, s.v3, s.tail]));
    const st = await stateOf('no-cut');
    assert.equal(st.current, s.tail.versionId);
    assert.equal(st.review.length, 0);
  });

  it('fences out the old holder its own tail when it learns the cut, and it then agrees with the successor', async () => {
    const b = await openTestStore({ siteId: 'B' });
    try {
      const s = story('at-b', 1000);
      // B holds its own versions (as if written here) and learns C's takeover from the chain.
      await b.db.transaction((tx) => applyVersions(b.ctx, tx, [s.v1, s.tail]));
      const before = await b.db.query<{ version_id: string }>(
        "SELECT version_id FROM resource_current WHERE resource_type = 'Patient' AND id = 'at-b'",
      );
      assert.equal(before.rows[0]!.version_id, s.tail.versionId);
      const r = await b.db.transaction((tx) => recordEpochCuts(b.ctx, tx, [s.cut, s.cut]));
      assert.deepEqual([r.recorded, r.fencedOut, r.changed.length], [1, 1, 1]);
      const back = await b.db.query<{ version_id: string; content: Patient }>(
        "SELECT version_id, content FROM resource_current WHERE resource_type = 'Patient' AND id = 'at-b'",
      );
      assert.equal(back.rows[0]!.version_id, s.v1.versionId);
      assert.equal(back.rows[0]!.content.gender, 'female');
      await b.db.transaction((tx) => applyVersions(b.ctx, tx, [s.v3]));
      const review = await listFencedOut(b.db, { shard: SHARD });
      assert.deepEqual(
        review.map((v) => [v.versionId, v.currentVersion]),
        [[s.tail.versionId, s.v3.versionId]],
      );
      // A second recording of the same cut changes nothing.
      const again = await b.db.transaction((tx) => recordEpochCuts(b.ctx, tx, [s.cut]));
      assert.deepEqual([again.recorded, again.fencedOut], [0, 0]);
    } finally {
      await b.close();
    }
  });
});
