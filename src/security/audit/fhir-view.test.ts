// The AuditEvent view over a log large enough for the planner to choose: searches by entity,
// agent and time give exactly the matching entries, newest first, and read them through
// indexes (entity and agent columns, append time) rather than decoding every entry.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { Db } from '../../db/index.ts';
import { openTestDb, testBackend } from '../../db/test-db.ts';
import { Sm2PrivateKey } from '../crypto/index.ts';
import { AuditLog } from './audit-log.ts';
import type { AuditEvent } from './event.ts';
import { auditSearchSql, parseAuditQuery, searchAuditEvents } from './fhir-view.ts';

const ENTRIES = 6000;
const event = (i: number): AuditEvent => ({
  time: new Date(Date.UTC(2026, 10, 22, 3, 0, 0, i)).toISOString(),
  site: 'B',
  actor: { kind: 'user', id: `user-${i % 40}`, role: 'doctor' },
  action: 'read',
  outcome: 'allow',
  purpose: 'treatment',
  resource: `Patient/p${i % 300}`,
});

describe(`AuditEvent search (${testBackend()})`, () => {
  let db: Db;
  before(async () => {
    db = await openTestDb();
    const log = new AuditLog({ db, macKey: randomBytes(32), signer: { siteId: 'B', key: Sm2PrivateKey.generate() } });
    for (let i = 0; i < ENTRIES; i += 1000) await Promise.all(Array.from({ length: 1000 }, (_, k) => log.append(event(i + k))));
    await db.query('ANALYZE audit_entry');
  });
  after(() => db.close());

  const query = (pairs: Array<[string, string]>) => {
    const q = parseAuditQuery(pairs);
    assert.ok(q.ok);
    return q.value;
  };
  const seqsOf = async (pairs: Array<[string, string]>) => {
    const b = await searchAuditEvents(db, query(pairs), { baseUrl: 'http://x/fhir/R4', query: pairs });
    return (b.entry ?? []).map((e) => Number(e.resource!.id));
  };

  it('finds exactly the entries of one patient and of one user, newest first', async () => {
    // Appended in order: entry i has seq i.
    const want = (pred: (i: number) => boolean, n: number) =>
      Array.from({ length: ENTRIES }, (_, i) => i)
        .filter(pred)
        .reverse()
        .slice(0, n);
    assert.deepEqual(
      await seqsOf([
        ['entity', 'Patient/p7'],
        ['_count', '100'],
      ]),
      want((i) => i % 300 === 7, 100),
    );
    assert.deepEqual(
      await seqsOf([
        ['agent', 'user-3'],
        ['_count', '20'],
        ['_offset', '20'],
      ]),
      want((i) => i % 40 === 3, 40).slice(20),
    );
    assert.deepEqual(await seqsOf([['entity', 'Patient/nobody']]), []);
    const { rows } = await db.query<{ t: Date }>('SELECT recorded_at AS t FROM audit_entry WHERE seq = 2500');
    const at = new Date(rows[0]!.t).toISOString();
    const inWindow = await seqsOf([
      ['agent', 'user-5'],
      ['date', `ge${at}`],
      ['_count', '1000'],
    ]);
    assert.ok(inWindow.length > 0 && inWindow.every((s) => s % 40 === 5), 'only user-5');
    const stamps = await db.query<{ seq: string }>(
      `SELECT seq FROM audit_entry
        WHERE recorded_at >= $1::timestamptz AND convert_from(entry, 'UTF8')::jsonb->'actor'->>'id' = 'user-5' ORDER BY seq DESC`,
      [at],
    );
    assert.deepEqual(
      inWindow,
      stamps.rows.map((r) => Number(r.seq)),
      'the date filter is the append time',
    );
  });

  it('reads through the indexes, not by decoding the whole log', async () => {
    const plan = async (pairs: Array<[string, string]>) => {
      const { sql, params } = auditSearchSql(query(pairs));
      const { rows } = await db.query<{ 'QUERY PLAN': unknown }>(`EXPLAIN (FORMAT JSON) ${sql}`, params);
      return JSON.stringify(rows[0]!['QUERY PLAN']);
    };
    assert.match(await plan([['entity', 'Patient/p7']]), /audit_entry_by_entity/);
    assert.match(await plan([['agent', 'user-3']]), /audit_entry_by_agent/);
    // A time window is a plain column: whichever index the planner walks, no entry is decoded to filter it.
    const { rows } = await db.query<{ t: Date }>('SELECT recorded_at AS t FROM audit_entry WHERE seq = 1500');
    const byTime = await plan([['date', `lt${new Date(rows[0]!.t).toISOString()}`]]);
    assert.match(byTime, /"Index Scan"|"Bitmap Index Scan"/);
    assert.doesNotMatch(byTime, /"(Filter|Index Cond)":"[^"]*audit_entry_json/);
    assert.doesNotMatch(byTime, /Seq Scan/);
  });

  it('answers from the bytes: a search column pointed at another patient or user brings no foreign entry', async () => {
    const before = await seqsOf([
      ['entity', 'Patient/p7'],
      ['_count', '1000'],
    ]);
    const byUser = await seqsOf([
      ['agent', 'user-3'],
      ['_count', '1000'],
    ]);
    await db.transaction(async (tx) => {
      await tx.query('SET LOCAL session_replication_role = replica'); // a superuser past the append-only trigger
      await tx.query("UPDATE audit_entry SET entity = 'Patient/p7', agent = 'user-3' WHERE seq IN (8, 9)");
    });
    assert.deepEqual(
      await seqsOf([
        ['entity', 'Patient/p7'],
        ['_count', '1000'],
      ]),
      before,
    );
    assert.deepEqual(
      await seqsOf([
        ['agent', 'user-3'],
        ['_count', '1000'],
      ]),
      byUser,
    );
  });
});
