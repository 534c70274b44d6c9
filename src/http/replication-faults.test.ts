// Replication through faulty links (DESIGN.md §5, issue: fault tests). Three sites over real
// HTTP, every puller behind its own faulty link: requests and answers dropped, delayed,
// delivered twice, answered with a stale page, one direction cut, then both. Writes go on
// at B and C throughout (patients: core data of shards guangzhou and shenzhen, held by B and C only;
// organizations: directory data, held everywhere), including concurrent edits of one
// organization while the links are cut. After healing and quiescence: every acknowledged
// version is at every site allowed to hold it, exactly once; nothing is where it may not be;
// the concurrent edits are both kept and flagged; a clock too far ahead is refused and
// counted; the digests of every pair agree.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Organization, Patient } from '@medplum/fhirtypes';
import { packHlc } from '../clock/index.ts';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { FaultLink, type FaultStats } from '../replication/fault-link.ts';
import { localVerifyPeer, verifyPair, watermarkBefore } from '../replication/index.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

type SiteId = 'A' | 'B' | 'C';
const SITES: SiteId[] = ['A', 'B', 'C'];
const RID = 'urn:oid:2.16.156.10011.1.3';
let seq = 0;
/** A patient homed where `at` is the active site: Guangzhou at B, Shenzhen at C. */
const patient = (at: SiteId): Patient => {
  seq++;
  const divisionCode = at === 'B' ? '440103' : '440305';
  return {
    resourceType: 'Patient',
    name: [{ family: '黄', given: [`${seq}`] }],
    birthDate: '1975-05-05',
    identifier: [{ system: RID, value: makeResidentId({ divisionCode, birthDate: '1975-05-05', sequence: seq }) }],
  };
};

describe(`replication through faulty links (${testBackend()})`, () => {
  const s = {} as Record<SiteId, TestServer>;
  /** links[to][from]: the link `to`'s puller uses to reach `from`. */
  const links = {} as Record<SiteId, Partial<Record<SiteId, FaultLink>>>;
  /** Every version a site acknowledged: resource -> version ids. */
  const acked = new Map<string, Set<string>>();
  const ack = (resource: string, versionId: string) => {
    let v = acked.get(resource);
    if (!v) acked.set(resource, (v = new Set()));
    v.add(versionId);
  };

  before(async () => {
    for (const id of SITES) s[id] = await startTestServer({ siteId: id });
    let seed = 7;
    for (const to of SITES) {
      links[to] = {};
      for (const from of SITES) {
        if (from === to) continue;
        await s[to].site.identity.registerService({
          id: from,
          kind: 'site',
          publicKey: s[from].site.kms.signingKey()!.key.publicKey,
        });
        const link = await FaultLink.open(s[from].base, { seed: seed++ });
        links[to][from] = link;
        s[to].site.peers.set(from, link.url);
      }
    }
    for (const to of SITES) s[to].site.startReplication({ waitSeconds: 1 });
  });
  after(async () => {
    for (const id of SITES) await s[id].close();
    for (const to of SITES) for (const l of Object.values(links[to])) await l.close();
  });

  const each = (f: (l: FaultLink, to: SiteId, from: SiteId) => void) => {
    for (const to of SITES) for (const [from, l] of Object.entries(links[to]) as Array<[SiteId, FaultLink]>) f(l, to, from);
  };
  /** Faults so far, summed over every link. */
  const faultTotals = (): FaultStats => {
    const t: FaultStats = { requests: 0, droppedRequests: 0, droppedAnswers: 0, duplicated: 0, reordered: 0, refusedWhileCut: 0 };
    each((l) => {
      for (const k of Object.keys(t) as Array<keyof FaultStats>) t[k] += l.stats[k];
    });
    return t;
  };
  const write = async <T extends Patient | Organization>(
    at: SiteId,
    method: 'POST' | 'PUT',
    path: string,
    body: T,
  ): Promise<T> => {
    const r = await fetch(`${s[at].fhir}/${path}`, {
      method,
      headers: { ...s[at].auth, 'content-type': 'application/fhir+json' },
      body: JSON.stringify(body),
    });
    assert.ok(r.status === 200 || r.status === 201, `${method} ${path} at ${at}: ${r.status} ${await r.clone().text()}`);
    const written = (await r.json()) as T;
    ack(`${written.resourceType}/${written.id}`, written.meta!.versionId!);
    // A new patient's EMPI directory entry goes with it (and, unlike the patient, to A as well).
    if (written.resourceType === 'Patient' && method === 'POST') ack(`EmpiEntry/${written.id}`, written.meta!.versionId!);
    return written;
  };
  const load = async (n: number, orgs: Organization[]) => {
    for (let i = 0; i < n; i++) {
      const at: SiteId = i % 2 ? 'C' : 'B';
      await write(at, 'POST', 'Patient', patient(at));
      if (i % 5 === 0)
        orgs.push(await write(at, 'POST', 'Organization', { resourceType: 'Organization', name: `卫生院 ${at}${i}` }));
      if (i % 7 === 3 && orgs.length) {
        const o = orgs[i % orgs.length]!;
        await write(at, 'PUT', `Organization/${o.id}`, { ...o, name: `${o.name}（更名 ${i}）`, meta: undefined });
      }
    }
  };
  const history = async (id: SiteId) =>
    (
      await s[id].db.query<{ r: string; v: string; data_class: string }>(
        "SELECT resource_type || '/' || id AS r, version_id AS v, data_class FROM resource_history",
      )
    ).rows;
  const settled = async () => {
    // Quiescence: every site holds every acknowledged version it may hold.
    const until = Date.now() + 60_000;
    for (;;) {
      const missing: string[] = [];
      for (const id of SITES) {
        const have = new Set((await history(id)).map((h) => `${h.r}@${h.v}`));
        for (const [r, versions] of acked) {
          if (id === 'A' && r.startsWith('Patient/')) continue;
          for (const v of versions) if (!have.has(`${r}@${v}`)) missing.push(`${id}:${r}@${v}`);
        }
      }
      if (missing.length === 0) return;
      assert.ok(Date.now() < until, `not converged after 60 s; missing ${missing.length}: ${missing.slice(0, 5).join(', ')}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };

  it('loses nothing, duplicates nothing and converges through drops, delays, duplicates, stale pages and cuts', async () => {
    const orgs: Organization[] = [];
    each((l) => l.set({ dropRequest: 0.15, dropAnswer: 0.15, delayMs: 40, duplicate: 0.2, reorder: 0.2 }));
    await load(40, orgs);
    // Long polls make few requests on a fast machine: write on until each fault has struck
    // (a puller waiting in a long poll begun before a cut meets the cut only on its next request).
    const writeUntil = async (struck: (t: FaultStats) => boolean) => {
      for (const until = Date.now() + 30_000; !struck(faultTotals());) {
        assert.ok(Date.now() < until, `a fault never struck in 30 s: ${JSON.stringify(faultTotals())}`);
        await load(5, orgs);
      }
    };
    await writeUntil((t) => t.droppedRequests > 0 && t.droppedAnswers > 0 && t.duplicated > 0 && t.reordered > 0);
    // Cut one way: C cannot reach B (B still pulls from C).
    links.C.B!.set({ cut: true });
    await load(20, orgs);
    await writeUntil(() => links.C.B!.stats.refusedWhileCut > 0);
    // Cut both ways between B and C; concurrent edits of one organization on either side.
    links.B.C!.set({ cut: true });
    const shared = orgs[0]!;
    const sides = [
      (
        await write<Organization>('B', 'PUT', `Organization/${shared.id}`, {
          ...shared,
          name: '中心卫生院（B 侧）',
          meta: undefined,
        })
      ).meta!.versionId!,
      (
        await write<Organization>('C', 'PUT', `Organization/${shared.id}`, {
          ...shared,
          name: '中心卫生院（C 侧）',
          meta: undefined,
        })
      ).meta!.versionId!,
    ];
    await load(10, orgs);
    await writeUntil(() => links.B.C!.stats.refusedWhileCut > 0);
    // B's clock jumps far ahead for one change (an outbox row stamped a minute in the future).
    await s.B.db.query(
      `INSERT INTO outbox (change_id, origin_site, hlc, parent_hlc, shard, data_class,
                          resource_type, resource_id, version_id, deleted, payload)
       VALUES (gen_random_uuid(), 'B', $1, NULL, NULL, 'public', 'Organization', 'skewed-clock', 'ffffffffffffffff-B', false,
               '{"resourceType":"Organization","id":"skewed-clock","name":"x"}')`,
      [packHlc(Date.now() + 60_000, 0)],
    );
    each((l) => l.set({}));
    await settled();

    const stats = faultTotals();
    assert.ok(
      stats.droppedRequests > 0 &&
        stats.droppedAnswers > 0 &&
        stats.duplicated > 0 &&
        stats.reordered > 0 &&
        stats.refusedWhileCut > 0,
      `every fault happened: ${JSON.stringify(stats)}`,
    );

    for (const id of SITES) {
      const rows = await history(id);
      const seen = new Map<string, number>();
      for (const h of rows) seen.set(`${h.r}@${h.v}`, (seen.get(`${h.r}@${h.v}`) ?? 0) + 1);
      assert.ok(
        [...seen.values()].every((n) => n === 1),
        `${id}: every version exactly once`,
      );
      const unknown = rows.filter((h) => !acked.get(h.r)?.has(h.v));
      assert.deepEqual(unknown, [], `${id}: nothing that was not acknowledged somewhere`);
      if (id === 'A')
        assert.deepEqual(
          rows.filter((h) => h.data_class === 'core'),
          [],
          'the public cloud holds no core data',
        );
    }
    for (const id of ['B', 'C'] as const) {
      // The load edits organizations at both sites too, so more pairs may be flagged; this one must be.
      const { rows } = await s[id].db.query<{ a: string; b: string }>(
        'SELECT version_a AS a, version_b AS b FROM resource_conflict WHERE id = $1',
        [shared.id],
      );
      assert.ok(
        rows.some((r) => sides.includes(r.a) || sides.includes(r.b)),
        `${id} flagged the concurrent edits: ${JSON.stringify(rows)}`,
      );
      const skew = await s[id].db.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM replication_rejected WHERE reason LIKE 'clock skew%'",
      );
      if (id === 'C') assert.equal(skew.rows[0]!.n, 1, 'the change from a clock too far ahead is refused');
    }
    assert.match(
      await (await fetch(`${s.C.base}/metrics`)).text(),
      /medmesh_replication_clock_skew_rejections_total\{site="C",peer="B"\} 1/,
    );

    for (const [x, y] of [
      ['B', 'C'],
      ['A', 'B'],
      ['A', 'C'],
    ] as const) {
      const apply = { db: s[x].db, siteId: x, region: s[x].site.ctx.region, clock: s[x].site.ctx.clock, records: s[x].site.ctx };
      const r = await verifyPair({
        apply,
        peer: localVerifyPeer({ db: s[y].db, region: s[y].site.ctx.region, site: y, forSite: x }),
        watermark: watermarkBefore(0, Date.now() + 1000),
      });
      assert.deepEqual([r.divergent, r.accuracy], [[], 1], `${x} and ${y} agree`);
      assert.ok(r.resources > 0);
    }
  });
});
