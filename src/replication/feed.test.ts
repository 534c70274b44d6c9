// Poison changes at the sender (DESIGN.md §5, issue 22 finding 4): an outbox row that cannot
// be sent (inserted by SQL, as an old or hostile record would be) is parked with its reason,
// later changes of its resource wait behind it, and every other change flows past; operators
// retry or skip; a record nested deeper than V8's serializer can go still travels; a page
// stays within its byte budget.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { packHlc } from '../clock/index.ts';
import type { Db } from '../db/index.ts';
import { testBackend } from '../db/test-db.ts';
import { openTestStore, type TestStore } from '../records/testing.ts';
import { applyBatch, cursorFor } from './apply-batch.ts';
import { START, type Cursor } from './changefeed.ts';
import { listFeedDeadLetters, readFeed, retryFeedDeadLetter, skipFeedDeadLetter } from './feed.ts';
import { feedEnd, reached } from './testing.ts';
import { changeJson, deepJsonText, jsonText, parseChange } from './wire.ts';

type SiteId = 'A' | 'B' | 'C';

/** An Organization nested `depth` levels deep in `extension` (what the door now refuses). */
function nested(depth: number): Record<string, unknown> {
  let e: Record<string, unknown> = { url: 'urn:x:leaf', valueString: 'leaf' };
  for (let i = 0; i < depth; i++) e = { url: `urn:x:${i % 7}`, extension: [e] };
  return e;
}

describe(`changefeed poison changes (${testBackend()})`, () => {
  const sites = {} as Record<SiteId, TestStore>;
  before(async () => {
    for (const id of ['A', 'B', 'C'] as const) sites[id] = await openTestStore({ siteId: id });
  });
  after(async () => {
    for (const s of Object.values(sites)) await s.close();
  });

  let tick = 0;
  /** Writes an outbox row of site B directly, as SQL would: no validation of any kind. */
  const insertChange = async (
    db: Db,
    o: { type: string; id: string; versionId?: string; parentHlc?: bigint | null; payload: unknown },
  ): Promise<{ changeId: string; hlc: bigint; versionId: string }> => {
    const changeId = randomUUID();
    const hlc = packHlc(Date.now(), ++tick);
    const versionId = o.versionId ?? `${hlc.toString(16).padStart(16, '0')}-B`;
    const payload =
      o.payload && typeof o.payload === 'object' && !Array.isArray(o.payload)
        ? { ...o.payload, meta: { versionId, lastUpdated: new Date().toISOString() } }
        : o.payload;
    await db.query(
      `INSERT INTO outbox (change_id, origin_site, hlc, parent_hlc, epoch, shard, data_class, resource_type, resource_id,
                           version_id, deleted, payload)
       VALUES ($1, 'B', $2, $3, 0, NULL, 'public', $4, $5, $6, false, $7::jsonb)`,
      [changeId, hlc, o.parentHlc ?? null, o.type, o.id, versionId, jsonText(payload)],
    );
    return { changeId, hlc, versionId };
  };
  const history = async (s: SiteId, type: string, id: string) =>
    (
      await sites[s].db.query<{ version_id: string }>(
        'SELECT version_id FROM resource_history WHERE resource_type = $1 AND id = $2 ORDER BY hlc',
        [type, id],
      )
    ).rows.map((r) => r.version_id);
  /** Pulls B's feed at `to` the way a puller does (encoded pages, applied with the cursor) until it holds everything B had. */
  const pull = async (to: SiteId, o: { from?: Cursor; budgetBytes?: number; maxChangeBytes?: number } = {}) => {
    const end = await feedEnd(sites.B);
    const until = Date.now() + 15_000;
    let after = o.from ?? (await cursorFor(sites[to].db, 'B'));
    const sent: string[] = [];
    const parked: string[] = [];
    let pages = 0;
    while (!reached(after, end)) {
      assert.ok(Date.now() < until, `the feed did not reach ${end.txid}:${end.pos}`);
      const page = await readFeed(sites.B.db, {
        region: sites.B.ctx.region,
        forSite: to,
        after,
        limit: 50,
        ...(o.budgetBytes ? { budgetBytes: o.budgetBytes } : {}),
        ...(o.maxChangeBytes ? { maxChangeBytes: o.maxChangeBytes } : {}),
      });
      parked.push(...page.parked.map((p) => `${p.status}:${p.changeId}`));
      const changes = page.changes.map((j) => parseChange(JSON.parse(j))!);
      assert.ok(changes.every(Boolean), 'every change sent parses as a receiver parses it');
      sent.push(...changes.map((c) => c.changeId));
      if (page.next.txid === after.txid && page.next.pos === after.pos) {
        await new Promise((r) => setTimeout(r, 20)); // held back by another transaction of the server
        continue;
      }
      pages++;
      if (!o.from) {
        const s = sites[to];
        await applyBatch(
          { db: s.db, siteId: to, region: s.ctx.region, clock: s.ctx.clock, records: s.ctx },
          { peer: 'B', changes, next: page.next, expect: after },
        );
      }
      after = page.next;
    }
    return { sent, parked, pages };
  };

  it('parks what cannot be sent with its reason, holds back later changes of its resource, and carries the rest', async () => {
    const ok1 = await sites.B.store.create('Organization', { resourceType: 'Organization', name: '越秀区卫生院' });
    assert.ok(ok1.ok);
    const org = 'org-poison-1';
    const v1 = await insertChange(sites.B.db, {
      type: 'Organization',
      id: org,
      payload: { resourceType: 'Organization', id: org, name: 'v1' },
    });
    // Receivers hold pages to a schema: a version id of 100 characters would make them refuse the whole page.
    const poison = await insertChange(sites.B.db, {
      type: 'Organization',
      id: org,
      versionId: 'x'.repeat(100),
      parentHlc: v1.hlc,
      payload: { resourceType: 'Organization', id: org, name: 'v2' },
    });
    const later = await insertChange(sites.B.db, {
      type: 'Organization',
      id: org,
      parentHlc: poison.hlc,
      payload: { resourceType: 'Organization', id: org, name: 'v3' },
    });
    const notAnObject = await insertChange(sites.B.db, { type: 'Organization', id: 'org-poison-2', payload: [1, 2, 3] });
    const badId = await insertChange(sites.B.db, {
      type: 'Organization',
      id: 'bad/id',
      payload: { resourceType: 'Organization', id: 'bad/id', name: 'x' },
    });
    const deep = await insertChange(sites.B.db, {
      type: 'Organization',
      id: 'org-deep',
      payload: { resourceType: 'Organization', id: 'org-deep', name: 'deep', extension: [nested(2000)] },
    });
    const ok2 = await sites.B.store.create('Organization', { resourceType: 'Organization', name: '荔湾区卫生院' });
    assert.ok(ok2.ok);

    const toC = await pull('C');
    assert.deepEqual(
      toC.parked.sort(),
      [
        `parked:${poison.changeId}`,
        `parked:${notAnObject.changeId}`,
        `parked:${badId.changeId}`,
        `waiting:${later.changeId}`,
      ].sort(),
    );
    for (const c of [poison, later, notAnObject, badId]) assert.ok(!toC.sent.includes(c.changeId), 'never sent');
    for (const c of [v1, deep]) assert.ok(toC.sent.includes(c.changeId), 'the other changes flow past');
    assert.deepEqual(await history('C', 'Organization', org), [v1.versionId]);
    assert.equal((await history('C', 'Organization', ok2.value.resource.id!)).length, 1, 'a write after the poison arrives');
    assert.equal((await history('C', 'Organization', 'org-deep')).length, 1, 'a record nested 2,000 levels travels');
    const letters = await listFeedDeadLetters(sites.B.db);
    assert.deepEqual(
      letters.map((l) => [l.changeId, l.status, l.resource]),
      [
        [poison.changeId, 'parked', `Organization/${org}`],
        [later.changeId, 'waiting', `Organization/${org}`],
        [notAnObject.changeId, 'parked', 'Organization/org-poison-2'],
        [badId.changeId, 'parked', 'Organization/bad/id'],
      ],
    );
    assert.match(letters[0]!.error!, /receivers would refuse it: versionId/);
    assert.match(letters[2]!.error!, /payload/);
    assert.match(letters[3]!.error!, /resourceId/);

    // Another peer's feed takes the same decisions from the table (A holds public data too), parking nothing twice.
    const toA = await pull('A');
    assert.deepEqual(toA.parked, []);
    assert.ok(!toA.sent.includes(later.changeId) && toA.sent.includes(deep.changeId));
    assert.equal((await listFeedDeadLetters(sites.B.db)).length, 4);

    // A retry that still cannot send leaves it parked, counted; a skip releases the change waiting behind it.
    const retried = await retryFeedDeadLetter(sites.B.db, poison.changeId);
    assert.ok(!retried.ok && /versionId/.test(retried.error));
    assert.equal((await listFeedDeadLetters(sites.B.db))[0]!.attempts, 2);
    assert.deepEqual(
      await skipFeedDeadLetter(sites.B.db, poison.changeId, { reason: 'hostile row, not a real version', by: 'ops' }),
      {
        ok: true,
        released: 1,
        stillWaiting: 0,
      },
    );
    const again = await pull('C');
    assert.deepEqual(again.sent, [later.changeId], 'the released change is sent again, once');
    assert.deepEqual(await history('C', 'Organization', org), [v1.versionId, later.versionId]);
    assert.deepEqual(
      (await listFeedDeadLetters(sites.B.db, { includeSkipped: true })).map((l) => [l.changeId, l.status]),
      [
        [poison.changeId, 'skipped'],
        [notAnObject.changeId, 'parked'],
        [badId.changeId, 'parked'],
      ],
    );
    // A peer reading from the start later never gets the skipped change; what it gets twice, receivers apply once.
    const fresh = await pull('C', { from: START });
    assert.ok(!fresh.sent.includes(poison.changeId));
    assert.ok(fresh.sent.includes(later.changeId));
  });

  it('closes a page at its byte budget and parks a change larger than a change may be', async () => {
    const before = await cursorFor(sites.C.db, 'B');
    const names: string[] = [];
    for (let i = 0; i < 12; i++) {
      const r = await sites.B.store.create('Organization', {
        resourceType: 'Organization',
        name: `分院 ${i} ${'院'.repeat(300)}`,
      });
      assert.ok(r.ok);
      names.push(r.value.resource.id!);
    }
    const big = await insertChange(sites.B.db, {
      type: 'Organization',
      id: 'org-big',
      payload: { resourceType: 'Organization', id: 'org-big', name: '大'.repeat(20_000) },
    });
    const r = await pull('C', { budgetBytes: 3000, maxChangeBytes: 50_000 });
    assert.ok(r.pages >= 4, `${r.pages} pages for 12 changes of ~1 KB under a 3 KB budget`);
    assert.equal(new Set(r.sent).size, r.sent.length, 'nothing sent twice');
    assert.deepEqual(r.parked, [`parked:${big.changeId}`]);
    for (const id of names) assert.equal((await history('C', 'Organization', id)).length, 1);
    assert.match(
      (await listFeedDeadLetters(sites.B.db)).find((l) => l.changeId === big.changeId)!.error!,
      /more than a change may be/,
    );
    assert.ok(reached(await cursorFor(sites.C.db, 'B'), before));
  });

  it('serializes a change at any nesting depth without recursion, exactly as JSON.stringify would', () => {
    const deep = { resourceType: 'Organization', extension: [nested(20_000)], n: 1.5, u: undefined, a: [undefined, null, true] };
    assert.throws(() => JSON.stringify(deep), RangeError, "V8's serializer overflows");
    const text = jsonText(deep);
    let depth = 0;
    for (
      let o: unknown = (JSON.parse(text) as { extension: unknown[] }).extension[0];
      o && typeof o === 'object';
      o = (o as { extension?: unknown[] }).extension?.[0]
    )
      depth++;
    assert.equal(depth, 20_001);
    const flat = { a: [1, 'x', { b: null, c: undefined, d: [undefined] }], e: '\u2028"\\', f: -0, g: Number.NaN };
    assert.equal(deepJsonText(flat), JSON.stringify(flat));
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    assert.throws(() => deepJsonText(cyclic), /circular/);
    const change = changeJson({
      changeId: randomUUID(),
      originSite: 'B',
      hlc: 1n << 60n,
      parentHlc: null,
      parentOrigin: null,
      epoch: 0n,
      shard: null,
      dataClass: 'public',
      resourceType: 'Organization',
      resourceId: 'o',
      versionId: 'v',
      deleted: false,
      payload: deep as never,
    });
    assert.equal(parseChange(JSON.parse(change))?.hlc, 1n << 60n);
  });
});
