import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Patient } from '@medplum/fhirtypes';
import { testBackend } from '../db/test-db.ts';
import { makeResidentId } from '../region/index.ts';
import { CreateBatcher, type PendingWrite } from './create-batcher.ts';
import { writeVersions } from './write-version.ts';
import { openTestStore, type TestStore } from './testing.ts';

const patient = (seq: number): Patient => ({
  resourceType: 'Patient',
  name: [{ family: '周', given: [`${seq}`] }],
  birthDate: '1975-05-05',
  identifier: [
    {
      system: 'urn:oid:2.16.156.10011.1.3',
      value: makeResidentId({ divisionCode: '440106', birthDate: '1975-05-05', sequence: seq }),
    },
  ],
});

describe(`group commit of creates (${testBackend()})`, () => {
  let t: TestStore;
  before(async () => {
    t = await openTestStore();
  });
  after(() => t.close());

  it('writes concurrent creates completely: rows, index, EMPI and outbox for each', async () => {
    const before = await t.counts();
    const results = await Promise.all(Array.from({ length: 40 }, (_, i) => t.store.create('Patient', patient(i))));
    assert.ok(results.every((r) => r.ok));
    const after = await t.counts();
    assert.equal(after.empi_patient! - before.empi_patient!, 40);
    // Each patient and its EMPI directory entry (records/empi.ts), which replicates everywhere
    // and, written once, keeps no current row.
    for (const table of ['resource_history', 'outbox']) assert.equal(after[table]! - before[table]!, 80, table);
    assert.equal(after.resource_current! - before.resource_current!, 40);
    const { rows } = await t.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM outbox
        WHERE resource_type = 'EmpiEntry' AND data_class = 'public' AND shard IS NULL AND resource_id = ANY($1)`,
      [results.flatMap((r) => (r.ok ? [r.value.resource.id!] : []))],
    );
    assert.equal(rows[0]!.n, 40, 'one public directory entry per patient');
    for (const r of results) {
      if (!r.ok) continue;
      const id = r.value.resource.id!;
      const read = await t.store.read('Patient', id);
      assert.ok(read.ok);
      const found = await t.store.search('Patient', [['identifier', (r.value.resource as Patient).identifier![0]!.value!]], {
        baseUrl: '',
      });
      assert.ok(found.ok);
      assert.deepEqual(
        found.value.entry!.map((e) => e.resource!.id),
        [id],
        'each create is searchable by its own identifier',
      );
    }
    const versions = await t.db.query<{ n: number }>(
      "SELECT count(DISTINCT version_id)::int AS n FROM resource_history WHERE resource_type = 'Patient'",
    );
    assert.equal(
      versions.rows[0]!.n,
      after.resource_history! / 2,
      "every version id is distinct (the directory entry shares its patient's)",
    );
  });

  it('a failing row in a batch fails only itself', async () => {
    const mk = (id: string, hlc: bigint): PendingWrite => ({
      row: {
        resourceType: 'Organization',
        id,
        versionId: `v${hlc}`,
        hlc,
        parentHlc: null,
        parentOrigin: null,
        originSite: 'B',
        epoch: 0n,
        shard: null,
        dataClass: 'public',
        patientId: null,
        deleted: false,
        lastUpdated: new Date().toISOString(),
        content: { resourceType: 'Organization', id },
      },
      index: { tokens: [], strings: [{ code: 'name', value: id }], dates: [], references: [] },
    });
    await writeVersions(t.db, [mk('org-a', 1n), mk('org-b', 2n)], { replace: false });
    const batcher = new CreateBatcher(t.db);
    // org-a version v1 exists already: its history row collides, in the batch and alone.
    const outcomes = await Promise.allSettled([
      batcher.write(mk('org-c', 3n)),
      batcher.write(mk('org-a', 1n)),
      batcher.write(mk('org-d', 5n)),
      batcher.write(mk('org-e', 6n)),
    ]);
    assert.deepEqual(
      outcomes.map((o) => o.status),
      ['fulfilled', 'rejected', 'fulfilled', 'fulfilled'],
    );
    const { rows } = await t.db.query<{ id: string }>(
      "SELECT id FROM resource_current WHERE resource_type = 'Organization' AND id LIKE 'org-%' ORDER BY id",
    );
    assert.deepEqual(
      rows.map((r) => r.id),
      ['org-a', 'org-b', 'org-c', 'org-d', 'org-e'],
    );
  });
});
