// Test helper: a witness in memory (key, chain, lease book) whose decisions are sealed,
// appended and applied the way the witness service does it, and operators with their keys.
// Keys come from a seed so a failing run can be replayed.
import { sm3, Sm2PrivateKey, type Sm2PublicKey } from '../security/crypto/index.ts';
import { LeaseBook, type Decision, type LeaseBookOptions, type LeaseView, type OperatorApproval } from './lease-book.ts';
import { VoteChain, type VoteRefusal } from './vote-chain.ts';
import { signOperatorRequest, type OperatorRequest, type Vote } from './vote.ts';

/** A deterministic SM2 key from a label (tests only). */
export function testKey(label: string): Sm2PrivateKey {
  return Sm2PrivateKey.fromScalar(sm3(Buffer.from(`medmesh-test-key:${label}`)));
}

export const TEST_SHARDS = [
  { id: 'north', residency: ['B', 'C'] },
  { id: 'south', residency: ['C', 'B'] },
  { id: 'east', residency: ['B', 'C', 'D'] },
] as const;

/** Wall clock of the tests' witness: a fixed origin plus its monotonic time (votes carry it as `at`). */
export const wallAt = (nowMono: number): string => new Date(Date.UTC(2025, 0, 1) + Math.floor(nowMono)).toISOString();

export interface TestWitness {
  key: Sm2PrivateKey;
  keyId: string;
  chain: VoteChain;
  book: LeaseBook;
  opts: LeaseBookOptions;
  witnessKeys: (id: string) => Sm2PublicKey | undefined;
  operatorKeys: (id: string) => Sm2PublicKey | undefined;
  /** Seals, appends and applies what a decision asks for; answers the votes written and the lease after. */
  record(d: Decision, nowMono: number): { votes: Vote[]; lease: LeaseView | undefined };
  /** The witness restarts: a new book from its chain, at `nowMono` of its new monotonic clock. */
  restart(nowMono: number): void;
  /** An operator's approval of a request, signed with that operator's key (or another key, to forge one). */
  approve(request: Omit<OperatorRequest, 'operator'> & { operator?: string }, signWith?: Sm2PrivateKey): OperatorApproval;
}

export function testWitness(o: Partial<LeaseBookOptions> & { operators?: readonly string[] } = {}): TestWitness {
  const key = testKey('witness');
  const keyId = 'witness-1';
  const operators = new Map((o.operators ?? ['op-li']).map((id) => [id, testKey(`operator:${id}`)]));
  const witnessKeys = (id: string) => (id === keyId ? key.publicKey : undefined);
  const operatorKeys = (id: string) => operators.get(id)?.publicKey;
  const opts: LeaseBookOptions = {
    shards: o.shards ?? TEST_SHARDS,
    leaseMs: o.leaseMs ?? 3000,
    maxLagMs: o.maxLagMs ?? 1000,
    summaryEveryMs: o.summaryEveryMs ?? 10_000,
    operatorKeys,
  };
  const w: TestWitness = {
    key,
    keyId,
    chain: new VoteChain({ witnessKeys, operatorKeys }),
    book: new LeaseBook(opts),
    opts,
    witnessKeys,
    operatorKeys,
    record(d, nowMono) {
      const bodies = d.action === 'vote' ? [d.vote] : d.summary ? [d.summary] : [];
      const votes: Vote[] = [];
      let lease: LeaseView | undefined = d.action === 'renewed' ? d.lease : undefined;
      for (const body of bodies) {
        const sealed = w.chain.seal(body, { at: wallAt(nowMono), witnessKey: keyId, key });
        if (!sealed.ok) throw new Error(`the chain refused a decision: ${refusalText(sealed.error)}`);
        const appended = w.chain.append(sealed.value);
        if (!appended.ok) throw new Error(`the chain refused a sealed vote: ${refusalText(appended.error)}`);
        const applied = w.book.apply(sealed.value, nowMono);
        if (!applied.ok) throw new Error(`the book refused a chained vote: ${applied.error.message}`);
        votes.push(sealed.value);
        lease = applied.value;
      }
      return { votes, lease };
    },
    restart(nowMono) {
      w.book = LeaseBook.fromChain(w.chain, opts, nowMono);
    },
    approve(request, signWith) {
      const operator = request.operator ?? [...operators.keys()][0]!;
      const signer = signWith ?? operators.get(operator) ?? testKey('nobody');
      const { signature } = signOperatorRequest({ ...request, operator }, signer);
      return { id: operator, requestedAt: request.requestedAt, reason: request.reason, signature };
    },
  };
  return w;
}

const refusalText = (r: VoteRefusal) => `${r.code}: ${r.message}`;
