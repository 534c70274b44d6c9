// Consistency digests (DESIGN.md §5): every version a pair of sites should both hold, up to
// a common HLC watermark, folded into buckets per (shard, resource type, hash bucket of the
// resource id). Each version is an SM3 leaf over what makes it that version; a bucket's
// digest is SM3 over its version count and the sum of its leaves (mod 2^256), so the rows
// can be read in the database's own index order, whatever its collation, and two sites
// agree exactly when they hold the same versions with the same content.
// Beside the versions, each bucket digests the resources' derived state (current version
// and conflicts with their resolutions) where it is settled below the watermark: a pure
// function of the versions, so two sites holding the same versions must agree on it too.
import type { Resource } from '@medplum/fhirtypes';
import { sm3 } from '../security/crypto/index.ts';
import type { Queryable } from '../db/index.ts';
import type { DataClass, Region } from '../region/index.ts';
import type { Change } from './changefeed.ts';

export interface DigestScope {
  region: Region;
  /** The two sites compared: only what both may hold counts. */
  pair: readonly [string, string];
  /** Versions with an HLC at or below it (both sites fix the same one). */
  watermark: bigint;
  /** Buckets per (shard, type): 1-256 (default 64). */
  buckets?: number;
}

export interface BucketDigest {
  /** `${shard or "-"}|${resourceType}|${bucket}` */
  key: string;
  versions: number;
  resources: number;
  digest: string;
  /** Digest of the derived state of the bucket's resources whose current version is at or below the watermark. */
  state: string;
}

/** One resource's derived state as a leaf of its bucket (what drill-down compares). */
export interface StateLeaf {
  key: string;
  resourceType: string;
  id: string;
  current: string;
  /** `a|b|resolution` per conflict, in byte order. */
  conflicts: string[];
  leaf: string;
}

/** One version as a leaf of its bucket (what drill-down compares). */
export interface Leaf {
  key: string;
  resourceType: string;
  id: string;
  versionId: string;
  originSite: string;
  leaf: string;
}

interface Row {
  resource_type: string;
  id: string;
  version_id: string;
  origin_site: string;
  shard: string | null;
  data_class: DataClass;
  deleted: boolean;
  content: string | null;
}

const PAGE = 2000;
const MOD = 1n << 256n;
const enc = new TextEncoder();

export const DEFAULT_BUCKETS = 64;

export function bucketKey(shard: string | null, resourceType: string, id: string, buckets: number): string {
  return `${shard ?? '-'}|${resourceType}|${sm3(enc.encode(`${resourceType}/${id}`))[0]! % buckets}`;
}

function leafOf(r: Row): Buffer {
  return sm3(
    enc.encode([r.resource_type, r.id, r.version_id, r.origin_site, r.deleted ? '1' : '0', r.content ?? ''].join('\u0000')),
  );
}

/** Every version in scope, in index order, a page at a time (memory stays bounded). */
async function* versionsInScope(
  q: Queryable,
  scope: DigestScope,
  only?: { shard: string | null; resourceType: string },
): AsyncGenerator<Row> {
  const [a, b] = scope.pair;
  let after: [string, string, string] | undefined;
  for (;;) {
    const params: unknown[] = [scope.watermark];
    let where = 'hlc <= $1';
    if (only) {
      params.push(only.resourceType, only.shard);
      where += ` AND resource_type = $2 AND shard IS NOT DISTINCT FROM $3`;
    }
    if (after) {
      params.push(...after);
      const n = params.length;
      where += ` AND (resource_type, id, version_id) > ($${n - 2}, $${n - 1}, $${n})`;
    }
    const { rows } = await q.query<Row>(
      `SELECT resource_type, id, version_id, origin_site, shard, data_class, deleted, content::text AS content
         FROM resource_history WHERE ${where} ORDER BY resource_type, id, version_id LIMIT ${PAGE}`,
      params,
    );
    for (const r of rows)
      if (scope.region.mayHold(a, r.data_class, r.shard) && scope.region.mayHold(b, r.data_class, r.shard)) yield r;
    if (rows.length < PAGE) return;
    const last = rows.at(-1)!;
    after = [last.resource_type, last.id, last.version_id];
  }
}

interface StateRow {
  resource_type: string;
  id: string;
  version_id: string;
  deleted: boolean;
  shard: string | null;
  data_class: DataClass;
  conflicts: string;
}

/** Every settled derived state in scope (current version at or below the watermark), a page at a time. */
async function* statesInScope(
  q: Queryable,
  scope: DigestScope,
  only?: { shard: string | null; resourceType: string },
): AsyncGenerator<StateRow> {
  const [a, b] = scope.pair;
  let after: [string, string] | undefined;
  for (;;) {
    const params: unknown[] = [scope.watermark];
    let where = 'c.hlc <= $1';
    if (only) {
      params.push(only.resourceType, only.shard);
      where += ` AND c.resource_type = $2 AND c.shard IS NOT DISTINCT FROM $3`;
    }
    if (after) {
      params.push(...after);
      const n = params.length;
      where += ` AND (c.resource_type, c.id) > ($${n - 1}, $${n})`;
    }
    const { rows } = await q.query<StateRow>(
      `SELECT c.resource_type, c.id, c.version_id, c.deleted, c.shard, c.data_class,
              coalesce((SELECT string_agg(rc.version_a || '|' || rc.version_b || '|' || coalesce(rc.resolution_version, ''), ','
                                          ORDER BY rc.version_a COLLATE "C", rc.version_b COLLATE "C")
                          FROM resource_conflict rc WHERE rc.resource_type = c.resource_type AND rc.id = c.id), '') AS conflicts
         FROM resource_current c WHERE ${where} ORDER BY c.resource_type, c.id LIMIT ${PAGE}`,
      params,
    );
    for (const r of rows)
      if (scope.region.mayHold(a, r.data_class, r.shard) && scope.region.mayHold(b, r.data_class, r.shard)) yield r;
    if (rows.length < PAGE) return;
    const last = rows.at(-1)!;
    after = [last.resource_type, last.id];
  }
}

function stateLeafOf(r: StateRow): Buffer {
  return sm3(enc.encode([r.resource_type, r.id, r.version_id, r.deleted ? '1' : '0', r.conflicts].join('\u0000')));
}

const fold = (n: number, sum: bigint) => sm3(enc.encode(`${n}|${sum.toString(16)}`)).toString('hex');
const addLeaf = (sum: bigint, leaf: Buffer) => (sum + BigInt(`0x${leaf.toString('hex')}`)) % MOD;

/** The bucket digests of this site's copy, sorted by key. */
export async function computeDigests(q: Queryable, scope: DigestScope): Promise<BucketDigest[]> {
  const buckets = scope.buckets ?? DEFAULT_BUCKETS;
  type Acc = { versions: number; resources: number; sum: bigint; lastId: string; states: number; stateSum: bigint };
  const acc = new Map<string, Acc>();
  const slot = (key: string): Acc => {
    let b = acc.get(key);
    if (!b) acc.set(key, (b = { versions: 0, resources: 0, sum: 0n, lastId: '', states: 0, stateSum: 0n }));
    return b;
  };
  for await (const r of versionsInScope(q, scope)) {
    const b = slot(bucketKey(r.shard, r.resource_type, r.id, buckets));
    b.versions++;
    if (b.lastId !== r.id) b.resources++; // versions of one resource are adjacent in index order
    b.lastId = r.id;
    b.sum = addLeaf(b.sum, leafOf(r));
  }
  for await (const r of statesInScope(q, scope)) {
    const b = slot(bucketKey(r.shard, r.resource_type, r.id, buckets));
    b.states++;
    b.stateSum = addLeaf(b.stateSum, stateLeafOf(r));
  }
  return [...acc.entries()]
    .map(([key, b]) => ({
      key,
      versions: b.versions,
      resources: b.resources,
      digest: fold(b.versions, b.sum),
      state: fold(b.states, b.stateSum),
    }))
    .sort((x, y) => (x.key < y.key ? -1 : x.key > y.key ? 1 : 0));
}

/** The derived-state leaves of the given buckets. */
export async function bucketStates(q: Queryable, scope: DigestScope, keys: readonly string[]): Promise<StateLeaf[]> {
  const buckets = scope.buckets ?? DEFAULT_BUCKETS;
  const wanted = new Set(keys);
  const out: StateLeaf[] = [];
  for (const only of groupsOf(keys)) {
    for await (const r of statesInScope(q, scope, only)) {
      const key = bucketKey(r.shard, r.resource_type, r.id, buckets);
      if (wanted.has(key))
        out.push({
          key,
          resourceType: r.resource_type,
          id: r.id,
          current: `${r.version_id}${r.deleted ? ' (deleted)' : ''}`,
          conflicts: r.conflicts ? r.conflicts.split(',') : [],
          leaf: stateLeafOf(r).toString('hex'),
        });
    }
  }
  return out;
}

/** The (shard, resource type) groups of bucket keys. */
function groupsOf(keys: readonly string[]): Array<{ shard: string | null; resourceType: string }> {
  const groups = new Map<string, { shard: string | null; resourceType: string }>();
  for (const k of keys) {
    const [shard, resourceType] = k.split('|') as [string, string];
    groups.set(`${shard}|${resourceType}`, { shard: shard === '-' ? null : shard, resourceType });
  }
  return [...groups.values()];
}

/**
 * Resources whose current row is not their greatest version (a site's own derived state
 * disagreeing with its own versions: no peer is needed to see it).
 */
export async function staleCurrentRows(q: Queryable, limit = 1000): Promise<Array<{ resourceType: string; id: string }>> {
  const { rows } = await q.query<{ resource_type: string; id: string }>(
    `SELECT c.resource_type, c.id FROM resource_current c
      WHERE NOT EXISTS (SELECT 1 FROM resource_history h
                         WHERE h.resource_type = c.resource_type AND h.id = c.id AND h.version_id = c.version_id)
         OR EXISTS (SELECT 1 FROM resource_history h WHERE h.resource_type = c.resource_type AND h.id = c.id
                       AND (h.hlc > c.hlc OR (h.hlc = c.hlc AND h.origin_site COLLATE "C" > c.origin_site COLLATE "C")))
      LIMIT $1`,
    [limit],
  );
  return rows.map((r) => ({ resourceType: r.resource_type, id: r.id }));
}

/** The leaves of the given buckets (drill-down into buckets whose digests differ). */
export async function bucketLeaves(q: Queryable, scope: DigestScope, keys: readonly string[]): Promise<Leaf[]> {
  const buckets = scope.buckets ?? DEFAULT_BUCKETS;
  const wanted = new Set(keys);
  const out: Leaf[] = [];
  for (const only of groupsOf(keys)) {
    for await (const r of versionsInScope(q, scope, only)) {
      const key = bucketKey(r.shard, r.resource_type, r.id, buckets);
      if (wanted.has(key))
        out.push({
          key,
          resourceType: r.resource_type,
          id: r.id,
          versionId: r.version_id,
          originSite: r.origin_site,
          leaf: leafOf(r).toString('hex'),
        });
    }
  }
  return out;
}

export interface VersionRef {
  resourceType: string;
  id: string;
  versionId: string;
}

interface VersionRow {
  resource_type: string;
  id: string;
  version_id: string;
  hlc: bigint;
  parent_hlc: bigint | null;
  parent_origin: string | null;
  origin_site: string;
  epoch: bigint;
  shard: string | null;
  data_class: DataClass;
  deleted: boolean;
  content: Resource | null;
}

/**
 * This site's copies of the given versions as changes for `forSite` (what repair applies
 * there), only those `forSite` may hold. The change id is derived from the version, so a
 * repair delivered twice is applied once.
 */
export async function readVersions(
  q: Queryable,
  opts: { region: Region; forSite: string; refs: readonly VersionRef[] },
): Promise<Change[]> {
  if (opts.refs.length === 0) return [];
  const { rows } = await q.query<VersionRow>(
    `SELECT h.resource_type, h.id, h.version_id, h.hlc, h.parent_hlc, h.parent_origin, h.origin_site, h.epoch, h.shard,
            h.data_class, h.deleted, h.content
       FROM resource_history h JOIN unnest($1::text[], $2::text[], $3::text[]) AS r(t, i, v)
         ON h.resource_type = r.t AND h.id = r.i AND h.version_id = r.v`,
    [opts.refs.map((r) => r.resourceType), opts.refs.map((r) => r.id), opts.refs.map((r) => r.versionId)],
  );
  return rows
    .filter((r) => opts.region.mayHold(opts.forSite, r.data_class, r.shard))
    .map((r) => ({
      changeId: repairChangeId(r.resource_type, r.id, r.version_id),
      originSite: r.origin_site,
      hlc: BigInt(r.hlc),
      parentHlc: r.parent_hlc === null ? null : BigInt(r.parent_hlc),
      parentOrigin: r.parent_origin,
      epoch: BigInt(r.epoch),
      shard: r.shard,
      dataClass: r.data_class,
      resourceType: r.resource_type,
      resourceId: r.id,
      versionId: r.version_id,
      deleted: r.deleted,
      payload: r.content,
    }));
}

/** A UUID (version 8, RFC 9562) derived from the version it repairs. */
export function repairChangeId(resourceType: string, id: string, versionId: string): string {
  const h = sm3(enc.encode(`medmesh-repair|${resourceType}|${id}|${versionId}`)).subarray(0, 16);
  h[6] = (h[6]! & 0x0f) | 0x80;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}
