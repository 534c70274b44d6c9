// The pure parts of access control: decisions, masking transforms, plans and schemas.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { makeResidentId } from '../../region/index.ts';
import type { Patient } from '@medplum/fhirtypes';
import { ageBand, maskId, maskIdentifier, maskName, maskPhone, maskResource } from './masking.ts';
import { decide } from './decide.ts';
import { DEFAULT_MASKING_RULES, DEFAULT_POLICIES } from './defaults.ts';
import { maskPlan } from './record-access.ts';
import { fieldsOf } from './search-probe.ts';
import { accessPolicySchema, describeIssues, type AccessPolicy } from './policy.ts';

const policies = new Map(DEFAULT_POLICIES.map((p) => [p.role, p]));
const caller = (roles: string[], attributes: Record<string, string> = {}) => ({ userId: 'u', roles, attributes });

describe('access decisions', () => {
  it('ships a valid default policy for every role the issue names', () => {
    for (const role of [
      'doctor',
      'nurse',
      'pharmacist',
      'lab',
      'registrar',
      'administrator',
      'auditor',
      'researcher',
      'regulator',
      'patient',
    ]) {
      const p = policies.get(role);
      assert.ok(p, role);
      assert.ok(accessPolicySchema.safeParse(p).success, role);
    }
  });

  it('denies what no rule allows and says why', () => {
    const d = decide(
      { caller: caller(['pharmacist']), purpose: 'treatment', action: 'read', resourceType: 'Observation', siteId: 'B' },
      policies,
    );
    assert.deepEqual(d, { allowed: false, reason: 'role pharmacist may not read Observation for purpose treatment' });
    const r = decide(
      {
        caller: caller(['researcher'], { project: 'p' }),
        purpose: 'research',
        action: 'read',
        resourceType: 'Patient',
        siteId: 'B',
      },
      policies,
    );
    assert.ok(!r.allowed && /search-only/.test(r.reason));
    const purpose = decide(
      { caller: caller(['doctor']), purpose: 'statistics', action: 'search', resourceType: 'Patient', siteId: 'B' },
      policies,
    );
    assert.ok(!purpose.allowed && /purpose statistics is not permitted/.test(purpose.reason));
  });

  it('combines several roles by the most permissive rule and scope', () => {
    const nurse = decide(
      { caller: caller(['nurse']), purpose: 'treatment', action: 'read', resourceType: 'Patient', siteId: 'B' },
      policies,
    );
    assert.ok(nurse.allowed && nurse.scope === 'care' && nurse.fields.get('identifier') === 'mask');
    const both = decide(
      { caller: caller(['nurse', 'registrar']), purpose: 'treatment', action: 'read', resourceType: 'Patient', siteId: 'B' },
      policies,
    );
    assert.ok(both.allowed && both.scope === 'all' && both.fields.size === 0, 'the registrar rule shows every field');
  });

  it('applies ABAC conditions on department, title and site', () => {
    const p: AccessPolicy = {
      resourceType: 'AccessPolicy',
      name: 'icu',
      role: 'icu',
      purposes: ['treatment'],
      breakGlass: false,
      rules: [{ resourceTypes: ['Observation'], actions: ['read'], scope: 'all', when: { department: ['icu'], site: ['B'] } }],
    };
    const m = new Map([['icu', p]]);
    const q = (attributes: Record<string, string>, siteId: string) =>
      decide(
        { caller: caller(['icu'], attributes), purpose: 'treatment', action: 'read', resourceType: 'Observation', siteId },
        m,
      ).allowed;
    assert.deepEqual(
      [q({ department: 'icu' }, 'B'), q({ department: 'ward' }, 'B'), q({ department: 'icu' }, 'C')],
      [true, false, false],
    );
  });

  it('names the path and rule of an invalid policy', () => {
    const r = accessPolicySchema.safeParse({
      resourceType: 'AccessPolicy',
      name: 'x1',
      role: 'x1',
      purposes: ['fun'],
      rules: [{ resourceTypes: ['Patient'], actions: ['read'], scope: 'all', fields: { birthDate: 'blur' } }],
    });
    assert.ok(!r.success);
    const issues = describeIssues(r.error).join('\n');
    assert.match(issues, /^purposes\[0\]: /m);
    assert.match(issues, /^rules\[0\]\.fields\.birthDate: /m);
  });
});

describe('masking', () => {
  it('masks names, resident IDs and phones the way the regional standard shows', () => {
    assert.equal(maskName('张小明'), '张*明');
    assert.equal(maskName('欧阳娜娜'), '欧**娜');
    assert.equal(maskName('张三'), '张*');
    assert.equal(maskName('John Smith'), 'J*** S****');
    const rid = makeResidentId({ divisionCode: '440305', birthDate: '1990-01-01', sequence: 123 });
    assert.equal(maskIdentifier(undefined, rid, []), '440305************', 'a resident ID by its form');
    assert.equal(maskIdentifier('urn:oid:2.16.156.10011.1.3', '440305900101123', []), '440305*********', 'or by its system');
    assert.equal(maskIdentifier(undefined, `GD${rid}`, [rid]), '*'.repeat(20), 'a card number that embeds it');
    assert.equal(maskIdentifier(undefined, `${rid.slice(0, 17)}01`, [rid]), `440305${'*'.repeat(13)}`);
    assert.equal(maskIdentifier(undefined, rid.slice(6), [rid]), '*'.repeat(12), 'or drops its division');
    assert.equal(maskId('HZ2024000123'), '********0123');
    assert.equal(maskId('A12345'), '****45');
    assert.equal(maskId('12345'), '*****');
    assert.equal(maskPhone('13812345678'), '138****5678');
    assert.equal(maskPhone('+86 138-1234-5678'), '138****5678');
    assert.equal(maskPhone('020-12345678'), '020****5678');
  });

  it('hides at least 8 characters of a long identifier and 4 of a short one (property)', () => {
    fc.assert(
      fc.property(fc.stringMatching(/^[0-9X]{1,30}$/), (id) => {
        const m = maskId(id);
        const hidden = [...m].filter((c) => c === '*').length;
        return m.length === id.length && (hidden === id.length || hidden >= (id.length >= 12 ? 8 : 4));
      }),
    );
  });

  it('puts ages in five-year bands as of a given day', () => {
    const now = new Date('2026-11-22T00:00:00Z');
    assert.equal(ageBand('1960-05-05', now), '65-69');
    assert.equal(ageBand('1961-11-23', now), '60-64', 'birthday not yet reached');
    assert.equal(ageBand('2030-01-01', now), undefined);
  });

  it('pseudonymizes ids and references alike, so links survive and names do not', () => {
    const keys = { now: new Date(), pseudonym: (v: string) => `h(${v})` };
    const plan = maskPlan('Observation', 'research', new Map(), DEFAULT_MASKING_RULES);
    const { resource, changed } = maskResource(
      {
        resourceType: 'Observation',
        id: 'o1',
        status: 'final',
        code: { text: 'x' },
        subject: { reference: 'Patient/p1', display: '张小明' },
        note: [{ text: 'call 13812345678' }],
      },
      plan,
      keys,
    );
    assert.deepEqual(resource, {
      resourceType: 'Observation',
      id: 'h(Observation/o1)',
      status: 'final',
      code: { text: 'x' },
      subject: { reference: 'Patient/h(Patient/p1)' },
    });
    assert.ok(changed.includes('references:pseudonym') && changed.includes('note:remove'));
  });

  it('masks only marked fields in clinical use and falls back to removal for odd data', () => {
    const plan = maskPlan(
      'Patient',
      'clinical',
      new Map([
        ['telecom', 'mask'],
        ['photo', 'hidden'],
        ['gender', 'hash'],
      ]),
      DEFAULT_MASKING_RULES,
    );
    const p = {
      resourceType: 'Patient',
      telecom: 'not-a-list',
      photo: [{}],
      gender: 'male',
      birthDate: '1990-01-01',
    } as unknown as Patient;
    const { resource } = maskResource(p, plan, { now: new Date(), pseudonym: (v) => `h(${v})` });
    assert.deepEqual(resource, { resourceType: 'Patient', telecom: [], gender: 'h(male)', birthDate: '1990-01-01' });
  });

  it('finds the fields a search parameter reads', () => {
    assert.deepEqual(fieldsOf("Patient.telecom.where(system='phone')"), ['telecom']);
    assert.deepEqual(fieldsOf('Patient.name | Patient.address'), ['name', 'address']);
    assert.deepEqual(fieldsOf('(Observation.value as Quantity)'), ['value']);
  });
});
