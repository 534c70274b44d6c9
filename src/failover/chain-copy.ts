// A site's verified copy of the witness's vote chain (DESIGN.md §6: every site keeps and
// verifies a copy), in its own database (witness_vote, migration 0021). Votes after the local
// head are fetched whenever an answer of the witness shows a head ahead of it; each is checked
// by VoteChain (signature, sequence, predecessor, epochs) and stored only if it verified, in
// order. A refused vote is never stored: it is an alarm (logged at error, counted by code) and
// the copy stays where it was; the site keeps serving under the leases it has.
import { reasonOf, type Logger } from '../common/index.ts';
import type { Db } from '../db/index.ts';
import { VoteChain, type ChainHead, type KeyLookup, type ShardRecord } from './vote-chain.ts';
import { voteHash, type Vote } from './vote.ts';
import type { WitnessApi } from './witness-api.ts';

export interface ChainCopyOptions {
  db: Db;
  witness: WitnessApi;
  witnessKeys: KeyLookup;
  log: Logger;
  /** Votes asked for per request (default 200). */
  pageSize?: number;
  /**
   * An alarm about the chain: a vote refused (its VoteRefusalCode), the witness's head at a held
   * sequence number with another hash ('fork'), or behind the copy ('rolled-back').
   */
  onAlarm(code: string): void;
  /** A vote verified and stored: what it says about its shard now. */
  onVote?(vote: Vote, record: ShardRecord): void;
}

/** Refusals remembered so a vote served again is alarmed once (the witness may serve it on every answer). */
const MAX_REMEMBERED = 1000;

export class ChainCopy {
  readonly #o: ChainCopyOptions;
  readonly #chain: VoteChain;
  readonly #alarmed = new Set<string>();
  #wanted = 0;
  #syncing: Promise<void> | undefined;
  #closed = false;

  constructor(o: ChainCopyOptions) {
    this.#o = o;
    this.#chain = new VoteChain({ witnessKeys: o.witnessKeys });
  }

  get head(): ChainHead {
    return this.#chain.head;
  }

  votes(): readonly Vote[] {
    return this.#chain.votes();
  }

  shard(id: string): ShardRecord | undefined {
    return this.#chain.shard(id);
  }

  /**
   * Reads and verifies the stored copy; a stored vote that no longer verifies (the table was
   * altered) is alarmed, and the copy ends before it.
   */
  async load(): Promise<void> {
    const { rows } = await this.#o.db.query<{ seq: string; body: unknown }>(
      'SELECT seq::text AS seq, body FROM witness_vote ORDER BY seq',
    );
    for (const row of rows) {
      const r = this.#chain.append(row.body);
      if (!r.ok) {
        this.#alarm(
          r.error.code,
          `stored vote ${row.seq}`,
          `the stored copy of the vote chain does not verify at vote ${row.seq}: ${r.error.message}; ` +
            'votes from there are fetched again',
        );
        break;
      }
      this.#o.onVote?.(r.value.vote, this.#chain.shard(r.value.vote.shard)!);
    }
  }

  /** An answer of the witness named its head: fetch what the copy lacks, or alarm a head that contradicts it. */
  noteHead(head: ChainHead): void {
    if (this.#closed) return;
    const local = this.#chain.head;
    if (head.seq > local.seq) {
      this.#wanted = Math.max(this.#wanted, head.seq);
      void this.sync();
      return;
    }
    // An answer may be older than votes fetched since (a head behind the copy is no news), but a
    // vote it names must be the one held.
    if (head.seq === 0) return;
    const held = head.seq === local.seq ? local.hash : voteHash(this.#chain.votes()[head.seq - 1]!);
    if (held !== head.hash)
      this.#alarm(
        'fork',
        `head ${head.seq}:${head.hash}`,
        `FORK: the witness names another vote ${head.seq} (${head.hash}) than the one this site holds (${held})`,
      );
  }

  /** No more fetching; resolves once a fetch under way has ended. */
  stop(): Promise<void> {
    this.#closed = true;
    return this.#syncing ?? Promise.resolve();
  }

  /** Fetches and stores votes until the copy reaches the highest head seen (one sync at a time); never rejects. */
  sync(): Promise<void> {
    if (this.#closed) return this.#syncing ?? Promise.resolve();
    this.#syncing ??= this.#run()
      .catch((e: unknown) =>
        this.#o.log.warn({ err: e }, `vote chain not fetched (tried again on the next answer): ${reasonOf(e)}`),
      )
      .finally(() => (this.#syncing = undefined));
    return this.#syncing;
  }

  async #run(): Promise<void> {
    while (!this.#closed && this.#chain.head.seq < this.#wanted) {
      const after = this.#chain.head.seq;
      const r = await this.#o.witness.chain({ after, limit: this.#o.pageSize ?? 200 });
      if (!r.ok) {
        this.#o.log.warn({ code: r.error.code }, `vote chain not fetched (tried again on the next answer): ${r.error.message}`);
        return;
      }
      if (r.value.head.seq > this.#wanted) this.#wanted = r.value.head.seq;
      if (r.value.votes.length === 0) return;
      for (const raw of r.value.votes) {
        const checked = this.#chain.check(raw);
        if (!checked.ok) {
          if (checked.error.code === 'replayed') continue;
          const seq = checked.error.seq ?? '?';
          this.#alarm(
            checked.error.code,
            `vote ${seq}:${checked.error.offered ?? JSON.stringify(raw).length}:${signatureOf(raw)}`,
            `VOTE REFUSED (${checked.error.code}, not stored): ${checked.error.message}`,
          );
          return; // nothing after a refused vote can follow the copy's head
        }
        const { vote, hash } = checked.value;
        await this.#store(vote, hash);
        const appended = this.#chain.append(vote);
        if (!appended.ok) return; // cannot happen: checked just now, and one sync runs at a time
        this.#o.onVote?.(vote, this.#chain.shard(vote.shard)!);
      }
    }
  }

  async #store(vote: Vote, hash: string): Promise<void> {
    // Several nodes of one site may store the same vote: the same hash is no news; another hash at
    // that seq is a copy that did not verify (load stopped before it) and is replaced by the verified one.
    const { rows } = await this.#o.db.query<{ replaced: boolean }>(
      `INSERT INTO witness_vote (seq, hash, body) VALUES ($1, $2, $3::jsonb)
       ON CONFLICT (seq) DO UPDATE SET hash = excluded.hash, body = excluded.body, stored_at = now()
         WHERE witness_vote.hash <> excluded.hash
       RETURNING (xmax::text <> '0') AS replaced`,
      [vote.seq, hash, JSON.stringify(vote)],
    );
    if (rows[0]?.replaced)
      this.#o.log.error({ seq: vote.seq }, `stored vote ${vote.seq} did not verify: replaced by the verified one`);
  }

  #alarm(code: string, key: string, message: string): void {
    const k = `${code}:${key}`;
    if (this.#alarmed.has(k)) return;
    if (this.#alarmed.size >= MAX_REMEMBERED) this.#alarmed.clear();
    this.#alarmed.add(k);
    this.#o.onAlarm(code);
    this.#o.log.error({ alarm: 'witness-vote', code }, message);
  }
}

const signatureOf = (raw: unknown): string => {
  const s = (raw as { signature?: unknown } | null)?.signature;
  return typeof s === 'string' ? s.slice(0, 32) : '';
};
