// RFC 9162 (Certificate Transparency 2.0) Merkle tree, with SM3 as the hash:
//   leaf = SM3(0x00 || entry), node = SM3(0x01 || left || right)
// MTH over n leaves splits at k, the largest power of two smaller than n (§2.1.1).
// sm3.ts, not the crypto index: the verification worker imports this module and starts faster.
import { sm3 } from '../crypto/sm3.ts';

const LEAF = Buffer.from([0]);
const NODE = Buffer.from([1]);
export const EMPTY_ROOT = sm3(Buffer.alloc(0));

export function leafHash(entry: Uint8Array): Buffer {
  return sm3(Buffer.concat([LEAF, entry]));
}

/** The leaf hash of bytes that already start with the leaf prefix 0x00 (no copy). */
export function leafHashOfPrefixed(prefixed: Uint8Array): Buffer {
  if (prefixed[0] !== LEAF[0]) throw new RangeError('not a leaf-prefixed entry');
  return sm3(prefixed);
}

export function nodeHash(left: Uint8Array, right: Uint8Array): Buffer {
  return sm3(Buffer.concat([NODE, left, right]));
}

function splitPoint(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

/** Root of the leaves [0, n): an O(n) stack fold equal to the recursive MTH. */
export function rootOf(leaves: readonly Uint8Array[], n = leaves.length): Buffer {
  if (n === 0) return EMPTY_ROOT;
  const stack: Array<{ hash: Buffer; size: number }> = [];
  for (let i = 0; i < n; i++) {
    let node: { hash: Buffer; size: number } = { hash: Buffer.from(leaves[i]!), size: 1 };
    while (stack.length && stack[stack.length - 1]!.size === node.size) {
      const left = stack.pop()!;
      node = { hash: nodeHash(left.hash, node.hash), size: left.size * 2 };
    }
    stack.push(node);
  }
  // Right-to-left fold of the remaining perfect subtrees gives the RFC's unbalanced shape.
  let acc: Buffer = stack.pop()!.hash;
  while (stack.length) acc = nodeHash(stack.pop()!.hash, acc);
  return acc;
}

/** Inclusion proof of leaf m in the tree of the first n leaves (RFC 9162 §2.1.3.1). */
export function inclusionProof(leaves: readonly Uint8Array[], m: number, n = leaves.length): Buffer[] {
  if (m < 0 || m >= n || n > leaves.length) throw new RangeError(`no leaf ${m} in a tree of ${n}`);
  const path = (lo: number, hi: number, idx: number): Buffer[] => {
    const size = hi - lo;
    if (size === 1) return [];
    const k = splitPoint(size);
    return idx < k
      ? [...path(lo, lo + k, idx), rootOf(leaves.slice(lo + k, hi))]
      : [...path(lo + k, hi, idx - k), rootOf(leaves.slice(lo, lo + k))];
  };
  return path(0, n, m);
}

/** RFC 9162 §2.1.3.2 verification: does `proof` place `leaf` at index m of a tree with `root`? */
export function verifyInclusion(leaf: Uint8Array, m: number, n: number, proof: readonly Uint8Array[], root: Uint8Array): boolean {
  if (m < 0 || m >= n) return false;
  let fn = m;
  let sn = n - 1;
  let r: Buffer = Buffer.from(leaf);
  for (const p of proof) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      r = nodeHash(p, r);
      while (fn % 2 === 0 && fn !== 0) {
        fn >>= 1;
        sn >>= 1;
      }
    } else r = nodeHash(r, p);
    fn >>= 1;
    sn >>= 1;
  }
  return sn === 0 && r.equals(root);
}

/** Consistency proof between the trees of the first m and n leaves (RFC 9162 §2.1.4.1). */
export function consistencyProof(leaves: readonly Uint8Array[], m: number, n = leaves.length): Buffer[] {
  if (m < 1 || m > n || n > leaves.length) throw new RangeError(`no consistency proof from ${m} to ${n}`);
  return consistencyProofWith((lo, hi) => rootOf(leaves.slice(lo, hi)), m, n);
}

/**
 * The same proof over a source of subtree hashes: `mth(lo, hi)` is the Merkle tree hash of the
 * leaves [lo, hi). Lets a log answer from a checkpoint's frontier plus the newer leaves only.
 */
export function consistencyProofWith(mth: (lo: number, hi: number) => Buffer, m: number, n: number): Buffer[] {
  if (m < 1 || m > n) throw new RangeError(`no consistency proof from ${m} to ${n}`);
  const subproof = (lo: number, hi: number, mm: number, whole: boolean): Buffer[] => {
    const size = hi - lo;
    if (mm === size) return whole ? [] : [mth(lo, hi)];
    const k = splitPoint(size);
    return mm <= k
      ? [...subproof(lo, lo + k, mm, whole), mth(lo + k, hi)]
      : [...subproof(lo + k, hi, mm - k, false), mth(lo, lo + k)];
  };
  return m === n ? [] : subproof(0, n, m, true);
}

/**
 * Subtree hashes for `consistencyProofWith` from the frontiers of earlier trees (each tree's
 * perfect subtrees, largest first, as checkpoints store them) and the leaves from `base` on. A
 * subtree neither known nor reachable from those throws a RangeError.
 */
export function frontierNodes(
  frontiers: ReadonlyArray<{ size: number; frontier: readonly Buffer[] }>,
  base: number,
  after: readonly Uint8Array[],
): (lo: number, hi: number) => Buffer {
  const known = new Map<string, Buffer>();
  for (const f of frontiers) {
    let lo = 0;
    for (const h of f.frontier) {
      if (f.size - lo <= 0) break; // a frontier longer than its size says: the rest is ignored (and the proof fails)
      const size = 2 ** Math.floor(Math.log2(f.size - lo));
      known.set(`${lo}:${lo + size}`, h);
      lo += size;
    }
  }
  const mth = (a: number, b: number): Buffer => {
    const hit = known.get(`${a}:${b}`);
    if (hit) return hit;
    if (a >= base) {
      if (b - base > after.length) throw new RangeError(`leaves up to ${b} are not available`);
      return rootOf(after.slice(a - base, b - base));
    }
    if (b - a === 1) throw new RangeError(`leaf ${a} is neither stored nor under a known subtree`);
    const k = splitPoint(b - a);
    return nodeHash(mth(a, a + k), mth(a + k, b));
  };
  return mth;
}

/** RFC 9162 §2.1.4.2 verification of a consistency proof between two roots. */
export function verifyConsistency(
  m: number,
  n: number,
  firstRoot: Uint8Array,
  secondRoot: Uint8Array,
  proof: readonly Uint8Array[],
): boolean {
  if (m < 1 || m > n) return false;
  if (m === n) return proof.length === 0 && Buffer.from(firstRoot).equals(Buffer.from(secondRoot));
  if (proof.length === 0) return false;
  const path = isPowerOfTwo(m) ? [Buffer.from(firstRoot), ...proof] : [...proof];
  let fn = m - 1;
  let sn = n - 1;
  while (fn % 2 === 1) {
    fn >>= 1;
    sn >>= 1;
  }
  let fr: Buffer = Buffer.from(path[0]!);
  let sr: Buffer = Buffer.from(path[0]!);
  for (const c of path.slice(1)) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      while (fn % 2 === 0 && fn !== 0) {
        fn >>= 1;
        sn >>= 1;
      }
    } else sr = nodeHash(sr, c);
    fn >>= 1;
    sn >>= 1;
  }
  return sn === 0 && fr.equals(Buffer.from(firstRoot)) && sr.equals(Buffer.from(secondRoot));
}

function isPowerOfTwo(x: number): boolean {
  return x > 0 && (x & (x - 1)) === 0;
}

export function rootOfFrontier(frontier: readonly Buffer[]): Buffer {
  if (frontier.length === 0) return EMPTY_ROOT;
  let acc: Buffer = frontier[frontier.length - 1]!;
  for (let i = frontier.length - 2; i >= 0; i--) acc = nodeHash(frontier[i]!, acc);
  return acc;
}

/** Incremental RFC 9162 root over a stream of leaf hashes (constant work per leaf, amortized). */
export class FrontierBuilder {
  readonly #hashes: Buffer[] = [];
  readonly #sizes: number[] = [];
  size = 0;

  constructor(frontier: readonly Buffer[] = [], size = 0) {
    let rest = size;
    for (const h of frontier) {
      const bit = 2 ** Math.floor(Math.log2(rest));
      this.#hashes.push(h);
      this.#sizes.push(bit);
      rest -= bit;
    }
    this.size = size;
  }

  push(leaf: Buffer): void {
    let hash = leaf;
    let size = 1;
    while (this.#sizes.length && this.#sizes[this.#sizes.length - 1] === size) {
      hash = nodeHash(this.#hashes.pop()!, hash);
      this.#sizes.pop();
      size *= 2;
    }
    this.#hashes.push(hash);
    this.#sizes.push(size);
    this.size++;
  }

  root(): Buffer {
    return rootOfFrontier(this.#hashes);
  }

  frontier(): Buffer[] {
    return [...this.#hashes];
  }
}
