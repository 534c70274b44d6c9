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
    m.pulled('B', {
      report: report({
        applied: 3,
        conflicts: [{ resource: 'Organization/o', versions: ['a', 'b'] }],
        rejected: [
          { changeId: 'x', resource: 'r', reason: 'clock skew: remote clock is 900 ms ahead' },
          { changeId: 'y', resource: 'r', reason: 'site A may not hold core data' },
        ],
      }),
      newest: packHlc(now - 120, 3),
      now,
    });
    assert.deepEqual(
      m.links(now).map((l) => [l.peer, l.up, l.lagMs, l.applied, l.conflicts, l.rejectedClockSkew, l.rejectedResidency]),
      [['B', true, 120, 3, 1, 1, 1]],
    );
    m.pulled('B', { report: report(), newest: undefined, now: now + 50 });
    assert.equal(m.links(now + 50)[0]!.lagMs, 0, 'caught up');
    m.connecting('C', { now });
    m.failed('C', 'connect ECONNREFUSED 127.0.0.1:7102', { now });
    const text = m.prometheus('A', now);
    assert.match(text, /^medmesh_replication_link_up\{site="A",peer="C"\} 0$/m);
    assert.match(text, /^medmesh_replication_applied_total\{site="A",peer="B"\} 3$/m);
    assert.match(text, /^# TYPE medmesh_replication_lag_ms gauge$/m);
  });

  it('lets the lag toward an unreachable peer grow with the time since it last answered', () => {
    const m = new ReplicationMetrics();
    const t0 = 1_800_000_000_000;
    m.connecting('B', { now: t0 - 1000 });
    m.pulled('B', { report: report({ applied: 1 }), newest: packHlc(t0 - 22, 0), now: t0 });
    assert.equal(m.links(t0 + 5000)[0]!.lagMs, 22, 'up: the lag measured at the last pull');
    m.failed('B', 'connect ECONNREFUSED', { now: t0 + 1000 });
    m.failed('B', 'connect ECONNREFUSED', { now: t0 + 2000 });
    const down = m.links(t0 + 80_000)[0]!;
    assert.deepEqual(
      [down.state, down.up, down.lagMs, down.downSince, down.lastError, down.failures],
      ['down', false, 80_022, new Date(t0 + 1000).toISOString(), 'connect ECONNREFUSED', 2],
    );
    assert.deepEqual(
      m.degraded(t0 + 80_000).map((l) => l.peer),
      ['B'],
    );
    const text = m.prometheus('C', t0 + 80_000);
    assert.match(text, /^medmesh_replication_lag_ms\{site="C",peer="B"\} 80022$/m);
    assert.match(text, /^medmesh_replication_link_down_seconds\{site="C",peer="B"\} 79$/m);
    assert.match(text, new RegExp(`^medmesh_replication_last_contact_seconds\\{site="C",peer="B"\\} ${t0 / 1000}$`, 'm'));
    // Never heard from: the lag counts from when this node began pulling.
    m.connecting('A', { now: t0 });
    m.failed('A', 'connect ECONNREFUSED', { now: t0 + 10 });
    assert.equal(m.links(t0 + 30_000).find((l) => l.peer === 'A')!.lagMs, 30_000);
    m.pulled('B', { report: report(), newest: undefined, now: t0 + 81_000 });
    assert.deepEqual(
      m.degraded(t0 + 81_000).map((l) => l.peer),
      ['A'],
      'B is back',
    );
  });

  it('leaves a link another API node pulls out of the alarms, and ignores a second puller of the same process', () => {
    const m = new ReplicationMetrics();
    m.idle('B', { by: 'node-2' });
    assert.deepEqual(
      m.links().map((l) => [l.peer, l.state, l.lagMs]),
      [['B', 'idle', 0]],
    );
    assert.doesNotMatch(m.prometheus('C'), /medmesh_replication_link_up\{/);
    assert.match(m.prometheus('C'), /^medmesh_replication_link_pulling\{site="C",peer="B"\} 0$/m);
    m.connecting('B', { by: 'node-1' });
    m.failed('B', 'B answered 500', { by: 'node-1' });
    m.idle('B', { by: 'node-2' }); // node-2 of this process has no lease: node-1's figures stay
    assert.equal(m.links()[0]!.state, 'down');
  });
});
