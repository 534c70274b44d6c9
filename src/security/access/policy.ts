// What an access policy and a masking rule set are, validated at every boundary (admin API,
// database, defaults). Policies are data: versioned documents, not code.
import { z } from 'zod';

export const PURPOSES = ['treatment', 'research', 'statistics', 'audit', 'emergency'] as const;
export type Purpose = (typeof PURPOSES)[number];

export const ACTIONS = ['read', 'vread', 'search', 'history', 'create', 'update', 'delete'] as const;
export type Action = (typeof ACTIONS)[number];

/** Most permissive first: combining rules of several roles keeps the most permissive. */
export const FIELD_RULES = ['allow', 'read-only', 'mask', 'hash', 'hidden'] as const;
export type FieldRule = (typeof FIELD_RULES)[number];

/**
 * Which rows a rule reaches: every record at the site, the records of patients the caller
 * cares for (encounter at their department or with them, general practitioner, a valid
 * grant), the caller's own record, or none individually (search only, de-identified).
 */
export const SCOPES = ['all', 'care', 'own', 'aggregate'] as const;
export type Scope = (typeof SCOPES)[number];

export const SCENARIOS = ['clinical', 'research', 'statistics'] as const;
export type Scenario = (typeof SCENARIOS)[number];

const name = z.string().regex(/^[a-z][a-z0-9-]{1,62}$/, 'lower-case letters, digits and "-", starting with a letter');
const fieldName = z
  .string()
  .regex(/^[a-z][A-Za-z0-9]*(\[x\])?$/, 'a top-level FHIR element name such as identifier or birthDate');
const resourceType = z.string().regex(/^([A-Z][A-Za-z]+|\*)$/, 'a FHIR resource type or *');

export const accessRuleSchema = z.strictObject({
  resourceTypes: z.array(resourceType).min(1),
  actions: z.array(z.enum(ACTIONS)).min(1),
  scope: z.enum(SCOPES),
  /** Field rules by top-level element; unlisted fields are allowed. */
  fields: z.record(fieldName, z.enum(FIELD_RULES)).optional(),
  /** ABAC: the rule applies only when every listed attribute of the user matches one value. */
  when: z
    .strictObject({
      department: z.array(z.string().min(1)).min(1).optional(),
      title: z.array(z.string().min(1)).min(1).optional(),
      site: z.array(z.string().min(1)).min(1).optional(),
    })
    .optional(),
});
export type AccessRule = z.infer<typeof accessRuleSchema>;

export const accessPolicySchema = z.strictObject({
  resourceType: z.literal('AccessPolicy'),
  name,
  description: z.string().max(2000).optional(),
  /** The role this policy is for (a user's roles pick their policies). */
  role: name,
  /** Purposes of use this role may claim; the first is the default. */
  purposes: z.array(z.enum(PURPOSES)).min(1),
  /** May start break-glass (emergency purpose) with a reason. */
  breakGlass: z.boolean().default(false),
  /** Attributes a user of this role must have (e.g. patient for the patient role). */
  requiredAttributes: z.array(z.string().min(1)).optional(),
  rules: z.array(accessRuleSchema),
});
export type AccessPolicy = z.infer<typeof accessPolicySchema>;

export const TRANSFORMS = [
  'keep',
  'remove',
  'partial-name',
  'partial-id',
  'partial-phone',
  'partial-address',
  'pseudonym',
  'birth-year',
  'age-band',
  'division-4',
  'city-only',
] as const;
export type Transform = (typeof TRANSFORMS)[number];

/** Field (or the pseudo-fields `id` and `references`) -> transform, per resource type or `*`. */
const typeRules = z.record(resourceType, z.record(z.string().regex(/^[a-z][A-Za-z0-9]*$/), z.enum(TRANSFORMS)));

export const maskingRulesSchema = z.strictObject({
  resourceType: z.literal('MaskingRules'),
  description: z.string().max(2000).optional(),
  /** How a field marked `mask` is masked in clinical use (partial masking). */
  clinical: typeRules,
  /** Applied to every response for purpose research (keyed pseudonyms per project). */
  research: typeRules,
  /** Applied to every response for purpose statistics (generalization). */
  statistics: typeRules,
});
export type MaskingRules = z.infer<typeof maskingRulesSchema>;

export function scenarioOf(purpose: Purpose): Scenario {
  switch (purpose) {
    case 'research':
      return 'research';
    case 'statistics':
      return 'statistics';
    case 'treatment':
    case 'audit':
    case 'emergency':
      return 'clinical';
  }
}

/** `path: rule` lines, like the region config's errors. */
export function describeIssues(error: z.ZodError): string[] {
  return error.issues.map((i) => {
    const path = i.path.map((p, n) => (typeof p === 'number' ? `[${p}]` : `${n ? '.' : ''}${String(p)}`)).join('');
    return `${path || '(document)'}: ${i.message}`;
  });
}
