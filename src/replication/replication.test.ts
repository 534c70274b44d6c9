// Changefeed and apply between sites of the example region, each on its own database:
// residency at both ends, idempotence, the grow-only version set with concurrent edits and
// deletions, clock skew, and (on PostgreSQL) a late-committing transaction.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Patient, Resource } from '@medplum/fhirtypes';
import { packHlc } from '../clock/index.ts';
import { testBackend } from '../db/test-db.ts';
import { openTestStore, type TestStore } from '../records/testing.ts';
import { makeResidentId } from '../region/index.ts';
import { applyBatch, cursorFor, RetryLater } from './apply-batch.ts';
import { readChanges, START, type Change } from './changefeed.ts';
import { listDeadLetters, retryDeadLetter, skipDeadLetter } from './index.ts';
import { feedEnd, reached, settledPage as settledFeedPage, syncSites } from './testing.ts';

const RID = 'urn:oid:2.16.156.10011.1.3';
const patient = (seq: number): Patient => ({
  resourceType: 'Patient',
  name: [{ family: '林', given: [`${seq}`] }],
  gender: 'female',
  birthDate: '1970-01-01',
  identifier: [{ system: RID, value: makeResidentId({ divisionCode: '440104', birthDate: '1970-01-01', sequence: seq }) }],
});

describe(`replication (${testBackend()})`, () => {
  const sites: Record<'A' | 'B' | 'C', TestStore> = {} as Record<'A' | 'B' | 'C', TestStore>;
  before(async () => {
    for (const id of ['A', 'B', 'C'] as const) sites[id] = await openTestStore({ siteId: id });
  });
  after(async () => {
    for (const s of Object.values(sites)) await s.close();
  });

  const sync = (from: 'A' | 'B' | 'C', to: 'A' | 'B' | 'C') => syncSites(sites[from], sites[to]);
  const settledPage = (from: 'A' | 'B' | 'C', to: 'A' | 'B' | 'C') => settledFeedPage(sites[from], sites[to]);
  const current = async (s: 'A' | 'B' | 'C', type: string, id: string) => {
    const { rows } = await sites[s].db.query<{ version_id: string; deleted: boolean; content: Resource | null }>(
      'SELECT version_id, deleted, content FROM resource_current WHERE resource_type = $1 AND id = $2',
      [type, id],
    );
    return rows[0];
  };
  const outboxCount = async (s: 'A' | 'B' | 'C') =>
    (await sites[s].db.query<{ n: number }>('SELECT count(*)::int AS n FROM outbox')).rows[0]!.n;

  it('delivers a write to every site that may hold it, and core data nowhere else', async () => {
    const p = await sites.B.store.create('Patient', patient(1));
    const org = await sites.B.store.create('Organization', { resourceType: 'Organization', name: '天河区人民医院' });
    assert.ok(p.ok && org.ok);
    const toA = await settledPage('B', 'A');
    assert.deepEqual(
      toA.changes.map((c) => c.resourceType).sort(),
      ['EmpiEntry', 'Organization'],
      'the public cloud never receives core data, only the directory entry of the patient',
    );
    assert.equal(toA.withheld, 1);
    const cOutbox = await outboxCount('C');
    const r = await sync('B', 'C');
    assert.deepEqual([r.applied, r.current, r.rejected.length], [3, 3, 0]);
    const atC = await current('C', 'Patient', p.value.resource.id!);
    assert.equal(atC?.version_id, p.value.resource.meta!.versionId);
    assert.deepEqual(atC?.content, p.value.resource);
    assert.equal(await outboxCount('C'), cOutbox, 'applied changes never re-enter the outbox');
    const found = await sites.C.store.search('Patient', [['identifier', patient(1).identifier![0]!.value!]], {
      baseUrl: 'http://c',
    });
    assert.ok(found.ok && found.value.entry?.length === 1, 'indexed for search at the receiver');
    assert.deepEqual([(await sync('B', 'A')).applied, await current('A', 'Patient', p.value.resource.id!)], [2, undefined]);
    const routed = await sites.A.db.query<{ home_shard: string; placed_by_site: string }>(
      'SELECT home_shard, placed_by_site FROM empi_patient WHERE patient_id = $1',
      [p.value.resource.id],
    );
    assert.deepEqual(
      routed.rows,
      [{ home_shard: 'guangzhou', placed_by_site: 'B' }],
      'the public cloud can route the patient to its home shard',
    );
  });

  it('applies a change once, however often it is delivered', async () => {
    const page = await readChanges(sites.B.db, { region: sites.B.ctx.region, forSite: 'C', after: START, limit: 100 });
    const before = await sites.C.counts();
    const again = await applyBatch(
      { db: sites.C.db, siteId: 'C', region: sites.C.ctx.region, clock: sites.C.ctx.clock, records: sites.C.ctx },
      { peer: 'B', changes: page.changes, next: page.next },
    );
    assert.equal(again.applied, 0);
    assert.equal(again.duplicates, page.changes.length);
    assert.deepEqual(await sites.C.counts(), before);
  });

  // Directory data (public class) is written at any site: the real case of concurrent edits.
  const org = (name: string) => ({ resourceType: 'Organization' as const, name });

  it('keeps both of two concurrent edits, flags them at both sites, and converges', async () => {
    const created = await sites.B.store.create('Organization', org('心血管内科'));
    assert.ok(created.ok);
    const id = created.value.resource.id!;
    await sync('B', 'C');
    const atB = await sites.B.store.update('Organization', id, { ...org('心血管内科（一病区）'), id });
    const atC = await sites.C.store.update('Organization', id, { ...org('心内科'), id });
    assert.ok(atB.ok && atC.ok, JSON.stringify([atB, atC]));
    const toC = await sync('B', 'C');
    const toB = await sync('C', 'B');
    assert.equal(toC.conflicts.length + toB.conflicts.length, 2, 'each site notices the pair once');
    const [b, c] = [await current('B', 'Organization', id), await current('C', 'Organization', id)];
    assert.equal(b?.version_id, c?.version_id, 'both sites agree on the current version');
    assert.equal(
      b?.version_id,
      [atB.value.resource.meta!.versionId!, atC.value.resource.meta!.versionId!].sort().at(-1),
      'the greatest (hlc, site) is current',
    );
    for (const s of ['B', 'C'] as const) {
      const { rows } = await sites[s].db.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM resource_history WHERE resource_type = 'Organization' AND id = $1",
        [id],
      );
      assert.equal(rows[0]!.n, 3, `${s} keeps every version`);
      const conflicts = await sites[s].db.query<{ version_a: string; version_b: string }>(
        'SELECT version_a, version_b FROM resource_conflict WHERE id = $1',
        [id],
      );
      assert.deepEqual(
        conflicts.rows.map((r) => [r.version_a, r.version_b]),
        [[atB.value.resource.meta!.versionId!, atC.value.resource.meta!.versionId!].sort()],
      );
    }
    const later = await sites.B.store.update('Organization', id, { ...org('心血管内科'), id });
    assert.ok(later.ok);
    const linear = await sync('B', 'C');
    assert.deepEqual(
      [linear.conflicts.length, (await current('C', 'Organization', id))?.version_id],
      [0, later.value.resource.meta!.versionId],
      'an edit made after seeing both is no conflict',
    );
  });

  it(
    'a deletion and a concurrent edit: the later wins at both sites, ' + 'both are kept, and the pair is flagged for review',
    async () => {
      const created = await sites.B.store.create('Organization', org('临时门诊'));
      assert.ok(created.ok);
      const id = created.value.resource.id!;
      await sync('B', 'C');
      const del = await sites.B.store.delete('Organization', id);
      assert.ok(del.ok);
      const edit = await sites.C.store.update('Organization', id, { ...org('临时门诊（二）'), id }); // a later HLC than the delete
      assert.ok(edit.ok);
      await sync('B', 'C');
      await sync('C', 'B');
      for (const s of ['B', 'C'] as const) {
        const cur = await current(s, 'Organization', id);
        assert.equal(cur?.deleted, false, `the later edit is current at ${s}`);
        const { rows } = await sites[s].db.query<{ deleted: boolean; resolved: boolean }>(
          `SELECT h.deleted, c.resolution_version IS NOT NULL AS resolved FROM resource_conflict c
           JOIN resource_history h ON h.resource_type = c.resource_type AND h.id = c.id AND h.version_id = c.version_a
          WHERE c.resource_type = 'Organization' AND c.id = $1`,
          [id],
        );
        assert.deepEqual(rows, [{ deleted: true, resolved: false }], `the deletion is kept and open for review at ${s}`);
      }
    },
  );

  it('refuses and records what a site may not hold and clocks too far ahead', async () => {
    const page = await readChanges(sites.B.db, { region: sites.B.ctx.region, forSite: 'C', after: START, limit: 1 });
    const core = page.changes[0]!;
    const ahead: Change = {
      ...core,
      changeId: crypto.randomUUID(),
      versionId: 'ffff-B',
      hlc: packHlc(Date.now() + 60_000, 0),
      resourceType: 'Organization',
      dataClass: 'public',
      shard: null,
      payload: { resourceType: 'Organization', id: 'o-ahead', name: 'x' },
    };
    const r = await applyBatch(
      { db: sites.A.db, siteId: 'A', region: sites.A.ctx.region, clock: sites.A.ctx.clock, records: sites.A.ctx },
      { peer: 'B', changes: [{ ...core, changeId: crypto.randomUUID() }, ahead], next: page.next },
    );
    assert.deepEqual(
      r.rejected.map((x) => x.reason.split(':')[0]),
      ['site A may not hold core data of shard guangzhou', 'clock skew'],
    );
    const { rows } = await sites.A.db.query<{ n: number }>('SELECT count(*)::int AS n FROM replication_rejected');
    assert.equal(rows[0]!.n, 2);
    assert.equal(await current('A', core.resourceType, core.resourceId), undefined);
  });

  it(
    'retries a failing change, then parks it; ' +
      'later changes of its resource wait behind it, others flow; an operator skips it',
    async () => {
      const o1 = await sites.B.store.create('Organization', org('病理科'));
      const o2 = await sites.B.store.create('Organization', org('放射科'));
      assert.ok(o1.ok && o2.ok);
      const page = await settledPage('B', 'C');
      const first = page.changes.find((c) => c.resourceId === o1.value.resource.id)!;
      const other = page.changes.find((c) => c.resourceId === o2.value.resource.id)!;
      // A poison change (a NUL character PostgreSQL's jsonb refuses), then a later version of the same resource.
      const poison: Change = {
        ...first,
        changeId: crypto.randomUUID(),
        versionId: `${first.versionId.split('-')[0]!.replace(/.$/, 'f')}-B`,
        hlc: first.hlc + 15n,
        parentHlc: first.hlc,
        payload: { resourceType: 'Organization', id: first.resourceId, name: 'bad \u0000 name' },
      };
      const after: Change = {
        ...first,
        changeId: crypto.randomUUID(),
        versionId: `${(first.hlc + 20n).toString(16).padStart(16, '0')}-B`,
        hlc: first.hlc + 20n,
        parentHlc: poison.hlc,
        payload: { resourceType: 'Organization', id: first.resourceId, name: '病理科（新）' },
      };
      const ctxC = {
        db: sites.C.db,
        siteId: 'C',
        region: sites.C.ctx.region,
        clock: sites.C.ctx.clock,
        records: sites.C.ctx,
        maxAttempts: 2,
      };
      const changes = [...page.changes, poison, after];
      const expect = await cursorFor(sites.C.db, 'B');
      await assert.rejects(applyBatch(ctxC, { peer: 'B', changes, next: page.next, expect }), RetryLater);
      assert.deepEqual(await cursorFor(sites.C.db, 'B'), expect, 'nothing applied, the cursor did not move');
      const r = await applyBatch(ctxC, { peer: 'B', changes, next: page.next, expect });
      assert.deepEqual(
        r.parked.map((p) => [p.changeId, p.status]),
        [
          [poison.changeId, 'parked'],
          [after.changeId, 'waiting'],
        ],
      );
      assert.ok(r.applied >= 2, 'the other changes went through');
      assert.equal((await current('C', 'Organization', other.resourceId))?.version_id, other.versionId);
      assert.equal(
        (await current('C', 'Organization', first.resourceId))?.version_id,
        first.versionId,
        'the resource stays at its last good version',
      );
      const listed = await listDeadLetters(sites.C.db);
      assert.deepEqual(
        listed.map((d) => [d.status, d.attempts]),
        [
          ['parked', 2],
          ['waiting', 0],
        ],
      );
      const retried = await retryDeadLetter(ctxC, poison.changeId);
      assert.ok(!retried.ok, 'still poison');
      const skipped = await skipDeadLetter(ctxC, poison.changeId, {
        reason: 'malformed at the source, re-sent by site B as a new version',
        by: 'ops.li',
      });
      assert.deepEqual(skipped, { ok: true, released: 1, stillWaiting: 0 });
      assert.equal(
        (await current('C', 'Organization', first.resourceId))?.version_id,
        after.versionId,
        'the waiting change applied in its turn',
      );
      assert.deepEqual(
        (await listDeadLetters(sites.C.db, { includeSkipped: true })).map((d) => [d.status, d.skippedReason]),
        [['skipped', 'malformed at the source, re-sent by site B as a new version']],
      );
    },
  );

  it(
    'delivers a transaction that took a lower position but committed later',
    { skip: testBackend() === 'pglite' ? 'PGlite runs one transaction at a time: the interleaving cannot happen there' : false },
    async () => {
      const { db, store } = sites.B;
      await sync('B', 'C');
      const cursor = await cursorFor(sites.C.db, 'B');
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      let wrote!: () => void;
      const written = new Promise<void>((r) => (wrote = r));
      let early = '';
      const slow = db.transaction(async (tx) => {
        const r = await store.createIn(tx, 'Patient', patient(10), { id: undefined });
        assert.ok(r.ok);
        early = r.value.resource.id!;
        wrote();
        await gate; // holds its (lower) outbox position open while another commits
      });
      try {
        await written;
        const fast = await store.create('Patient', patient(11));
        assert.ok(fast.ok);
        const during = await readChanges(db, { region: sites.B.ctx.region, forSite: 'C', after: cursor, limit: 100 });
        assert.deepEqual(
          during.changes.map((c) => c.resourceId),
          [],
          'nothing past the open transaction is handed out',
        );
        release();
        await slow;
        const afterCommit = await settledPage('B', 'C');
        assert.deepEqual(
          afterCommit.changes.filter((c) => c.resourceType === 'Patient').map((c) => c.resourceId),
          [early, fast.value.resource.id],
          'both, the late one first',
        );
      } finally {
        release(); // never leave the transaction (and the suite) hanging on a failed assertion
        await slow.catch(() => undefined);
      }
    },
  );
  it('pages in numeric (txid, pos) order past every digit boundary, losing and repeating nothing', async () => {
    const s = await openTestStore({ siteId: 'B' });
    try {
      const seed = await s.store.create('Organization', org('档案室'));
      assert.ok(seed.ok);
      // 1,500 changes in one transaction: positions run from one digit to four.
      await s.db.query(
        `INSERT INTO outbox (change_id, origin_site, hlc, parent_hlc, epoch, shard, data_class, resource_type, resource_id,
                             version_id, deleted, payload)
         SELECT gen_random_uuid(), 'B', o.hlc + g, NULL, 0, NULL, 'public', 'Organization', 'o-' || g,
                lpad(to_hex(o.hlc + g), 16, '0') || '-B', false,
                jsonb_build_object('resourceType', 'Organization', 'id', 'o-' || g)
           FROM generate_series(1, 1500) g, (SELECT hlc FROM outbox LIMIT 1) o`,
      );
      const seen: string[] = [];
      let after = START;
      // The feed stops below the server's oldest running transaction (another test file's, on
      // PostgreSQL): page until the last change is reached, waiting while the feed holds back.
      const end = await feedEnd(s);
      const until = Date.now() + 10_000;
      for (let pages = 0; !reached(after, end); pages++) {
        assert.ok(pages < 1000 && Date.now() < until, `the feed reaches ${end.txid}:${end.pos} (at ${after.txid}:${after.pos})`);
        const page = await readChanges(s.db, { region: s.ctx.region, forSite: 'C', after, limit: 97 });
        seen.push(...page.changes.map((c) => c.resourceId));
        assert.ok(
          BigInt(page.next.pos) >= BigInt(after.pos) || BigInt(page.next.txid) > BigInt(after.txid),
          'the cursor only moves forward',
        );
        if (!page.changes.length) await new Promise((r) => setTimeout(r, 20));
        after = page.next;
      }
      assert.equal(seen.length, 1501);
      assert.equal(new Set(seen).size, 1501, 'nothing twice');
      assert.deepEqual(
        seen.slice(1, 12),
        ['o-1', 'o-2', 'o-3', 'o-4', 'o-5', 'o-6', 'o-7', 'o-8', 'o-9', 'o-10', 'o-11'],
        'in position order',
      );
      assert.equal(seen.at(-1), 'o-1500');
    } finally {
      await s.close();
    }
  });
});
