// Home-shard placement of a patient (DESIGN.md §2): resident ID or insurance card
// division -> GeoHash of the home address -> managing organization -> receiving site's
// default. Every placement carries a human-readable reason that is stored with it.
import type { Address, Patient } from '@medplum/fhirtypes';
import { encodeGeohash } from './geohash.ts';
import type { Region } from './region.ts';
import { parseResidentId } from './resident-id.ts';

export type PlacementMethod = 'resident-id' | 'insurance-card' | 'geolocation' | 'managing-organization' | 'site-default';

export interface Placement {
  shard: string;
  method: PlacementMethod;
  reason: string;
}

export type PlacementError =
  { kind: 'invalid-identifier'; message: string; expression: string } | { kind: 'refused'; message: string };

export interface PlacementContext {
  region: Region;
  receivingSite: string;
  /** Home shard of an organization already placed, if known. */
  organizationShard: (organizationId: string) => Promise<string | undefined>;
}

export const GEOLOCATION_URL = 'http://hl7.org/fhir/StructureDefinition/geolocation';

export async function placePatient(
  patient: Patient,
  ctx: PlacementContext,
): Promise<{ ok: true; placement: Placement } | { ok: false; error: PlacementError }> {
  const { region } = ctx;
  const systems = region.config.identifierSystems;
  const notes: string[] = [];

  const identifiers = patient.identifier ?? [];
  const residentIdx = identifiers.findIndex((i) => i.system === systems.residentId && i.value);
  if (residentIdx >= 0) {
    const parsed = parseResidentId(identifiers[residentIdx]!.value!);
    if (!parsed.ok) {
      return {
        ok: false,
        error: {
          kind: 'invalid-identifier',
          message: parsed.error.message,
          expression: `Patient.identifier[${residentIdx}].value`,
        },
      };
    }
    const hit = region.shardForDivision(parsed.value.divisionCode);
    if (hit) {
      return {
        ok: true,
        placement: {
          shard: hit.shard,
          method: 'resident-id',
          reason: `resident ID division ${parsed.value.divisionCode} matched ${hit.matched}`,
        },
      };
    }
    notes.push(`resident ID division ${parsed.value.divisionCode} is outside the region`);
  }

  const card = identifiers.find((i) => i.system === systems.insuranceCard && i.value);
  const cardDivision = card?.value?.slice(0, 6);
  if (cardDivision && /^\d{6}$/.test(cardDivision)) {
    const hit = region.shardForDivision(cardDivision);
    if (hit)
      return {
        ok: true,
        placement: {
          shard: hit.shard,
          method: 'insurance-card',
          reason: `insurance card division ${cardDivision} matched ${hit.matched}`,
        },
      };
    notes.push(`insurance card division ${cardDivision} is outside the region`);
  }

  const geo = homeGeolocation(patient.address ?? []);
  if (geo) {
    const gh = encodeGeohash(geo.lat, geo.lon, 12);
    const hit = region.shardForGeohash(gh);
    if (hit)
      return {
        ok: true,
        placement: {
          shard: hit.shard,
          method: 'geolocation',
          reason: withNotes(`home address GeoHash ${gh} matched prefix ${hit.matched}`, notes),
        },
      };
    notes.push(`home address GeoHash ${gh} matches no shard`);
  }

  const orgRef = patient.managingOrganization?.reference;
  const orgId = orgRef?.startsWith('Organization/') ? orgRef.slice('Organization/'.length) : undefined;
  if (orgId) {
    const shard = await ctx.organizationShard(orgId);
    if (shard)
      return {
        ok: true,
        placement: {
          shard,
          method: 'managing-organization',
          reason: withNotes(`managing organization ${orgId} belongs to shard ${shard}`, notes),
        },
      };
    notes.push(`managing organization ${orgId} has no shard`);
  }

  const fallback = region.defaultShardFor(ctx.receivingSite);
  if (fallback === 'refuse') {
    return {
      ok: false,
      error: {
        kind: 'refused',
        message: withNotes(
          'cannot place the patient: no resident ID, insurance card, geolocated home address or managing organization ' +
            `maps to a shard, and site ${ctx.receivingSite} has no default shard`,
          notes,
        ),
      },
    };
  }
  return {
    ok: true,
    placement: {
      shard: fallback,
      method: 'site-default',
      reason: withNotes(`default shard of receiving site ${ctx.receivingSite}`, notes),
    },
  };
}

/** Geolocation of the home address (else the first geolocated address). */
export function homeGeolocation(addresses: readonly Address[]): { lat: number; lon: number } | undefined {
  const sorted = [...addresses].sort((a, b) => Number(b.use === 'home') - Number(a.use === 'home'));
  for (const addr of sorted) {
    const ext = addr.extension?.find((e) => e.url === GEOLOCATION_URL);
    const lat = ext?.extension?.find((e) => e.url === 'latitude')?.valueDecimal;
    const lon = ext?.extension?.find((e) => e.url === 'longitude')?.valueDecimal;
    if (typeof lat === 'number' && typeof lon === 'number' && Math.abs(lat) <= 90 && Math.abs(lon) <= 180) return { lat, lon };
  }
  return undefined;
}

function withNotes(reason: string, notes: readonly string[]): string {
  return notes.length ? `${reason} (${notes.join('; ')})` : reason;
}
