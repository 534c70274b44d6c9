// The in-place check of an entry's search columns against its canonical bytes, over the values
// that are escaped in JSON and the ones that are not, against what JSON.parse reads.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { columnsAgree as agreeIn } from './entry-columns.ts';
import { auditEventBytes, type AuditEvent } from './event.ts';

const base: AuditEvent = {
  time: '2026-12-05T03:00:00.000Z',
  site: 'B',
  actor: { kind: 'user', id: 'doctor-1', role: 'doctor' },
  action: 'read',
  outcome: 'allow',
  resource: 'Patient/p1',
};
const b = (s: string | null) => (s === null ? null : Buffer.from(s, 'utf8'));
/** As the worker packs a page: the entry, then the columns, in one buffer (and something after them). */
const columnsAgree = (entry: Buffer, entity: Buffer | null, agent: Buffer | null): boolean => {
  const buf = Buffer.concat([
    Buffer.from('{"pad":1}'),
    entry,
    entity ?? Buffer.alloc(0),
    agent ?? Buffer.alloc(0),
    Buffer.from('"resource":"x","site":'),
  ]);
  const e0 = 9;
  const span = (v: Buffer | null, start: number) => (v === null ? null : { start, length: v.length });
  return agreeIn(
    buf,
    { start: e0, length: entry.length },
    span(entity, e0 + entry.length),
    span(agent, e0 + entry.length + (entity?.length ?? 0)),
  );
};

describe('audit entry search columns', () => {
  it('agree exactly when they hold what JSON.parse reads from the bytes', () => {
    const text = fc.string({ unit: 'binary', minLength: 1, maxLength: 10 });
    fc.assert(
      fc.property(
        text,
        fc.option(text, { nil: undefined }),
        fc.option(text, { nil: undefined }),
        text,
        fc.option(text, { nil: null }),
        (id, resource, detail, otherId, otherResource) => {
          const e: AuditEvent = { ...base, actor: { ...base.actor, id }, resource, detail };
          const bytes = auditEventBytes(e);
          const parsed = JSON.parse(bytes.toString('utf8')) as { resource?: string; actor: { id: string } };
          assert.equal(columnsAgree(bytes, b(resource ?? null), b(id)), true);
          assert.equal(columnsAgree(bytes, b(otherResource), b(id)), (parsed.resource ?? null) === otherResource);
          assert.equal(columnsAgree(bytes, b(resource ?? null), b(otherId)), parsed.actor.id === otherId);
        },
      ),
      { numRuns: 3000 },
    );
  });

  it('is not fooled by key-like text inside other strings', () => {
    const e: AuditEvent = {
      ...base,
      resource: undefined,
      detail: '"resource":"Patient/p9","site": and "actor":{"id":"root","kind":',
    };
    const bytes = auditEventBytes(e);
    assert.equal(columnsAgree(bytes, null, b('doctor-1')), true);
    assert.equal(columnsAgree(bytes, b('Patient/p9'), b('doctor-1')), false);
    assert.equal(columnsAgree(bytes, null, b('root')), false);
    assert.equal(
      columnsAgree(auditEventBytes({ ...base, resource: 'Patient/"quoted"\\\n陈' }), b('Patient/"quoted"\\\n陈'), b('doctor-1')),
      true,
    );
    assert.equal(columnsAgree(bytes, null, null), false, 'every entry names its agent');
    const p12 = auditEventBytes({ ...base, actor: { ...base.actor, id: 'doctor-12' }, resource: 'Patient/p12' });
    assert.equal(columnsAgree(p12, b('Patient/p1'), b('doctor-12')), false, 'a prefix of the value is not the value');
    assert.equal(columnsAgree(p12, b('Patient/p12'), b('doctor-1')), false);
    assert.equal(columnsAgree(p12, b('Patient/p12'), b('doctor-12')), true);
  });
});
