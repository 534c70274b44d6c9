import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { sm3 } from '../crypto/index.ts';
import {
  consistencyProof,
  consistencyProofWith,
  EMPTY_ROOT,
  FrontierBuilder,
  frontierNodes,
  inclusionProof,
  leafHash,
  nodeHash,
  rootOf,
  verifyConsistency,
  verifyInclusion,
} from './merkle.ts';

/** The recursive MTH exactly as RFC 9162 §2.1.1 defines it. */
function mth(leaves: Buffer[]): Buffer {
  if (leaves.length === 0) return sm3(Buffer.alloc(0));
  if (leaves.length === 1) return leaves[0]!;
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return nodeHash(mth(leaves.slice(0, k)), mth(leaves.slice(k)));
}

const leaves = Array.from({ length: 70 }, (_, i) => leafHash(Buffer.from(`entry ${i}`)));

describe('RFC 9162 Merkle tree over SM3', () => {
  it('domain-separates leaves and nodes', () => {
    assert.deepEqual(leafHash(Buffer.from('a')), sm3(Buffer.from([0]), Buffer.from('a')));
    assert.notDeepEqual(
      leafHash(Buffer.concat([leafHash(Buffer.from('a')), leafHash(Buffer.from('b'))])),
      nodeHash(leafHash(Buffer.from('a')), leafHash(Buffer.from('b'))),
    );
    assert.deepEqual(rootOf([]), EMPTY_ROOT);
  });

  it('computes the same root as the recursive definition for every size', () => {
    for (let n = 0; n <= leaves.length; n++) assert.deepEqual(rootOf(leaves, n), mth(leaves.slice(0, n)), `n=${n}`);
  });

  it('proves and verifies inclusion of every leaf in every tree size, and rejects wrong proofs', () => {
    for (let n = 1; n <= 40; n++) {
      const root = rootOf(leaves, n);
      for (let m = 0; m < n; m++) {
        const proof = inclusionProof(leaves, m, n);
        assert.ok(verifyInclusion(leaves[m]!, m, n, proof, root), `m=${m} n=${n}`);
        assert.ok(!verifyInclusion(leaves[(m + 1) % 70]!, m, n, proof, root), 'another leaf');
        if (proof.length) {
          const bad = proof.map((p, i) => (i === 0 ? leafHash(p) : p));
          assert.ok(!verifyInclusion(leaves[m]!, m, n, bad, root), 'tampered proof');
        }
      }
    }
  });

  it('proves and verifies consistency between every pair of sizes, and rejects a rewritten history', () => {
    for (let n = 1; n <= 40; n++) {
      for (let m = 1; m <= n; m++) {
        const proof = consistencyProof(leaves, m, n);
        assert.ok(verifyConsistency(m, n, rootOf(leaves, m), rootOf(leaves, n), proof), `m=${m} n=${n}`);
        if (m < n) {
          const rewritten = [...leaves];
          rewritten[m - 1] = leafHash(Buffer.from('forged'));
          assert.ok(!verifyConsistency(m, n, rootOf(leaves, m), rootOf(rewritten, n), proof), `rewritten m=${m} n=${n}`);
        }
      }
    }
  });

  it('gives the same consistency proof from a checkpoint frontier and the newer leaves only, for every base <= m <= n', () => {
    // What a log answers peers with on every cosigning round (it reads only what came after the checkpoint).
    for (let n = 1; n <= 40; n++) {
      for (let m = 1; m <= n; m++) {
        for (let base = 0; base <= m; base++) {
          const tree = new FrontierBuilder();
          for (const l of leaves.slice(0, base)) tree.push(l);
          const mthOf = frontierNodes([{ size: base, frontier: tree.frontier() }], base, leaves.slice(base, n));
          assert.deepEqual(consistencyProofWith(mthOf, m, n), consistencyProof(leaves, m, n), `base=${base} m=${m} n=${n}`);
        }
      }
    }
    // Leaves before the frontier that a proof would need are not invented.
    assert.throws(() => frontierNodes([], 4, leaves.slice(4, 8))(0, 4), RangeError);
  });
});
