// Consistency verification between this site and one peer (DESIGN.md §5): compare bucket
// digests at a common HLC watermark, drill into the buckets that differ, name every
// divergent resource and version, and report an accuracy figure. Repair pulls the peer's
// copies through the normal apply path: versions missing here, and versions whose
// authoritative copy (their origin) is the peer. What only the peer can fix is listed for
// the peer's own run. The derived state (current version, conflicts) is compared too where
// both sites hold the same versions, and checked against this site's own versions; repair
// rebuilds it from the versions (records/derived-state.ts), never copies it.
import { packHlc } from '../clock/index.ts';
import type { Db } from '../db/index.ts';
import type { Region } from '../region/index.ts';
import { applyBatch, type ApplyContext } from './apply-batch.ts';
import type { Change } from './changefeed.ts';
import { recomputeResources, type ResourceRef } from '../records/index.ts';
import {
  bucketLeaves,
  bucketStates,
  computeDigests,
  DEFAULT_BUCKETS,
  readVersions,
  staleCurrentRows,
  type BucketDigest,
  type Leaf,
  type StateLeaf,
  type VersionRef,
} from './digests.ts';

/** The other side of a comparison: in-process or over the peer's HTTP API. */
export interface VerifyPeer {
  site: string;
  digests(q: { watermark: bigint; buckets: number }): Promise<BucketDigest[]>;
  leaves(q: { watermark: bigint; buckets: number }, keys: readonly string[]): Promise<Leaf[]>;
  /** The derived-state leaves of these buckets. */
  states(q: { watermark: bigint; buckets: number }, keys: readonly string[]): Promise<StateLeaf[]>;
  /** The peer's copies of these versions, as changes for this site. */
  versions(refs: readonly VersionRef[]): Promise<Change[]>;
}

export type DivergenceKind = 'missing-here' | 'missing-there' | 'differs';

export interface Divergence {
  resource: string;
  versions: Array<{ versionId: string; kind: DivergenceKind; origin: string }>;
}

/** A resource whose derived state differs although its versions agree, or disagrees with this site's own versions. */
export interface StateDivergence {
  resource: string;
  /** differs: the two sites disagree; stale-here: this site's current row is not its greatest version. */
  kind: 'differs' | 'stale-here';
  here?: { current: string; conflicts: string[] };
  there?: { current: string; conflicts: string[] };
}

export interface VerifyReport {
  site: string;
  peer: string;
  watermark: string;
  buckets: number;
  mismatchedBuckets: number;
  /** Resources both sites should hold (the union of what either holds in scope). */
  resources: number;
  divergent: Divergence[];
  /** Resources whose versions agree but whose current version or conflicts do not. */
  derivedState: StateDivergence[];
  /** Share of resources identical at both sites (versions and derived state), 0-1. */
  accuracy: number;
  repair?: { fetched: number; replaced: number; refused: number; leftForPeer: number; recomputed: number };
  /** With repair: what the check found before repairing (the rest of the report is after). */
  divergentBeforeRepair?: number;
}

/** Resources a report finds wrong, by their versions or their derived state (each once). */
export function divergentResources(r: Pick<VerifyReport, 'divergent' | 'derivedState'>): number {
  return new Set([...r.divergent.map((d) => d.resource), ...r.derivedState.map((d) => d.resource)]).size;
}

/** The watermark `graceMs` ago: changes younger than that may still be on the wire. */
export function watermarkBefore(graceMs: number, now = Date.now()): bigint {
  return packHlc(now - graceMs, 0);
}

/** The comparison as seen from a site's own database (also what its HTTP API serves to peers). */
export function localVerifyPeer(opts: { db: Db; region: Region; site: string; forSite: string }): VerifyPeer {
  const pair = [opts.site, opts.forSite] as const;
  return {
    site: opts.site,
    digests: (q) => computeDigests(opts.db, { region: opts.region, pair, ...q }),
    leaves: (q, keys) => bucketLeaves(opts.db, { region: opts.region, pair, ...q }, keys),
    states: (q, keys) => bucketStates(opts.db, { region: opts.region, pair, ...q }, keys),
    versions: (refs) => readVersions(opts.db, { region: opts.region, forSite: opts.forSite, refs }),
  };
}

const REPAIR_CHUNK = 200;

export async function verifyPair(opts: {
  apply: ApplyContext;
  peer: VerifyPeer;
  watermark: bigint;
  buckets?: number;
  repair?: boolean;
}): Promise<VerifyReport> {
  const { apply, peer } = opts;
  const q = { watermark: opts.watermark, buckets: opts.buckets ?? DEFAULT_BUCKETS };
  const here = localVerifyPeer({ db: apply.db, region: apply.region, site: apply.siteId, forSite: peer.site });
  const [mine, theirs] = await Promise.all([here.digests(q), peer.digests(q)]);
  const a = new Map(mine.map((d) => [d.key, d]));
  const b = new Map(theirs.map((d) => [d.key, d]));
  const keys = new Set([...a.keys(), ...b.keys()]);
  const mismatched = [...keys].filter((k) => a.get(k)?.digest !== b.get(k)?.digest);
  const differ = new Set(mismatched);
  let resources = [...keys].filter((k) => !differ.has(k)).reduce((n, k) => n + a.get(k)!.resources, 0);

  const divergent: Divergence[] = [];
  if (mismatched.length) {
    const [l, r] = await Promise.all([here.leaves(q, mismatched), peer.leaves(q, mismatched)]);
    const byResource = new Map<string, { here: Map<string, Leaf>; there: Map<string, Leaf> }>();
    const slot = (leaf: Leaf) => {
      const name = `${leaf.resourceType}/${leaf.id}`;
      let s = byResource.get(name);
      if (!s) byResource.set(name, (s = { here: new Map(), there: new Map() }));
      return s;
    };
    for (const leaf of l) slot(leaf).here.set(leaf.versionId, leaf);
    for (const leaf of r) slot(leaf).there.set(leaf.versionId, leaf);
    resources += byResource.size;
    for (const [resource, s] of byResource) {
      const versions: Divergence['versions'] = [];
      for (const v of new Set([...s.here.keys(), ...s.there.keys()])) {
        const [h, t] = [s.here.get(v), s.there.get(v)];
        const kind: DivergenceKind | undefined = !h
          ? 'missing-here'
          : !t
            ? 'missing-there'
            : h.leaf !== t.leaf
              ? 'differs'
              : undefined;
        if (kind) versions.push({ versionId: v, kind, origin: (h ?? t)!.originSite });
      }
      if (versions.length) divergent.push({ resource, versions: versions.sort((x, y) => (x.versionId < y.versionId ? -1 : 1)) });
    }
    divergent.sort((x, y) => (x.resource < y.resource ? -1 : 1));
  }

  const derivedState = await compareStates(
    apply,
    peer,
    q,
    [...keys].filter((k) => !differ.has(k) && a.get(k)?.state !== b.get(k)?.state),
  );

  const report: VerifyReport = {
    site: apply.siteId,
    peer: peer.site,
    watermark: opts.watermark.toString(16).padStart(16, '0'),
    buckets: keys.size,
    mismatchedBuckets: new Set([...mismatched, ...[...keys].filter((k) => a.get(k)?.state !== b.get(k)?.state)]).size,
    resources,
    divergent,
    derivedState,
    accuracy: resources === 0 ? 1 : Math.max(0, resources - divergentResources({ divergent, derivedState })) / resources,
  };
  if (opts.repair) {
    report.repair = { ...(await repair(apply, peer, divergent)), recomputed: 0 };
    const refs: ResourceRef[] = derivedState.map((d) => {
      const slash = d.resource.indexOf('/');
      return { resourceType: d.resource.slice(0, slash), id: d.resource.slice(slash + 1) };
    });
    if (refs.length)
      report.repair.recomputed = (await apply.db.transaction((tx) => recomputeResources(apply.records, tx, refs))).length;
  }
  return report;
}

/**
 * Derived state where the versions agree: buckets whose state digests differ, resource by
 * resource (a resource settled at one site only is still on its way, not divergent), and
 * this site's current rows that are not its greatest version, whatever the peer holds.
 */
async function compareStates(
  apply: ApplyContext,
  peer: VerifyPeer,
  q: { watermark: bigint; buckets: number },
  keys: readonly string[],
): Promise<StateDivergence[]> {
  const out = new Map<string, StateDivergence>();
  if (keys.length) {
    const here = localVerifyPeer({ db: apply.db, region: apply.region, site: apply.siteId, forSite: peer.site });
    const [l, r] = await Promise.all([here.states(q, keys), peer.states(q, keys)]);
    const theirs = new Map(r.map((s) => [`${s.resourceType}/${s.id}`, s]));
    for (const s of l) {
      const name = `${s.resourceType}/${s.id}`;
      const t = theirs.get(name);
      if (t && t.leaf !== s.leaf)
        out.set(name, {
          resource: name,
          kind: 'differs',
          here: { current: s.current, conflicts: s.conflicts },
          there: { current: t.current, conflicts: t.conflicts },
        });
    }
  }
  for (const s of await staleCurrentRows(apply.db)) {
    const name = `${s.resourceType}/${s.id}`;
    if (!out.has(name)) out.set(name, { resource: name, kind: 'stale-here' });
  }
  return [...out.values()].sort((x, y) => (x.resource < y.resource ? -1 : 1));
}

/** Pulls what this site should take from the peer and applies it as a repair. */
async function repair(
  apply: ApplyContext,
  peer: VerifyPeer,
  divergent: readonly Divergence[],
): Promise<Omit<NonNullable<VerifyReport['repair']>, 'recomputed'>> {
  const take: VersionRef[] = [];
  let leftForPeer = 0;
  for (const d of divergent) {
    const slash = d.resource.indexOf('/');
    const [resourceType, id] = [d.resource.slice(0, slash), d.resource.slice(slash + 1)];
    for (const v of d.versions) {
      if (v.kind === 'missing-here' || (v.kind === 'differs' && v.origin === peer.site))
        take.push({ resourceType, id, versionId: v.versionId });
      else leftForPeer++; // missing there, or the authoritative copy is here or at a third site
    }
  }
  const result = { fetched: 0, replaced: 0, refused: 0, leftForPeer };
  for (let i = 0; i < take.length; i += REPAIR_CHUNK) {
    const changes = await peer.versions(take.slice(i, i + REPAIR_CHUNK));
    const r = await applyBatch(apply, { peer: peer.site, changes, repair: true });
    result.fetched += r.applied;
    result.replaced += r.replaced ?? 0;
    result.refused += r.rejected.length + r.parked.length;
  }
  return result;
}
