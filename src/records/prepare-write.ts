// Everything a write must establish before it touches a row: the type is served, the
// resource is valid R4, which patient and home shard it belongs to, and that this site
// may take the write (DESIGN.md §2: core data only on its shard's residency sites,
// written at the shard's active site).
import type { Organization, Resource } from '@medplum/fhirtypes';
import type { Queryable } from '../db/index.ts';
import { encodeGeohash, homeGeolocation, placePatient, type DataClass, type Placement } from '../region/index.ts';
import type { RecordsContext } from './context.ts';
import { fail, ok, type RecordError, type Result } from './errors.ts';
import { empiRecord, type EmpiRecord } from './home-lookup.ts';
import { isSupportedType, patientOf } from './resource-types.ts';

export const FHIR_ID = /^[A-Za-z0-9\-.]{1,64}$/;
export const HOME_SHARD_TAG = 'urn:medmesh:home-shard';

export interface PreparedWrite {
  resource: Resource;
  dataClass: DataClass;
  shard: string | null;
  patientId: string | null;
  /** Set when a new patient is placed: stored in the EMPI directory with the resource. */
  placement?: Placement;
}

/** Checks the body of a create or update against the URL. */
export function checkBody(body: unknown, urlType: string, urlId?: string): Result<Resource> {
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    return fail('bad-request', 'body must be a JSON object (a FHIR resource)', { code: 'structure' });
  const rt = (body as { resourceType?: unknown }).resourceType;
  if (typeof rt !== 'string')
    return fail('bad-request', 'resource has no resourceType', { code: 'required', expression: 'resourceType' });
  if (rt !== urlType)
    return fail('bad-request', `resourceType ${rt} does not match the URL's ${urlType}`, {
      code: 'invalid',
      expression: 'resourceType',
    });
  const id = (body as { id?: unknown }).id;
  if (urlId !== undefined) {
    if (id === undefined)
      return fail('bad-request', `resource id is missing; it must equal the URL's ${urlId}`, {
        code: 'required',
        expression: `${rt}.id`,
      });
    if (id !== urlId)
      return fail('bad-request', `resource id ${JSON.stringify(id)} does not match the URL's ${urlId}`, {
        code: 'invalid',
        expression: `${rt}.id`,
      });
  }
  return ok(body as Resource);
}

export async function prepareWrite(
  ctx: RecordsContext,
  q: Queryable,
  input: Resource,
  /** The current row for an update, undefined for an upsert of an unknown id, 'new' for a fresh id. */
  existing: { shard: string | null; patientId: string | null } | undefined | 'new',
  /** How to find a patient's home: by default one query through `q`; plain writes pass the batched lookup. */
  home: (patientId: string) => Promise<EmpiRecord | undefined> = (id) => empiRecord(q, id),
  /**
   * The access layer's row check on the patient the write belongs to (null: none). It runs as
   * soon as that patient is known, before anything is said about the patient's home: a write
   * the caller may not make is a plain refusal, never a 421 naming the patient's shard and site
   * or a 422 saying whether the patient exists here.
   */
  admit: (patientId: string | null) => Promise<Result<void>> = () => Promise.resolve(ok(undefined)),
): Promise<Result<PreparedWrite>> {
  let resource = input;
  if (!isSupportedType(resource.resourceType))
    return fail('not-found', `resource type ${resource.resourceType} is not served here`, { code: 'not-supported' });
  const valid = ctx.validator.validate(resource);
  if (!valid.ok) return valid;
  const dataClass = ctx.region.classOf(resource.resourceType);

  let shard: string | null = null;
  let patientId: string | null = null;
  let placement: Placement | undefined;
  if (resource.resourceType === 'Patient') {
    patientId = resource.id ?? null;
    // Placement runs on every write so an invalid resident ID is refused; the home shard
    // itself is sticky once the patient exists (moving a patient is a separate operation).
    const placed = await placePatient(resource, {
      region: ctx.region,
      receivingSite: ctx.siteId,
      organizationShard: (id) => organizationShard(ctx, q, id),
    });
    if (!placed.ok) {
      const e = placed.error;
      return e.kind === 'invalid-identifier'
        ? fail('invalid', e.message, { code: 'value', expression: e.expression })
        : fail('invalid', e.message, { code: 'business-rule' });
    }
    const admitted = await admit(patientId);
    if (!admitted.ok) return admitted;
    const known = patientId && existing !== 'new' ? await home(patientId) : undefined;
    if (known) shard = known.shard;
    else {
      shard = placed.placement.shard;
      placement = placed.placement;
    }
    resource = withHomeShardTag(resource, known ?? placed.placement);
  } else {
    const link = patientOf(resource);
    const admitted = await admit(link.patientId ?? (existing && existing !== 'new' ? existing.patientId : null));
    if (!admitted.ok) return admitted;
    if (link.patientId) {
      const homeShard = (await home(link.patientId))?.shard;
      if (!homeShard)
        return fail('invalid', `Patient/${link.patientId} is not known at site ${ctx.siteId}`, {
          code: 'not-found',
          ...(link.expression ? { expression: link.expression } : {}),
        });
      shard = homeShard;
      patientId = link.patientId;
    } else if (existing && existing !== 'new') {
      ({ shard, patientId } = existing);
    }
  }

  const residency = checkResidency(ctx, dataClass, shard);
  if (!residency.ok) return residency;
  return ok({ resource, dataClass, shard, patientId, ...(placement ? { placement } : {}) });
}

export function checkResidency(ctx: RecordsContext, dataClass: DataClass, shard: string | null): Result<void> {
  const { region, siteId } = ctx;
  if (shard !== null && dataClass === 'core') {
    // Under leases the holder decides; while none is known the statement's fence answers.
    const active = ctx.leases ? ctx.leases.activeSiteFor(shard) : region.activeSiteFor(shard);
    if (active && active !== siteId) {
      // Where this node reaches that site (the demo and tests run sites elsewhere than the region file says).
      const url = ctx.siteUrl?.(active) ?? region.site(active)?.url;
      const error: RecordError = {
        kind: 'misdirected',
        issues: [
          {
            message: `shard ${shard} is written at site ${active}${url ? ` (${url})` : ''}, not at site ${siteId}; retry there`,
            code: 'business-rule',
          },
        ],
        ...(url ? { activeSite: { id: active, url } } : {}),
      };
      return { ok: false, error };
    }
  }
  if (!region.mayHold(siteId, dataClass, shard)) {
    return fail('invalid', `site ${siteId} may not hold ${dataClass} data${shard ? ` of shard ${shard}` : ''}`, {
      code: 'business-rule',
    });
  }
  return ok(undefined);
}

async function organizationShard(ctx: RecordsContext, q: Queryable, id: string): Promise<string | undefined> {
  const { rows } = await q.query<{ content: Organization | null }>(
    "SELECT content FROM resource_current WHERE resource_type = 'Organization' AND id = $1 AND NOT deleted",
    [id],
  );
  const geo = homeGeolocation(rows[0]?.content?.address ?? []);
  return geo ? ctx.region.shardForGeohash(encodeGeohash(geo.lat, geo.lon))?.shard : undefined;
}

export function withHomeShardTag(patient: Resource, placement: { shard: string; reason: string }): Resource {
  const tags = (patient.meta?.tag ?? []).filter((t) => t.system !== HOME_SHARD_TAG);
  return {
    ...patient,
    meta: { ...patient.meta, tag: [...tags, { system: HOME_SHARD_TAG, code: placement.shard, display: placement.reason }] },
  };
}
