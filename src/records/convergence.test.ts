// A resource's derived state (current row, search index, conflicts) must be a pure function of
// its version set: three sites write concurrently (creates under chosen ids, updates,
// deletions, resurrections, equal clocks: every site's wall clock stands still, so HLCs
// collide across sites), exchange some versions as they go, then receive everything in
// random orders and page sizes. All three must end with the same derived state, equal to the
// reference rules (version-order.ts) applied to the whole set.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Resource } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import type { DataClass } from '../region/index.ts';
import { applyVersions, factsOf, type RemoteVersion } from './apply-versions.ts';
import { recomputeResources } from './derived-state.ts';
import { seededRandom } from './synthetic.ts';
import { openTestStore, type TestStore } from './testing.ts';
import { deriveState } from './version-order.ts';

const SITES = ['A', 'B', 'C'] as const;
const WALL = Date.UTC(2026, 11, 1);
const ROUNDS = 8;

interface HistoryRow {
  resource_type: string;
  id: string;
  version_id: string;
  hlc: string;
  parent_hlc: string | null;
  parent_origin: string | null;
  origin_site: string;
  epoch: string;
  shard: string | null;
  data_class: DataClass;
  deleted: boolean;
  last_updated: Date;
  content: Resource | null;
}

/** Every version a site holds, as the changes another site would apply. */
async function versionsAt(s: TestStore): Promise<RemoteVersion[]> {
  const { rows } = await s.db.query<HistoryRow>(
    `SELECT resource_type, id, version_id, hlc::text AS hlc, parent_hlc::text AS parent_hlc, parent_origin, origin_site,
            epoch::text AS epoch, shard, data_class, deleted, last_updated, content
       FROM resource_history WHERE resource_type <> 'EmpiEntry' ORDER BY resource_type, id, version_id`,
  );
  return rows.map((r) => ({
    resourceType: r.resource_type,
    id: r.id,
    versionId: r.version_id,
    hlc: BigInt(r.hlc),
    parentHlc: r.parent_hlc === null ? null : BigInt(r.parent_hlc),
    parentOrigin: r.parent_origin,
    originSite: r.origin_site,
    epoch: BigInt(r.epoch),
    shard: r.shard,
    dataClass: r.data_class,
    patientId: null,
    deleted: r.deleted,
    lastUpdated: new Date(r.last_updated).toISOString(),
    content: r.content,
  }));
}

/** What must be equal everywhere: current rows, conflicts (with resolutions), the search index. */
async function derived(s: TestStore) {
  const q = async (sql: string) => (await s.db.query<Record<string, unknown>>(sql)).rows.map((r) => JSON.stringify(r));
  return {
    current: await q(
      `SELECT resource_type, id, version_id, deleted, content FROM resource_current
        WHERE resource_type <> 'EmpiEntry' ORDER BY 1, 2`,
    ),
    conflicts: await q(
      `SELECT resource_type, id, version_a, version_b, resolution_version, resolved_at IS NOT NULL AS resolved
         FROM resource_conflict ORDER BY 1, 2, 3, 4`,
    ),
    tokens: await q(`SELECT resource_type, resource_id, code, system, value FROM search_token ORDER BY 1, 2, 3, 4, 5`),
    strings: await q(`SELECT resource_type, resource_id, code, value FROM search_string ORDER BY 1, 2, 3, 4`),
    history: await q(
      `SELECT resource_type, id, version_id, parent_hlc::text, parent_origin FROM resource_history ORDER BY 1, 2, 3`,
    ),
  };
}

/** The reference: the rules applied to each resource's whole version set. */
function reference(versions: readonly RemoteVersion[]) {
  const byResource = new Map<string, RemoteVersion[]>();
  for (const v of versions)
    byResource.set(`${v.resourceType}/${v.id}`, [...(byResource.get(`${v.resourceType}/${v.id}`) ?? []), v]);
  const current: string[] = [];
  const conflicts: string[] = [];
  for (const [k, vs] of [...byResource].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const d = deriveState(
      vs.map((v) =>
        factsOf({
          version_id: v.versionId,
          hlc: String(v.hlc),
          origin_site: v.originSite,
          parent_hlc: v.parentHlc === null ? null : String(v.parentHlc),
          parent_origin: v.parentOrigin,
        }),
      ),
    );
    current.push(`${k}@${d.current}`);
    for (const c of d.conflicts) conflicts.push(`${k}:${c.a}|${c.b}|${c.resolution}`);
  }
  return { current, conflicts };
}

const shuffle = <T>(xs: readonly T[], rnd: () => number): T[] => {
  const out = [...xs];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
};

/** Applies versions in pages of random size (1-5), each page one transaction. */
async function deliver(to: TestStore, versions: readonly RemoteVersion[], rnd: () => number): Promise<void> {
  for (let i = 0; i < versions.length;) {
    const n = 1 + Math.floor(rnd() * 5);
    const page = versions.slice(i, i + n);
    await to.db.transaction((tx) => applyVersions(to.ctx, tx, page));
    i += n;
  }
}

describe(`convergence: derived state is a pure function of the version set (${testBackend()})`, () => {
  const sites = new Map<string, TestStore>();
  before(async () => {
    for (const id of SITES) sites.set(id, await openTestStore({ siteId: id, wallMs: () => WALL }));
  });
  after(async () => {
    for (const s of sites.values()) await s.close();
  });
  const at = (id: string) => sites.get(id)!;

  const ids = ['org-x', 'org-y'];
  const exercised = { conflicts: 0, resolved: 0, deleted: 0, equalClocks: 0 };
  for (let round = 0; round < ROUNDS; round++) {
    it(`three sites write and exchange concurrently, then agree (round ${round})`, async () => {
      const seed = 0x5eed00 + round;
      const rnd = seededRandom(seed);
      const type = 'Organization';
      const prefix = `r${round}-`;
      try {
        for (let step = 0; step < 24; step++) {
          const site = SITES[Math.floor(rnd() * 3)]!;
          const id = prefix + ids[Math.floor(rnd() * ids.length)]!;
          if (rnd() < 0.6) {
            const s = at(site);
            const cur = await s.store.read(type, id);
            if (cur.ok && rnd() < 0.3) assert.ok((await s.store.delete(type, id)).ok);
            else {
              const w = await s.store.update(type, id, {
                resourceType: type,
                id,
                name: `${site}-${step}`,
                alias: [`${site}${step}`],
              });
              assert.ok(w.ok, JSON.stringify(!w.ok && w.error));
            }
          } else {
            // A partial exchange: some of one site's versions reach another, in any order.
            const [from, to] = shuffle(SITES, rnd);
            const some = (await versionsAt(at(from!))).filter((v) => v.id.startsWith(prefix) && rnd() < 0.5);
            await deliver(at(to!), shuffle(some, rnd), rnd);
          }
        }
        // Everything everywhere, each site in its own order.
        const all = new Map<string, RemoteVersion>();
        for (const s of SITES)
          for (const v of await versionsAt(at(s))) if (v.id.startsWith(prefix)) all.set(v.versionId + v.id, v);
        for (const s of SITES) await deliver(at(s), shuffle([...all.values()], rnd), rnd);

        const states = await Promise.all(SITES.map((s) => derived(at(s))));
        assert.deepEqual(states[1], states[0], 'B and A agree');
        assert.deepEqual(states[2], states[0], 'C and A agree');
        const ref = reference([...all.values()]);
        const cur = (
          await at('A').db.query<{ k: string }>(
            `SELECT resource_type || '/' || id || '@' || version_id AS k
               FROM resource_current WHERE id LIKE $1 ORDER BY resource_type, id`,
            [`${prefix}%`],
          )
        ).rows.map((r) => r.k);
        assert.deepEqual(cur, ref.current, 'the current version is the greatest everywhere');
        const conf = (
          await at('A').db.query<{ k: string }>(
            `SELECT resource_type || '/' || id || ':' || version_a || '|' || version_b || '|'
                    || coalesce(resolution_version, 'null') AS k
             FROM resource_conflict WHERE id LIKE $1 ORDER BY resource_type, id, version_a, version_b`,
            [`${prefix}%`],
          )
        ).rows.map((r) => r.k);
        assert.deepEqual(conf, ref.conflicts, 'the conflicts are those of the reference rules');
        exercised.conflicts += conf.length;
        exercised.resolved += conf.filter((c) => !c.endsWith('|null')).length;
        exercised.deleted += [...all.values()].filter((v) => v.deleted).length;
        const hlcs = [...all.values()].map((v) => `${v.id}@${v.hlc}`);
        exercised.equalClocks += hlcs.length - new Set(hlcs).size;
        if (round === ROUNDS - 1)
          for (const [k, n] of Object.entries(exercised)) assert.ok(n > 0, `the rounds never exercised ${k}`);
        // Rebuilding from the versions changes nothing: what the apply path kept is the reference.
        for (const s of SITES) {
          const changed = await at(s).db.transaction((tx) =>
            recomputeResources(
              at(s).ctx,
              tx,
              ids.map((i) => ({ resourceType: type, id: prefix + i })),
            ),
          );
          assert.deepEqual(changed, [], `nothing to rebuild at ${s}`);
        }
      } catch (e) {
        console.error(`convergence round ${round}: seed 0x${seed.toString(16)}`);
        throw e;
      }
    });
  }

  it('two pages applying versions of one new resource at once see each other (the resource lock)', async () => {
    const s = at('B');
    const mk = (site: string, n: number): RemoteVersion => {
      const hlc = (BigInt(WALL) << 16n) | BigInt(n);
      return {
        resourceType: 'Organization',
        id: 'lock-race',
        versionId: `${hlc.toString(16).padStart(16, '0')}-${site}`,
        hlc,
        parentHlc: null,
        parentOrigin: null,
        originSite: site,
        epoch: 0n,
        shard: null,
        dataClass: 'public',
        patientId: null,
        deleted: false,
        lastUpdated: new Date(WALL).toISOString(),
        content: { resourceType: 'Organization', id: 'lock-race', name: site },
      };
    };
    // Two sites created the same id independently; their pages are applied here at the same time.
    const [fromA, fromC] = [mk('A', 7), mk('C', 9)];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let holding = false;
    const first = s.db.transaction(async (tx) => {
      await applyVersions(s.ctx, tx, [fromA]);
      holding = true;
      await gate; // still uncommitted while the second page is applied
    });
    while (!holding) await new Promise((r) => setTimeout(r, 5));
    const second = s.db.transaction((tx) => applyVersions(s.ctx, tx, [fromC]));
    // On a server, let the second page run until it waits on the first (PGlite runs one transaction at a time).
    if (s.db.kind === 'postgres')
      for (;;) {
        const { rows } = await s.db.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity
            WHERE application_name = current_schema() AND wait_event_type = 'Lock'`,
        );
        if (rows[0]!.n > 0) break;
        await new Promise((r) => setTimeout(r, 5));
      }
    release();
    await Promise.all([first, second]);
    const conf = await s.db.query<{ a: string; b: string }>(
      "SELECT version_a AS a, version_b AS b FROM resource_conflict WHERE resource_type = 'Organization' AND id = 'lock-race'",
    );
    assert.deepEqual(conf.rows, [{ a: fromA.versionId, b: fromC.versionId }], 'the two creates are a conflict');
    const cur = await s.db.query<{ v: string }>(
      "SELECT version_id AS v FROM resource_current WHERE resource_type = 'Organization' AND id = 'lock-race'",
    );
    assert.deepEqual(cur.rows, [{ v: fromC.versionId }]);
  });

  it('a deletion racing an update with the same HLC: every arrival order gives the same state', async () => {
    // The review's race: B creates, then B updates while C deletes, both on top of the create, at the same HLC.
    const hlc = (n: number) => (BigInt(WALL) << 16n) | BigInt(n);
    const vid = (n: number, site: string) => `${hlc(n).toString(16).padStart(16, '0')}-${site}`;
    const base = {
      resourceType: 'Organization',
      id: 'race',
      epoch: 0n,
      shard: null,
      dataClass: 'public' as const,
      patientId: null,
    };
    const org = (name: string) => ({ resourceType: 'Organization' as const, id: 'race', name });
    const create: RemoteVersion = {
      ...base,
      versionId: vid(1, 'B'),
      hlc: hlc(1),
      parentHlc: null,
      parentOrigin: null,
      originSite: 'B',
      deleted: false,
      lastUpdated: new Date(WALL).toISOString(),
      content: org('v1'),
    };
    const update: RemoteVersion = {
      ...base,
      versionId: vid(2, 'B'),
      hlc: hlc(2),
      parentHlc: hlc(1),
      parentOrigin: 'B',
      originSite: 'B',
      deleted: false,
      lastUpdated: new Date(WALL).toISOString(),
      content: org('v2'),
    };
    const del: RemoteVersion = {
      ...base,
      versionId: vid(2, 'C'),
      hlc: hlc(2),
      parentHlc: hlc(1),
      parentOrigin: 'B',
      originSite: 'C',
      deleted: true,
      lastUpdated: new Date(WALL).toISOString(),
      content: null,
    };
    // B writes again on top of its update before the deletion reaches it: that write has not seen the deletion.
    const later: RemoteVersion = {
      ...base,
      versionId: vid(3, 'B'),
      hlc: hlc(3),
      parentHlc: hlc(2),
      parentOrigin: 'B',
      originSite: 'B',
      deleted: false,
      lastUpdated: new Date(WALL).toISOString(),
      content: org('v3'),
    };
    const versions = [create, update, del, later];
    const perms = (xs: RemoteVersion[]): RemoteVersion[][] =>
      xs.length <= 1 ? [xs] : xs.flatMap((x, i) => perms([...xs.slice(0, i), ...xs.slice(i + 1)]).map((p) => [x, ...p]));
    // Each arrival order on its own copy of the resource (id race-<n>), at a site that wrote none of them.
    const s = at('A');
    const orders = perms(versions);
    for (const [n, order] of orders.entries())
      for (const v of order) {
        const copy = { ...v, id: `race-${n}`, content: v.content && { ...v.content, id: `race-${n}` } };
        await s.db.transaction((tx) => applyVersions(s.ctx, tx, [copy]));
      }
    const state = async (n: number) => {
      const cur = await s.db.query<{ version_id: string; deleted: boolean; name: string | null }>(
        `SELECT version_id, deleted, content->>'name' AS name FROM resource_current
          WHERE resource_type = 'Organization' AND id = $1`,
        [`race-${n}`],
      );
      const conf = await s.db.query<{ a: string; b: string; r: string | null }>(
        `SELECT version_a AS a, version_b AS b, resolution_version AS r FROM resource_conflict
          WHERE resource_type = 'Organization' AND id = $1 ORDER BY 1, 2`,
        [`race-${n}`],
      );
      return { current: cur.rows, conflicts: conf.rows.map((c) => [c.a, c.b, c.r]) };
    };
    const first = await state(0);
    for (let n = 1; n < orders.length; n++)
      assert.deepEqual(await state(n), first, `arrival order ${orders[n]!.map((v) => v.versionId.slice(-6)).join(', ')}`);
    assert.deepEqual(first.current, [{ version_id: vid(3, 'B'), deleted: false, name: 'v3' }], 'the greatest version is current');
    assert.deepEqual(first.conflicts, [
      [vid(2, 'B'), vid(2, 'C'), null], // the update and the deletion, neither seen by the other's writer
      [vid(2, 'C'), vid(3, 'B'), null], // B's later write superseded the deletion it had not seen
    ]);
  });
});
