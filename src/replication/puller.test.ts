// The puller's retry policy (issue 22 finding 2) against a stand-in peer on a fixed port: a
// peer that does not answer is asked again within a second of coming up; a peer that answers
// with failures is backed off (not hammered), yet its restart ends the backoff at once; a
// callback that throws does not end the loop.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { testBackend } from '../db/test-db.ts';
import { openTestStore, type TestStore } from '../records/testing.ts';
import { Sm2PrivateKey } from '../security/crypto/index.ts';
import { ReplicationMetrics } from './metrics.ts';
import { Puller, pullFailure } from './puller.ts';

/**
 * A stand-in peer that answers every request with `status`, counting them, and counting the
 * connections made to it (a request's, or a TCP probe's: a connect with no request).
 */
const servers = new Set<Server>();
async function peer(
  port: number,
  status: number,
): Promise<{ server: Server; hits: number[]; port: number; connections: () => number }> {
  const hits: number[] = [];
  let connections = 0;
  const server = createServer((req, res) => {
    hits.push(Date.now());
    req.resume();
    res.writeHead(status, { 'content-type': 'application/json' }).end('{"error":"stand-in"}');
  });
  server.on('connection', () => void connections++);
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  servers.add(server);
  return { server, hits, port: (server.address() as AddressInfo).port, connections: () => connections };
}
const close = (s: Server) =>
  new Promise<void>((resolve) => {
    servers.delete(s);
    s.closeAllConnections();
    s.close(() => resolve());
  });
const until = async (what: string, ms: number, f: () => boolean) => {
  const end = Date.now() + ms;
  while (!f()) {
    assert.ok(Date.now() < end, `timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

describe(`puller retries (${testBackend()})`, () => {
  let c: TestStore;
  before(async () => {
    c = await openTestStore({ siteId: 'C' });
  });
  after(() => c.close());

  const puller = (url: string, metrics: ReplicationMetrics, errors: string[]) => {
    const key = Sm2PrivateKey.generate();
    return new Puller({
      peer: { id: 'B', url },
      key: () => key,
      peerKey: () => Promise.resolve(key.publicKey),
      apply: { db: c.db, siteId: 'C', region: c.ctx.region, clock: c.ctx.clock, records: c.ctx },
      waitSeconds: 1,
      backoff: { minMs: 20_000, maxMs: 20_000 },
      probeMs: 200,
      metrics,
      onError: (m) => {
        errors.push(m);
        throw new Error('a broken log sink'); // must not end the loop
      },
    });
  };

  it('classifies what a pull threw', () => {
    const refused = new TypeError('fetch failed', {
      cause: Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' }),
    });
    assert.equal(pullFailure(refused, 'B').kind, 'unavailable');
    const reset = new TypeError('fetch failed', {
      cause: Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' }),
    });
    assert.equal(pullFailure(reset, 'B').kind, 'failing');
    assert.match(pullFailure(reset, 'B').message, /^pull from B failed: fetch failed: other side closed$/);
    assert.equal(pullFailure(new DOMException('timed out', 'TimeoutError'), 'B').kind, 'failing');
  });

  it(
    'backs off from a failing peer, but a restart of that peer ends the wait; ' +
      'a peer that is down is asked again at once when it comes up',
    async () => {
      const warnings: string[] = [];
      const onWarning = (w: Error) => warnings.push(w.message);
      process.on('warning', onWarning);
      const first = await peer(0, 500);
      const url = `http://127.0.0.1:${first.port}`;
      const metrics = new ReplicationMetrics();
      const errors: string[] = [];
      const p = puller(url, metrics, errors);
      p.start();
      try {
        await until('the first pull', 5_000, () => first.hits.length === 1);
        // Backing off, the puller probes the port every ~0.2 s: five probes made, still one request.
        const connected = first.connections();
        await until('five probes during the backoff', 5_000, () => first.connections() >= connected + 5);
        assert.equal(first.hits.length, 1, 'a peer answering 500 is backed off (20 s here), not asked again');
        assert.equal(metrics.links()[0]!.state, 'down');
        assert.match(errors[0]!, /B answered 500/);

        await close(first.server); // the peer goes away during the backoff...
        // ... for a few probes' time: a probe that finds it gone leaves nothing to wait for (no
        // request, no metric), so this wait stays a fixed one.
        await new Promise((r) => setTimeout(r, 600));
        const second = await peer(first.port, 503); // ...and comes back (starting: 503)
        const back = Date.now();
        await until('a pull at the restarted peer', 2_000, () => second.hits.length >= 1);
        assert.ok(second.hits[0]! - back < 1_000, `asked ${second.hits[0]! - back} ms after the restart`);
        // 503: the peer cannot serve yet (sealed, starting); asking again costs it nothing.
        await until('503 answered by asking again', 2_000, () => second.hits.length >= 3);

        await close(second.server);
        // Refused: asked every ~0.2 s, each failure counted; four of them, reported at most once more.
        const failures = metrics.links()[0]!.failures;
        await until('four refused pulls', 5_000, () => metrics.links()[0]!.failures >= failures + 4);
        const third = await peer(first.port, 500);
        const up = Date.now();
        await until('a pull once it listens', 2_000, () => third.hits.length >= 1);
        assert.ok(third.hits[0]! - up < 500, `asked ${third.hits[0]! - up} ms after it listened`);
        assert.ok(
          errors.filter((e) => /unreachable/.test(e)).length <= 2,
          `repeats of one failure are reported once per 30 s: ${errors.length} reports`,
        );
        assert.ok(
          warnings.some((w) => /callback for B threw: a broken log sink/.test(w)),
          'a throwing callback is reported, the loop goes on',
        );
        await close(third.server);
      } finally {
        await p.stop();
        process.off('warning', onWarning);
        for (const s of servers) await close(s); // a failed run must not keep the test process alive
      }
    },
  );
});
