// A background failure is never swallowed: the site's timers (audit checkpoints here) log it
// under their component, /metrics counts it (medmesh_log_problems_total), and the site goes
// on serving. Before, the checkpoint timer dropped its errors without a trace.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { testBackend } from '../db/test-db.ts';
import { startTestServer, type TestServer } from './testing.ts';

describe(`background failures are logged and counted (${testBackend()})`, () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({ siteId: 'B', checkpointEveryMs: 50 });
  });
  after(async () => {
    await s.close();
  });

  it('a failing audit checkpoint shows in /metrics and the site keeps serving', async () => {
    const problems = async () =>
      Number(
        /medmesh_log_problems_total\{site="B",component="audit-checkpoint",level="warn"\} (\d+)/.exec(
          await (await fetch(`${s.base}/metrics`)).text(),
        )?.[1] ?? 0,
      );
    assert.equal(await problems(), 0);
    await s.db.query('ALTER TABLE audit_checkpoint RENAME TO audit_checkpoint_away');
    try {
      const until = Date.now() + 10_000;
      while ((await problems()) === 0) {
        // Each search is audited, so every checkpoint pass has entries to cover.
        assert.equal((await fetch(`${s.fhir}/Organization?_count=1`, { headers: s.auth })).status, 200);
        assert.ok(Date.now() < until, 'the failing checkpoints were never counted');
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal((await fetch(`${s.base}/healthz`)).status, 200, 'the site goes on');
    } finally {
      await s.db.query('ALTER TABLE audit_checkpoint_away RENAME TO audit_checkpoint');
    }
  });
});
