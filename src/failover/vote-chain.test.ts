import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { canonicalBytes, sm3 } from '../security/crypto/index.ts';
import { chainHead, VoteChain, type VoteChainOptions, type VoteRefusalCode } from './vote-chain.ts';
import {
  GENESIS_PREV,
  operatorStatement,
  signOperatorRequest,
  signVote,
  voteBytes,
  voteHash,
  type Vote,
  type VoteBody,
  type VoteDraft,
} from './vote.ts';
import { testKey, wallAt } from './testing-votes.ts';

const witness = testKey('witness');
const operator = testKey('operator:op-li');
const opts: VoteChainOptions = {
  witnessKeys: (id) => (id === 'w1' ? witness.publicKey : undefined),
  operatorKeys: (id) => (id === 'op-li' ? operator.publicKey : undefined),
};
const P = (n: number) => n.toString(16).padStart(16, '0');

const grant: VoteBody = { kind: 'grant', shard: 'north', site: 'B', epoch: 1, detail: { position: P(100) } };
const summary: VoteBody = {
  kind: 'renew-summary',
  shard: 'north',
  site: 'B',
  epoch: 1,
  detail: { renewals: 7, position: P(200) },
};
const claim: VoteBody = {
  kind: 'claim',
  shard: 'north',
  site: 'C',
  epoch: 2,
  detail: { appliedPosition: P(190), holderPosition: P(200), lagMs: 0 },
};

/** The next vote after `after`, signed by `key` (the witness's unless forging). */
function next(after: readonly Vote[], body: VoteBody, o: { key?: typeof witness; witnessKey?: string } = {}): Vote {
  const head = chainHead(after);
  const draft: VoteDraft = {
    ...body,
    seq: head.seq + 1,
    prev: head.hash,
    at: wallAt(head.seq * 1000),
    witnessKey: o.witnessKey ?? 'w1',
  };
  return signVote(draft, o.key ?? witness);
}

function chainOf(...bodies: VoteBody[]): Vote[] {
  const votes: Vote[] = [];
  for (const b of bodies) votes.push(next(votes, b));
  return votes;
}

function refusedWith(chain: VoteChain, vote: unknown, code: VoteRefusalCode): void {
  const before = chain.head;
  const r = chain.append(vote);
  assert.equal(r.ok, false, `expected ${code}`);
  if (!r.ok) assert.equal(r.error.code, code, r.error.message);
  assert.deepEqual(chain.head, before, 'a refused vote changes nothing');
}

describe('vote format', () => {
  it('hashes and signs canonical JSON of every field but the signature', () => {
    const [v] = chainOf(grant);
    const expected = canonicalBytes({
      at: v!.at,
      detail: { position: P(100) },
      epoch: 1,
      format: 'medmesh-witness-vote/1',
      kind: 'grant',
      prev: GENESIS_PREV,
      seq: 1,
      shard: 'north',
      site: 'B',
      witnessKey: 'w1',
    });
    assert.deepEqual(voteBytes(v!), expected);
    assert.equal(
      voteBytes(v!).toString(),
      `{"at":"${v!.at}","detail":{"position":"${P(100)}"},"epoch":1,"format":"medmesh-witness-vote/1","kind":"grant",` +
        `"prev":"${GENESIS_PREV}","seq":1,"shard":"north","site":"B","witnessKey":"w1"}`,
    );
    assert.equal(voteHash(v!), sm3(expected).toString('hex'));
    // Field order and the signature do not change the bytes; any field does.
    const reordered = JSON.parse(JSON.stringify({ signature: 'AAAA', ...v, kind: 'grant' })) as Vote;
    assert.equal(voteHash(reordered), voteHash(v!));
    assert.notEqual(voteHash({ ...v!, epoch: 2 }), voteHash(v!));
  });

  it('accepts votes that went through JSON on the wire', () => {
    const votes = chainOf(grant, summary, claim);
    const r = VoteChain.verify(JSON.parse(JSON.stringify(votes)) as unknown[], opts);
    assert.ok(r.ok);
    assert.deepEqual(r.value.head, chainHead(votes));
  });
});

describe('VoteChain', () => {
  it('verifies a chain from genesis and keeps every shard’s epoch and holder', () => {
    const votes = chainOf(grant, summary, { ...grant, shard: 'south', site: 'C' }, claim);
    const r = VoteChain.verify(votes, opts);
    assert.ok(r.ok, r.ok ? '' : r.error.message);
    const chain = r.value;
    assert.equal(chain.length, 4);
    assert.deepEqual(chain.head, { seq: 4, hash: voteHash(votes[3]!) });
    assert.deepEqual(chain.head, chainHead(votes));
    assert.deepEqual(chainHead([]), { seq: 0, hash: GENESIS_PREV });
    assert.deepEqual(chain.shards(), [
      { shard: 'north', epoch: 2, holder: 'C', position: P(190) },
      { shard: 'south', epoch: 1, holder: 'C', position: P(100) },
    ]);
    assert.deepEqual(chain.votesAfter(2), votes.slice(2));
    // Each vote names its predecessor's hash.
    for (let i = 1; i < votes.length; i++) assert.equal(votes[i]!.prev, voteHash(votes[i - 1]!));
  });

  it('refuses a forged vote: another key, an unknown key id, or a field changed after signing', () => {
    const votes = chainOf(grant);
    const chain = VoteChain.verify(votes, opts);
    assert.ok(chain.ok);
    refusedWith(chain.value, next(votes, summary, { key: testKey('mallory') }), 'forged');
    refusedWith(chain.value, next(votes, summary, { key: testKey('mallory'), witnessKey: 'w2' }), 'forged');
    const tampered = { ...next(votes, summary), site: 'C' };
    refusedWith(chain.value, tampered, 'forged');
    refusedWith(chain.value, { ...next(votes, summary), signature: 'AAAA' }, 'forged');
    // A forgery at a held sequence number is a forgery, not evidence of a fork.
    refusedWith(chain.value, next([], { ...grant, site: 'C' }, { key: testKey('mallory') }), 'forged');
    const r = chain.value.append(next(votes, summary));
    assert.ok(r.ok, 'the genuine vote is still accepted');
  });

  it('refuses a replayed vote as a notice', () => {
    const votes = chainOf(grant, summary);
    const chain = VoteChain.verify(votes, opts);
    assert.ok(chain.ok);
    for (const v of votes) {
      const r = chain.value.append(structuredClone(v));
      assert.ok(!r.ok);
      assert.equal(r.error.code, 'replayed');
      assert.equal(r.error.severity, 'notice');
      assert.equal(r.error.held, r.error.offered);
    }
    // A duplicate inside a chain fails its verification at that index.
    const dup = VoteChain.verify([...votes, votes[1]], opts);
    assert.ok(!dup.ok);
    assert.equal(dup.error.code, 'replayed');
    assert.equal(dup.error.index, 2);
  });

  it('refuses a gap and a vote that does not follow the head (out of order)', () => {
    const votes = chainOf(grant, summary, claim);
    const chain = new VoteChain(opts);
    assert.ok(chain.append(votes[0]).ok);
    refusedWith(chain, votes[2], 'out-of-order');
    // The right sequence number, signed by the witness, but naming another predecessor.
    const head = chainHead(votes.slice(0, 1));
    const wrongPrev = signVote({ ...summary, seq: 2, prev: 'ab'.repeat(32), at: wallAt(5), witnessKey: 'w1' }, witness);
    refusedWith(chain, wrongPrev, 'out-of-order');
    assert.equal(chain.head.hash, head.hash);
    assert.ok(chain.append(votes[1]).ok);
    assert.ok(chain.append(votes[2]).ok);
    const v = VoteChain.verify([votes[1]], opts);
    assert.ok(!v.ok);
    assert.equal(v.error.code, 'out-of-order');
  });

  it('refuses a fork (the witness signed two votes at one sequence number) as critical', () => {
    const common = chainOf(grant);
    const a = next(common, summary);
    const b = next(common, { ...summary, detail: { renewals: 8, position: P(250) } });
    const chain = VoteChain.verify([...common, a], opts);
    assert.ok(chain.ok);
    const r = chain.value.append(b);
    assert.ok(!r.ok);
    assert.equal(r.error.code, 'fork');
    assert.equal(r.error.severity, 'critical');
    assert.equal(r.error.held, voteHash(a));
    assert.equal(r.error.offered, voteHash(b));
    assert.equal(r.error.seq, 2);
    // Even deep in the chain: a different genesis vote is a fork.
    refusedWith(chain.value, next([], { ...grant, detail: { position: P(101) } }), 'fork');
  });

  it('refuses an epoch that does not move forward (epoch regression)', () => {
    const votes = chainOf(grant, claim);
    const chain = VoteChain.verify(votes, opts);
    assert.ok(chain.ok);
    refusedWith(chain.value, next(votes, { ...claim, site: 'B', epoch: 2 }), 'epoch-regression');
    refusedWith(chain.value, next(votes, { ...claim, site: 'B', epoch: 1 }), 'epoch-regression');
    refusedWith(chain.value, next(votes, { ...summary, epoch: 1 }), 'epoch-regression');
    assert.ok(chain.value.append(next(votes, { ...claim, site: 'B', epoch: 5 })).ok, 'epochs may skip, never repeat');
  });

  it('refuses votes that contradict the chain (inconsistent)', () => {
    const votes = chainOf(grant);
    const chain = VoteChain.verify(votes, opts);
    assert.ok(chain.ok);
    refusedWith(chain.value, next(votes, { ...summary, site: 'C' }), 'inconsistent');
    refusedWith(chain.value, next(votes, { ...summary, epoch: 2 }), 'inconsistent');
    refusedWith(chain.value, next(votes, { ...grant, epoch: 2 }), 'inconsistent');
    refusedWith(chain.value, next(votes, { ...claim, site: 'B' }), 'inconsistent');
    const sw: VoteBody = {
      kind: 'switchover',
      shard: 'north',
      site: 'C',
      epoch: 2,
      detail: { appliedPosition: P(1), finalPosition: P(1) },
    };
    refusedWith(chain.value, next(votes, sw), 'inconsistent');
    refusedWith(new VoteChain(opts), next([], summary), 'inconsistent');
  });

  it('refuses malformed votes with the field named', () => {
    const chain = new VoteChain(opts);
    const v = next([], grant);
    for (const bad of [
      null,
      'vote',
      { ...v, seq: 0 },
      { ...v, seq: 1.5 },
      { ...v, prev: 'xyz' },
      { ...v, kind: 'coup' },
      { ...v, at: 'yesterday' },
      { ...v, detail: { position: 'not-hex' } },
      { ...v, detail: { position: P(1), extra: 1 } },
      { ...v, detail: { position: P(1), big: 1.5 } },
      { ...v, extra: true },
      { ...v, operator: { id: 'op-li', signature: 'AAAA' } },
    ]) {
      refusedWith(chain, bad, 'malformed');
    }
    const r = chain.append({ ...v, detail: { position: 'zz' } });
    assert.ok(!r.ok);
    assert.match(r.error.message, /detail\.position/);
  });

  it('checks the operator’s signature in manual-failover and fence votes', () => {
    const votes = chainOf(grant);
    const request = {
      action: 'manual-failover' as const,
      shard: 'north',
      toSite: 'C',
      fromEpoch: 1,
      operator: 'op-li',
      requestedAt: '2025-01-01T00:00:10.000Z',
      reason: 'B lost its storage',
    };
    const body = (signature: { id: string; signature: string }): VoteBody => ({
      kind: 'manual-failover',
      shard: 'north',
      site: 'C',
      epoch: 2,
      detail: { fromEpoch: 1, requestedAt: request.requestedAt, reason: request.reason, holderPosition: P(100) },
      operator: signature,
    });
    const chain = VoteChain.verify(votes, opts);
    assert.ok(chain.ok);
    refusedWith(chain.value, next(votes, { ...body(signOperatorRequest(request, operator)), operator: undefined }), 'malformed');
    refusedWith(chain.value, next(votes, body(signOperatorRequest(request, testKey('mallory')))), 'forged');
    refusedWith(chain.value, next(votes, body(signOperatorRequest({ ...request, operator: 'op-x' }, operator))), 'forged');
    refusedWith(chain.value, next(votes, body(signOperatorRequest({ ...request, fromEpoch: 0 }, operator))), 'forged');
    // Approved from another epoch: the signature is good but the chain has moved on.
    const stale = { ...request, fromEpoch: 0 };
    const staleBody = body(signOperatorRequest(stale, operator));
    refusedWith(chain.value, next(votes, { ...staleBody, detail: { ...staleBody.detail, fromEpoch: 0 } }), 'inconsistent');
    const good = next(votes, body(signOperatorRequest(request, operator)));
    assert.ok(chain.value.append(good).ok);
    assert.equal(chain.value.shard('north')?.holder, 'C');
    // Without operator keys a site's copy still checks the witness's signature and the chain.
    assert.ok(VoteChain.verify([...votes, good], { witnessKeys: opts.witnessKeys }).ok);
    assert.ok(operatorStatement(request).toString().startsWith('{"action":"manual-failover"'));
  });
});
