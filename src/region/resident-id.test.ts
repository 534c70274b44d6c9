import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { makeResidentId, parseResidentId, residentIdCheckChar } from './resident-id.ts';

describe('GB 11643 resident ID', () => {
  it('accepts the standard worked example and derives division, birth date and sex', () => {
    // GB 11643-1999 Appendix example: 11010519491231002X.
    const r = parseResidentId('11010519491231002x');
    assert.ok(r.ok);
    assert.deepEqual(r.value, { value: '11010519491231002X', divisionCode: '110105', birthDate: '1949-12-31', sex: 'female' });
    assert.equal(residentIdCheckChar('44052418800101001'), '4');
  });

  it('rejects a wrong check digit and says which digit was expected', () => {
    const r = parseResidentId('110105194912310021');
    assert.ok(!r.ok);
    assert.equal(r.error.kind, 'check-digit');
    assert.match(r.error.message, /expected X/);
  });

  it('rejects impossible and future birth dates', () => {
    for (const bad of ['440106199002301234', '440106203001011234', '440106199013011234']) {
      const body = bad.slice(0, 17);
      const r = parseResidentId(body + residentIdCheckChar(body), { today: new Date('2026-11-22') });
      assert.ok(!r.ok);
      assert.equal(r.error.kind, 'birth-date', bad);
    }
  });

  it('rejects wrong formats', () => {
    for (const bad of ['', '12345', '44010619900101123', '4401061990010112345', '44010619900101123Y', '4401061990O101123X']) {
      const r = parseResidentId(bad);
      assert.ok(!r.ok);
      assert.equal(r.error.kind, 'format');
    }
  });

  it('round-trips every generated ID and catches every single-digit change', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 110000, max: 829999 }),
        fc.date({ min: new Date('1900-01-01'), max: new Date('2020-12-31'), noInvalidDate: true }),
        fc.integer({ min: 0, max: 999 }),
        fc.integer({ min: 0, max: 16 }),
        fc.integer({ min: 1, max: 9 }),
        (division, birth, seq, pos, delta) => {
          const birthDate = birth.toISOString().slice(0, 10);
          const id = makeResidentId({ divisionCode: String(division), birthDate, sequence: seq });
          const r = parseResidentId(id);
          assert.ok(r.ok);
          assert.equal(r.value.birthDate, birthDate);
          const mutated = id.slice(0, pos) + String((Number(id[pos]) + delta) % 10) + id.slice(pos + 1);
          const m = parseResidentId(mutated);
          // MOD 11-2 detects every single-digit substitution (a changed date may fail earlier).
          assert.ok(!m.ok);
        },
      ),
    );
  });
});
