// The review's races, over real HTTP between three sites: an organization (data any site may
// write) deleted at C while it is updated at B, and updated at both at once; the third site
// A pulls the two peers in either order. Afterwards every site answers the same for the
// record (status and version), lists the same conflicts, and consistency verification finds
// the three in step, derived state included.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Organization } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { Puller } from '../replication/index.ts';
import { pullUntilCaughtUp } from '../replication/testing.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

const SITES = ['A', 'B', 'C'] as const;
type SiteId = (typeof SITES)[number];

describe(`replication races over HTTP, three sites (${testBackend()})`, () => {
  const s = {} as Record<SiteId, TestServer>;
  const pullers: Puller[] = [];
  const keyOf = (x: TestServer) => x.site.kms.signingKey()!.key;
  const puller = new Map<string, Puller>();
  /** `to` pulls everything `from` has written so far. */
  const pull = async (from: SiteId, to: SiteId) => {
    let p = puller.get(`${from}>${to}`);
    if (!p) {
      p = new Puller({
        peer: { id: from, url: s[from].base },
        key: () => s[to].site.kms.signingKey()?.key,
        peerKey: () => Promise.resolve(keyOf(s[from]).publicKey),
        waitSeconds: 0,
        apply: { db: s[to].db, siteId: to, region: s[to].site.ctx.region, clock: s[to].site.ctx.clock, records: s[to].site.ctx },
      });
      puller.set(`${from}>${to}`, p);
      pullers.push(p);
    }
    const q = p;
    await pullUntilCaughtUp(s[from], s[to], from, () => q.pullOnce());
  };
  const fhir = (at: SiteId, path: string, init: { method?: string; body?: unknown } = {}) =>
    fetch(`${s[at].fhir}/${path}`, {
      method: init.method ?? 'GET',
      headers: { ...s[at].auth, ...(init.body ? { 'content-type': 'application/fhir+json' } : {}) },
      ...(init.body ? { body: JSON.stringify(init.body) } : {}),
    });

  before(async () => {
    for (const id of SITES) s[id] = await startTestServer({ siteId: id });
    for (const a of SITES)
      for (const b of SITES)
        if (a !== b) await s[a].site.identity.registerService({ id: b, kind: 'site', publicKey: keyOf(s[b]).publicKey });
    for (const a of SITES) for (const b of SITES) if (a !== b) s[a].site.peers.set(b, s[b].base);
  });
  after(async () => {
    for (const p of pullers) await p.stop();
    for (const id of SITES) await s[id].close();
  });

  it('every site ends with the same current version and the same conflicts, whatever order A pulls in', async () => {
    const ids: string[] = [];
    for (let round = 0; round < 6; round++) {
      const created = await fhir('B', 'Organization', {
        method: 'POST',
        body: { resourceType: 'Organization', name: `门诊部 ${round}` },
      });
      assert.equal(created.status, 201);
      const id = ((await created.json()) as Organization).id!;
      ids.push(id);
      await pull('B', 'C');
      // Concurrent: neither site has seen the other's write.
      const atB = fhir('B', `Organization/${id}`, {
        method: 'PUT',
        body: { resourceType: 'Organization', id, name: `B 改 ${round}` },
      });
      const atC =
        round % 3 === 2
          ? fhir('C', `Organization/${id}`, { method: 'PUT', body: { resourceType: 'Organization', id, name: `C 改 ${round}` } })
          : fhir('C', `Organization/${id}`, { method: 'DELETE' });
      const [rb, rc] = await Promise.all([atB, atC]);
      assert.ok(rb.ok && rc.ok, `${rb.status} ${rc.status}`);
      // A hears from the two in either order, and the two from each other.
      if (round % 2 === 0) {
        await pull('C', 'A');
        await pull('B', 'A');
      } else {
        await pull('B', 'A');
        await pull('C', 'A');
      }
      await pull('C', 'B');
      await pull('B', 'C');
    }
    for (const id of ids) {
      const answers = await Promise.all(
        SITES.map(async (at) => {
          const r = await fhir(at, `Organization/${id}`);
          const body = (await r.json()) as Organization;
          return { status: r.status, version: r.status === 200 ? body.meta?.versionId : (r.headers.get('etag') ?? 'gone') };
        }),
      );
      assert.deepEqual(answers[1], answers[0], `Organization/${id}: B and A answer alike`);
      assert.deepEqual(answers[2], answers[0], `Organization/${id}: C and A answer alike`);
      const conflicts = await Promise.all(
        SITES.map(async (at) => {
          const r = await fetch(`${s[at].base}/conflicts?resourceType=Organization&id=${id}`, {
            headers: s[at].as(['administrator']),
          });
          assert.equal(r.status, 200);
          return ((await r.json()) as Array<{ versions: string[] }>).map((c) => c.versions.join(' ')).sort();
        }),
      );
      assert.equal(conflicts[0]!.length, 1, `Organization/${id}: the concurrent pair is listed for review`);
      assert.deepEqual(conflicts[1], conflicts[0], `Organization/${id}: B lists what A lists`);
      assert.deepEqual(conflicts[2], conflicts[0], `Organization/${id}: C lists what A lists`);
    }
    for (const at of SITES) {
      const r = await fetch(`${s[at].base}/replication/verify`, {
        method: 'POST',
        headers: { ...s[at].as(['administrator']), 'content-type': 'application/json' },
        body: JSON.stringify({ graceSeconds: 0 }),
      });
      assert.equal(r.status, 200);
      for (const report of (await r.json()) as Array<{ peer: string; accuracy: number; derivedState: unknown[] }>)
        assert.deepEqual([report.accuracy, report.derivedState], [1, []], `${at} vs ${report.peer} in step`);
    }
  });
});
