// Test helper: a record store for one site of the example region on the test backend
// (MEDMESH_TEST_DB=pglite|postgres), on a fresh database.
import { HybridClock } from '../clock/index.ts';
import { boundStoreFor, type Db } from '../db/index.ts';
import { openTestDb } from '../db/test-db.ts';
import { exampleRegion } from '../region/testing.ts';
import type { RecordsContext } from './context.ts';
import { loadFhirDefinitions } from './fhir-definitions.ts';
import { RecordStore } from './record-store.ts';
import { createR4Validator } from './r4-validator.ts';
import { SUPPORTED_TYPES } from './resource-types.ts';
import { buildSearchParamTable } from './search-params.ts';

export interface TestStore {
  store: RecordStore;
  ctx: RecordsContext;
  db: Db;
  /** Row counts of every table a write touches: equal before and after = nothing written. */
  counts(): Promise<Record<string, number>>;
  close(): Promise<void>;
}

export async function openTestStore(
  opts: { siteId?: string; db?: Db; wallMs?: () => number; leases?: RecordsContext['leases'] } = {},
): Promise<TestStore> {
  loadFhirDefinitions();
  const db = opts.db ?? (await openTestDb());
  const region = await exampleRegion();
  const siteId = opts.siteId ?? 'B';
  const clock = await HybridClock.start({
    store: boundStoreFor(db, siteId),
    maxOffsetMs: 500,
    ...(opts.wallMs ? { wallMs: opts.wallMs } : {}),
  });
  const ctx: RecordsContext = {
    db,
    region,
    siteId,
    clock,
    searchParams: buildSearchParamTable(),
    validator: createR4Validator(SUPPORTED_TYPES),
    ...(opts.leases ? { leases: opts.leases } : {}),
  };
  return {
    store: new RecordStore(ctx),
    ctx,
    db,
    counts: () => tableCounts(db),
    close: () => db.close(),
  };
}

export const WRITE_TABLES = [
  'resource_current',
  'resource_history',
  'search_token',
  'search_string',
  'search_date',
  'search_reference',
  'empi_patient',
  'outbox',
] as const;

export async function tableCounts(db: Db): Promise<Record<string, number>> {
  const { rows } = await db.query<Record<string, number>>(
    `SELECT ${WRITE_TABLES.map((t) => `(SELECT count(*)::int FROM ${t}) AS ${t}`).join(', ')}`,
  );
  return rows[0]!;
}
