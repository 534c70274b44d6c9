// The rules that make a resource's derived state (its current version and its conflicts) a
// pure function of its version set (DESIGN.md §4), so every site computes the same state
// whatever order versions arrive in. Nothing here reads a database.
//
// - Versions are totally ordered by (hlc, origin site); the current version is the greatest
//   (last writer wins, deletions included: a tombstone is a version like any other).
// - A version's writer saw its parent (the greatest version its site held, so every version
//   above the parent was certainly unseen). Two versions x < y are a conflict when y's parent
//   is below x: y superseded x without having seen it.
// - A conflict (x, y) is resolved by the least version whose parent is y or above: a write
//   made on top of the winner by a site that already held it.

/** What the rules need of a version. */
export interface VersionFacts {
  versionId: string;
  hlc: bigint;
  originSite: string;
  parentHlc: bigint | null;
  /** The parent's origin site; null for versions written before it was recorded (then HLC alone orders the parent). */
  parentOrigin: string | null;
}

/** Order of (hlc, origin site): negative, zero or positive. Site ids are ASCII, so code-unit order is byte order. */
export function compareVersions(
  a: Pick<VersionFacts, 'hlc' | 'originSite'>,
  b: Pick<VersionFacts, 'hlc' | 'originSite'>,
): number {
  if (a.hlc !== b.hlc) return a.hlc < b.hlc ? -1 : 1;
  return a.originSite < b.originSite ? -1 : a.originSite > b.originSite ? 1 : 0;
}

/**
 * Whether `y`'s parent is below `x` (so `y`'s writer cannot have held `x`); false for a parent
 * recorded by HLC alone at x's HLC.
 */
export function parentBelow(
  y: Pick<VersionFacts, 'parentHlc' | 'parentOrigin'>,
  x: Pick<VersionFacts, 'hlc' | 'originSite'>,
): boolean {
  if (y.parentHlc === null) return true;
  if (y.parentHlc !== x.hlc) return y.parentHlc < x.hlc;
  return y.parentOrigin !== null && y.parentOrigin < x.originSite;
}

/** For x < y: y superseded x without having seen it. */
export function isConflict(x: VersionFacts, y: VersionFacts): boolean {
  return compareVersions(x, y) < 0 && parentBelow(y, x);
}

/** Whether `r` was written on top of `y` or above (it resolves a conflict whose newer version is `y`). */
export function resolves(r: VersionFacts, y: Pick<VersionFacts, 'hlc' | 'originSite'>): boolean {
  return r.parentHlc !== null && !parentBelow(r, y);
}

export interface ConflictPair {
  /** The older version id of the pair. */
  a: string;
  b: string;
  /** The least version resolving it, if any. */
  resolution: string | null;
}

export interface DerivedState {
  current: string | undefined;
  conflicts: ConflictPair[];
}

/** The derived state of one resource from its whole version set (the reference the incremental apply path must equal). */
export function deriveState(versions: readonly VersionFacts[]): DerivedState {
  const sorted = [...versions].sort(compareVersions);
  const conflicts: ConflictPair[] = [];
  for (let j = 0; j < sorted.length; j++) {
    const y = sorted[j]!;
    for (let i = 0; i < j; i++) {
      const x = sorted[i]!;
      if (!parentBelow(y, x)) continue;
      const r = sorted.slice(j + 1).find((c) => resolves(c, y));
      conflicts.push({ a: x.versionId, b: y.versionId, resolution: r?.versionId ?? null });
    }
  }
  conflicts.sort((p, q) => (p.a === q.a ? cmpText(p.b, q.b) : cmpText(p.a, q.a)));
  return { current: sorted.at(-1)?.versionId, conflicts };
}

/** Byte-order comparison of ASCII text (never the locale's). */
export function cmpText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
