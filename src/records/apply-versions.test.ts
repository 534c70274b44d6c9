// The batched apply decides exactly as applying one version at a time: random histories of a
// few resources (concurrent edits from three sites, deletions, repeats, out of order) are
// applied both ways on two databases, which must then hold the same current rows, history,
// conflicts (open and resolved) and search index.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { packHlc } from '../clock/index.ts';
import { testBackend } from '../db/test-db.ts';
import { applyVersion } from './apply-version.ts';
import { applyVersions } from './apply-versions.ts';
import { seededRandom } from './synthetic.ts';
import { openTestStore, type TestStore } from './testing.ts';
import type { RemoteVersion } from './apply-version.ts';

describe(`batched apply (${testBackend()})`, () => {
  let one: TestStore;
  let many: TestStore;
  before(async () => {
    one = await openTestStore({ siteId: 'C' });
    many = await openTestStore({ siteId: 'C' });
  });
  after(async () => {
    await one.close();
    await many.close();
  });

  /** A random history: each site writes on top of the latest version it has seen. */
  const history = (seed: number): RemoteVersion[] => {
    const rnd = seededRandom(seed);
    const out: RemoteVersion[] = [];
    const seen = new Map<string, Map<string, bigint | null>>(); // site -> resource -> last hlc seen
    let t = Date.UTC(2026, 10, 1);
    for (let i = 0; i < 60; i++) {
      const site = ['A', 'B', 'D'][Math.floor(rnd() * 3)]!;
      const id = `org-${Math.floor(rnd() * 4)}`;
      t += Math.floor(rnd() * 3);
      const hlc = packHlc(t, i);
      const mine = seen.get(site) ?? new Map<string, bigint | null>();
      seen.set(site, mine);
      // Sometimes a site learns of everyone's latest version first (no conflict), sometimes not.
      if (rnd() < 0.5) for (const v of out) if (v.id === id && (mine.get(id) ?? -1n) < v.hlc) mine.set(id, v.hlc);
      const deleted = rnd() < 0.1;
      out.push({
        resourceType: 'Organization',
        id,
        versionId: `${hlc.toString(16).padStart(16, '0')}-${site}`,
        hlc,
        parentHlc: mine.get(id) ?? null,
        originSite: site,
        epoch: 0n,
        shard: null,
        dataClass: 'public',
        patientId: null,
        deleted,
        lastUpdated: new Date(t).toISOString(),
        content: deleted ? null : { resourceType: 'Organization', id, name: `机构 ${i}`, alias: [`${site}${i}`] },
      });
      mine.set(id, hlc);
      // Now and then a patient's EMPI directory entry (written once, no current row).
      if (i % 10 === 0) {
        const pid = `patient-${seed}-${i}`;
        out.push({
          resourceType: 'EmpiEntry',
          id: pid,
          versionId: `${hlc.toString(16).padStart(16, '0')}-${site}`,
          hlc,
          parentHlc: null,
          originSite: site,
          epoch: 0n,
          shard: null,
          dataClass: 'public',
          patientId: null,
          deleted: false,
          lastUpdated: new Date(t).toISOString(),
          content: {
            resourceType: 'EmpiEntry',
            id: pid,
            homeShard: 'guangzhou',
            method: 'resident-id',
            identifiers: [],
          } as unknown as RemoteVersion['content'],
        });
      }
    }
    // Delivered out of order, some twice.
    const shuffled = [...out, ...out.filter(() => rnd() < 0.15)];
    for (let i = shuffled.length - 1; i > 0; i--) {
      const j = Math.floor(rnd() * (i + 1));
      [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
    }
    return shuffled;
  };
  const snapshot = async (s: TestStore) => {
    const q = async (sql: string) => (await s.db.query<Record<string, unknown>>(sql)).rows.map((r) => JSON.stringify(r));
    return {
      current: await q('SELECT resource_type, id, version_id, deleted, content FROM resource_current ORDER BY 1, 2'),
      history: await q('SELECT resource_type, id, version_id, parent_hlc::text, deleted FROM resource_history ORDER BY 1, 2, 3'),
      conflicts: await q(
        'SELECT resource_type, id, version_a, version_b, resolved_at IS NOT NULL AS resolved, resolution_version FROM resource_conflict ORDER BY 1, 2, 3, 4',
      ),
      index: await q('SELECT resource_type, resource_id, code, value FROM search_string ORDER BY 1, 2, 3, 4'),
      empi: await q('SELECT patient_id, home_shard, placed_by_site FROM empi_patient ORDER BY 1'),
    };
  };

  for (const seed of [1, 2, 3, 4, 5, 6]) {
    it(`gives the same result as one at a time (history ${seed})`, async () => {
      const versions = history(seed);
      for (const v of versions) await one.db.transaction((tx) => applyVersion(one.ctx, tx, v));
      for (let i = 0; i < versions.length; i += 7) {
        const page = versions.slice(i, i + 7);
        await many.db.transaction((tx) => applyVersions(many.ctx, tx, page));
      }
      const [a, b] = [await snapshot(one), await snapshot(many)];
      assert.ok(a.conflicts.length > 0 || seed > 3, 'the histories do contain concurrent edits');
      assert.equal(a.empi.filter((r) => r.includes(`"patient-${seed}-`)).length, 6, 'every directory entry reached empi_patient');
      assert.ok(!a.current.some((r) => r.includes('"EmpiEntry"')), 'directory entries keep no current row');
      assert.deepEqual(b, a);
    });
  }
});
