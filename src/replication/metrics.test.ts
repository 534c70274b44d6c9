import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { packHlc } from '../clock/index.ts';
import { ReplicationMetrics } from './metrics.ts';
import type { ApplyReport } from './apply-batch.ts';

const report = (over: Partial<ApplyReport> = {}): ApplyReport => ({
  applied: 0,
  current: 0,
  duplicates: 0,
  conflicts: [],
  rejected: [],
  parked: [],
  ...over,
});

describe('replication metrics', () => {
  it('measures lag from the HLC of the newest change, counts by kind, and marks broken links', () => {
    const m = new ReplicationMetrics();
    const now = 1_800_000_000_000;
    m.pulled(
      'B',
      report({
        applied: 3,
        conflicts: [{ resource: 'Organization/o', versions: ['a', 'b'] }],
        rejected: [
          { changeId: 'x', resource: 'r', reason: 'clock skew: remote clock is 900 ms ahead' },
          { changeId: 'y', resource: 'r', reason: 'site A may not hold core data' },
        ],
      }),
      packHlc(now - 120, 3),
      now,
    );
    assert.deepEqual(
      m.links().map((l) => [l.peer, l.up, l.lagMs, l.applied, l.conflicts, l.rejectedClockSkew, l.rejectedResidency]),
      [['B', true, 120, 3, 1, 1, 1]],
    );
    m.pulled('B', report(), undefined, now + 50);
    assert.equal(m.links()[0]!.lagMs, 0, 'caught up');
    m.failed('C', 'connect ECONNREFUSED 127.0.0.1:7102');
    const text = m.prometheus('A');
    assert.match(text, /^medmesh_replication_link_up\{site="A",peer="C"\} 0$/m);
    assert.match(text, /^medmesh_replication_applied_total\{site="A",peer="B"\} 3$/m);
    assert.match(text, /^# TYPE medmesh_replication_lag_ms gauge$/m);
  });
});
