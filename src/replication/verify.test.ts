// Consistency verification between sites on their own databases: equal copies verify equal;
// k corrupted rows are reported as exactly k divergent resources, of the right kind, and
// repair through the apply path leaves both sites equal again, current rows and search
// index included. Each site repairs only what it should take from the other.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Patient } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { openTestStore, type TestStore } from '../records/testing.ts';
import { makeResidentId } from '../region/index.ts';
import { localVerifyPeer, verifyPair, watermarkBefore, type ApplyContext } from './index.ts';
import { syncSites } from './testing.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
const patient = (seq: number): Patient => ({
  resourceType: 'Patient',
  name: [{ family: '陈', given: [`${seq}`] }],
  gender: 'male',
  birthDate: '1965-03-02',
  identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440106', birthDate: '1965-03-02', sequence: seq }) }],
});

describe(`consistency verification (${testBackend()})`, () => {
  const sites = {} as Record<'A' | 'B' | 'C', TestStore>;
  const ids: Array<{ type: string; id: string }> = [];
  before(async () => {
    for (const id of ['A', 'B', 'C'] as const) sites[id] = await openTestStore({ siteId: id });
    for (let i = 0; i < 40; i++) {
      const p = await sites.B.store.create('Patient', patient(i + 1));
      assert.ok(p.ok);
      ids.push({ type: 'Patient', id: p.value.resource.id! });
      if (i % 4 === 0)
        assert.ok(
          (
            await sites.B.store.update('Patient', p.value.resource.id!, {
              ...patient(i + 1),
              id: p.value.resource.id!,
              gender: 'female',
            })
          ).ok,
        );
    }
    for (let i = 0; i < 10; i++) {
      const o = await sites.C.store.create('Organization', { resourceType: 'Organization', name: `社区卫生服务中心 ${i}` });
      assert.ok(o.ok);
      ids.push({ type: 'Organization', id: o.value.resource.id! });
    }
    for (const [from, to] of [
      ['B', 'C'],
      ['C', 'B'],
      ['B', 'A'],
      ['C', 'A'],
    ] as const)
      await syncSites(sites[from], sites[to]);
  });
  after(async () => {
    for (const s of Object.values(sites)) await s.close();
  });

  const applyAt = (s: 'A' | 'B' | 'C'): ApplyContext => ({
    db: sites[s].db,
    siteId: s,
    region: sites[s].ctx.region,
    clock: sites[s].ctx.clock,
    records: sites[s].ctx,
  });
  const peer = (s: 'A' | 'B' | 'C', forSite: 'A' | 'B' | 'C') =>
    localVerifyPeer({ db: sites[s].db, region: sites[s].ctx.region, site: s, forSite });
  const verify = (at: 'A' | 'B' | 'C', other: 'A' | 'B' | 'C', repair = false) =>
    verifyPair({
      apply: applyAt(at),
      peer: peer(other, at),
      watermark: watermarkBefore(0, Date.now() + 1000),
      buckets: 16,
      repair,
    });
  const history = async (s: 'A' | 'B' | 'C') =>
    (
      await sites[s].db.query<{ k: string }>(
        `SELECT resource_type || '/' || id || '/' || version_id || '/' || deleted || '/' || coalesce(content::text, '') AS k
           FROM resource_history ORDER BY 1`,
      )
    ).rows.map((r) => r.k);

  it('finds equal copies equal, over what both sites may hold', async () => {
    const bc = await verify('C', 'B');
    assert.deepEqual([bc.divergent, bc.accuracy, bc.mismatchedBuckets], [[], 1, 0]);
    assert.equal(bc.resources, 90, 'every patient, its directory entry and every organization is compared between B and C');
    const ab = await verify('A', 'B');
    assert.deepEqual(
      [ab.divergent.length, ab.resources],
      [0, 50],
      'between A and B only public data counts: organizations and the EMPI directory',
    );
  });

  it('reports exactly the corrupted resources, by kind, and repairs them through the apply path', async () => {
    const patients = ids.filter((x) => x.type === 'Patient');
    const orgs = ids.filter((x) => x.type === 'Organization');
    const C = sites.C.db;
    // k = 5 corrupted rows at C, each on a different resource:
    // a whole resource's only version gone
    await C.query("DELETE FROM resource_history WHERE resource_type = 'Patient' AND id = $1", [patients[1]!.id]);
    await C.query(
      `DELETE FROM resource_history WHERE resource_type = 'Patient' AND id = $1
          AND version_id = (SELECT min(version_id) FROM resource_history WHERE resource_type = 'Patient' AND id = $1)`,
      [patients[4]!.id],
    ); // an older version gone
    await C.query(
      `UPDATE resource_history SET content = jsonb_set(content, '{gender}', '"unknown"')
        WHERE resource_type = 'Patient' AND id = $1`,
      [patients[2]!.id],
    ); // content altered
    await C.query(
      `UPDATE resource_current SET content = jsonb_set(content, '{gender}', '"unknown"')
        WHERE resource_type = 'Patient' AND id = $1`,
      [patients[2]!.id],
    );
    // flagged deleted
    await C.query("UPDATE resource_history SET deleted = true WHERE resource_type = 'Patient' AND id = $1", [patients[3]!.id]);
    await sites.B.db.query(
      `UPDATE resource_history SET content = jsonb_set(content, '{name}', '"被篡改"')
        WHERE resource_type = 'Organization' AND id = $1`,
      [orgs[0]!.id],
    ); // C's write, altered in B's copy
    const report = await verify('C', 'B');
    const kinds = Object.fromEntries(report.divergent.map((d) => [d.resource, d.versions.map((v) => v.kind)]));
    assert.deepEqual(
      kinds,
      Object.fromEntries(
        [
          [`Patient/${patients[1]!.id}`, ['missing-here']],
          [`Patient/${patients[2]!.id}`, ['differs']],
          [`Patient/${patients[3]!.id}`, ['differs']],
          [`Patient/${patients[4]!.id}`, ['missing-here']],
          [`Organization/${orgs[0]!.id}`, ['differs']],
        ].sort((x, y) => (x[0]! < y[0]! ? -1 : 1)),
      ),
    );
    assert.equal(report.accuracy, 85 / 90);

    const fixed = await verify('C', 'B', true);
    assert.deepEqual(
      fixed.repair,
      { fetched: 2, replaced: 2, refused: 0, leftForPeer: 1, recomputed: 0 },
      "C takes B's copies of B's versions, not B's copy of its own organization",
    );
    const again = await verify('C', 'B');
    assert.deepEqual(
      again.divergent.map((d) => d.resource),
      [`Organization/${orgs[0]!.id}`],
      'only the organization remains, for B to take from its origin',
    );
    const fromB = await verify('B', 'C', true);
    assert.deepEqual(
      fromB.repair,
      { fetched: 0, replaced: 1, refused: 0, leftForPeer: 0, recomputed: 0 },
      "B takes C's copy of C's own write",
    );
    const final = await verify('C', 'B');
    assert.deepEqual([final.divergent, final.accuracy], [[], 1]);
    assert.deepEqual(await history('B'), await history('C'), 'history equal row by row');
    const cur = await sites.C.db.query<{ gender: string }>(
      "SELECT content->>'gender' AS gender FROM resource_current WHERE resource_type = 'Patient' AND id = $1",
      [patients[2]!.id],
    );
    assert.equal(cur.rows[0]!.gender, 'male', 'the current row follows the repaired version');
    const found = await sites.C.store.search('Patient', [['identifier', patient(2).identifier![0]!.value!]], {
      baseUrl: 'http://c',
    });
    assert.ok(found.ok && found.value.entry?.length === 1, 'the restored patient is searchable again');
  });

  it('compares the derived state too: a wrong current row or conflict set is found and rebuilt from the versions', async () => {
    const orgs = ids.filter((x) => x.type === 'Organization');
    const [o1, o2, o3] = [orgs[1]!.id, orgs[2]!.id, orgs[3]!.id];
    // Two versions of o1 everywhere, but A keeps the older one current (the review's "A ends on the other version").
    const upd = await sites.C.store.update('Organization', o1, { resourceType: 'Organization', id: o1, name: '更名后的中心' });
    assert.ok(upd.ok);
    await syncSites(sites.C, sites.A);
    await syncSites(sites.C, sites.B);
    const A = sites.A.db;
    const older = await A.query<{ version_id: string; hlc: bigint; origin_site: string; content: unknown }>(
      `SELECT version_id, hlc, origin_site, content FROM resource_history
        WHERE resource_type = 'Organization' AND id = $1 ORDER BY hlc LIMIT 1`,
      [o1],
    );
    const o = older.rows[0]!;
    await A.query(
      `UPDATE resource_current SET version_id = $2, hlc = $3, origin_site = $4, content = $5
        WHERE resource_type = 'Organization' AND id = $1`,
      [o1, o.version_id, o.hlc, o.origin_site, JSON.stringify(o.content)],
    );
    // A records a conflict no rule gives (B and C hold none), and loses none: o2 gets a made-up pair at A.
    const v2 = (
      await A.query<{ v: string }>(
        "SELECT version_id AS v FROM resource_current WHERE resource_type = 'Organization' AND id = $1",
        [o2],
      )
    ).rows[0]!.v;
    await A.query(
      `INSERT INTO resource_conflict (resource_type, id, version_a, version_b)
       VALUES ('Organization', $1, '0000000000000001-B', $2)`,
      [o2, v2],
    );
    // And at both B and A, o3's current row points at no version at all: equal at both sites, wrong at both.
    for (const db of [A, sites.B.db])
      await db.query(
        "UPDATE resource_current SET version_id = '0000000000000001-Z' WHERE resource_type = 'Organization' AND id = $1",
        [o3],
      );

    const report = await verify('A', 'B');
    assert.deepEqual(report.divergent, [], 'the versions agree');
    assert.deepEqual(
      report.derivedState.map((d) => [d.resource, d.kind]),
      [
        [`Organization/${o1}`, 'differs'],
        [`Organization/${o2}`, 'differs'],
        [`Organization/${o3}`, 'stale-here'],
      ].sort((x, y) => (x[0]! < y[0]! ? -1 : 1)),
    );
    assert.ok(report.accuracy < 1, 'the accuracy counts them');
    const o1State = report.derivedState.find((d) => d.resource === `Organization/${o1}`)!;
    assert.equal(o1State.here?.current, o.version_id);
    assert.equal(o1State.there?.current, upd.ok ? upd.value.resource.meta?.versionId : '');

    const fixed = await verify('A', 'B', true);
    assert.equal(fixed.repair?.recomputed, 3, 'A rebuilds the three from its own versions');
    const after = await verify('A', 'B');
    assert.deepEqual(
      after.derivedState.map((d) => [d.resource, d.kind, d.here?.current === d.there?.current]),
      [[`Organization/${o3}`, 'differs', false]],
      "only B's wrong row is left, for B to rebuild",
    );
    const fromB = await verify('B', 'A', true);
    assert.deepEqual(
      fromB.derivedState.map((d) => d.resource),
      [`Organization/${o3}`],
    );
    assert.equal(fromB.repair?.recomputed, 1, 'B rebuilds its own');
    const final = await verify('A', 'B');
    assert.deepEqual([final.divergent, final.derivedState, final.accuracy], [[], [], 1]);
    const found = await sites.A.store.search('Organization', [['name', '更名后的中心']], { baseUrl: 'http://a' });
    assert.ok(found.ok && found.value.entry?.length === 1, 'the rebuilt current version is searchable at A');
  });
});
