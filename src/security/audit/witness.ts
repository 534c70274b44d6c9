// Sites witness each other's audit logs (DESIGN §8). On a schedule, each site fetches every
// peer's latest signed checkpoint, checks it against the peer's registered key and against
// the last checkpoint it holds from that peer (the size never shrinks; RFC 9162 consistency
// proof from the old tree to the new), cosigns it, keeps it and hands the cosignature back.
// A peer whose log was truncated or rewritten fails the check here: the checkpoint is
// refused, counted, logged and written to this site's own audit log. The peer's own verify
// asks its peers what they hold (`askWitnesses`) and so finds its truncation too.
import { randomBytes, randomUUID } from 'node:crypto';
import { claimLease, type Db, type Queryable } from '../../db/index.ts';
import { sm2Sign, type Sm2PrivateKey, type Sm2PublicKey } from '../crypto/index.ts';
import type { AuditLog } from './audit-log.ts';
import { verifyConsistency } from './merkle.ts';
import { verifyAuditLog, type AuditReport, type VerifyOptions } from './verify.ts';
import { parseHeldAnswer, parseSignedCheckpoint, WitnessClient, type SignedCheckpoint } from './witness-wire.ts';

export type WitnessAlarmKind = 'truncated' | 'inconsistent' | 'forged';

export interface WitnessPeerState {
  peer: string;
  /**
   * waiting: nothing checked yet (no checkpoint, sealed, untrusted); unreachable: the last call failed;
   * alarm: the last check that got an answer failed (kept while the peer cannot be checked).
   */
  state: 'waiting' | 'ok' | 'unreachable' | 'alarm';
  heldTreeSize?: number;
  lastCheckAt?: string;
  lastCosignedAt?: string;
  lastError?: string;
  alarm?: { kind: WitnessAlarmKind; message: string; at: string };
  alarms: Record<WitnessAlarmKind, number>;
  cosigned: number;
}

export interface AuditWitnessOptions {
  db: Db;
  siteId: string;
  /** Peer id -> base URL. */
  peers: () => ReadonlyMap<string, string>;
  /** This site's signing key (cosignatures); undefined while sealed. */
  key: () => Sm2PrivateKey | undefined;
  /** The key registered here for a peer (medmesh peers trust): its checkpoints must be signed with it. */
  peerKey: (peer: string) => Promise<Sm2PublicKey | undefined>;
  /** The Authorization header value for a call to `peer` (this site's service assertion). */
  authorization: (peer: string, key: Sm2PrivateKey) => string;
  /** This site's audit log, to record alarms in (absent while sealed). */
  audit?: () => AuditLog | undefined;
  onAlarm?: (peer: string, kind: WitnessAlarmKind, message: string) => void;
  onError?: (peer: string, message: string) => void;
  /** Per request (default 10 s): a peer that does not answer must not hold the others. */
  timeoutMs?: number;
  now?: () => Date;
}

export class AuditWitness {
  readonly #o: AuditWitnessOptions;
  readonly #holder = randomUUID();
  readonly #states = new Map<string, WitnessPeerState>();
  /** The tree size whose cosignature each peer has taken, so a failed hand-back is retried. */
  readonly #handedBack = new Map<string, number>();
  /** The finding each peer is in alarm for (kind and the size held), so it is logged once. */
  readonly #findings = new Map<string, string>();
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<unknown> | undefined;

  constructor(opts: AuditWitnessOptions) {
    this.#o = opts;
  }

  #state(peer: string): WitnessPeerState {
    let s = this.#states.get(peer);
    if (!s)
      this.#states.set(peer, (s = { peer, state: 'waiting', alarms: { truncated: 0, inconsistent: 0, forged: 0 }, cosigned: 0 }));
    return s;
  }

  #now(): Date {
    return this.#o.now?.() ?? new Date();
  }

  states(): WitnessPeerState[] {
    for (const p of this.#o.peers().keys()) this.#state(p);
    return [...this.#states.values()].sort((a, b) => a.peer.localeCompare(b.peer));
  }

  /** Checks every peer now, in parallel (one peer down or slow does not hold the others). */
  async round(): Promise<WitnessPeerState[]> {
    await Promise.all([...this.#o.peers().keys()].map((p) => this.checkPeer(p)));
    return this.states();
  }

  /** Every `everyMs`, each peer by one API node of this site (a lease per peer). */
  start(everyMs: number): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => {
      if (this.#running) return;
      this.#running = this.#scheduled(everyMs).finally(() => (this.#running = undefined));
    }, everyMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#running;
  }

  async #scheduled(everyMs: number): Promise<void> {
    await Promise.all(
      [...this.#o.peers().keys()].map(async (peer) => {
        try {
          const mine = await claimLease(this.#o.db, {
            name: `audit-witness:${peer}`,
            holder: this.#holder,
            seconds: Math.max(1, Math.floor(everyMs / 1000) - 1),
            renew: false,
          });
          if (mine) await this.checkPeer(peer);
        } catch (e) {
          this.#o.onError?.(peer, e instanceof Error ? e.message : String(e));
        }
      }),
    );
  }

  /** One check of one peer; never throws (the outcome is in the returned state). */
  async checkPeer(peer: string): Promise<WitnessPeerState> {
    const s = this.#state(peer);
    s.lastCheckAt = this.#now().toISOString();
    try {
      await this.#check(peer, s);
    } catch (e) {
      if (s.state !== 'alarm') s.state = 'unreachable';
      s.lastError = `${peer}: ${e instanceof Error ? e.message : String(e)}`.slice(0, 300);
      this.#o.onError?.(peer, s.lastError);
    }
    return s;
  }

  async #check(peer: string, s: WitnessPeerState): Promise<void> {
    const url = this.#o.peers().get(peer);
    const key = this.#o.key();
    const peerKey = await this.#o.peerKey(peer);
    // An alarm stays until the peer's log checks out again: a peer cut and then kept out of reach stays flagged.
    const wait = (why: string): void => {
      if (s.state !== 'alarm') s.state = 'waiting';
      s.lastError = why;
    };
    if (!url) return wait(`no address for ${peer}`);
    if (!key) return wait(`site ${this.#o.siteId} is sealed`);
    if (!peerKey) return wait(`no key is registered for ${peer} (medmesh peers trust)`);
    const client = new WitnessClient({
      url,
      authorization: () => this.#o.authorization(peer, key),
      ...(this.#o.timeoutMs ? { timeoutMs: this.#o.timeoutMs } : {}),
    });
    const raw = await client.checkpoint();
    if (raw === undefined) return wait(`${peer} has signed no checkpoint yet`);
    const parsed = parseSignedCheckpoint(raw, { site: peer, keys: [peerKey] });
    if (!parsed.ok) return this.#alarm(peer, s, 'forged', `checkpoint refused: ${parsed.problem}`);
    const cp = parsed.checkpoint;
    const held = await latestHeld(this.#o.db, peer);
    if (held) {
      s.heldTreeSize = held.treeSize;
      if (cp.treeSize < held.treeSize)
        return this.#alarm(
          peer,
          s,
          'truncated',
          `${peer}'s audit log now ends at ${cp.treeSize} entries, ` +
            `but it signed ${held.treeSize} on ${held.issuedAt} (held here): entries were deleted`,
        );
      if (cp.treeSize === held.treeSize && !cp.root.equals(held.root))
        return this.#alarm(
          peer,
          s,
          'inconsistent',
          `${peer} signed two different logs of ${cp.treeSize} entries ` +
            `(roots ${held.root.toString('hex').slice(0, 16)}… and ${cp.root.toString('hex').slice(0, 16)}…)`,
        );
      if (cp.treeSize > held.treeSize) {
        const proof = await client.consistency(held.treeSize, cp.treeSize);
        if (!proof.ok)
          return this.#alarm(
            peer,
            s,
            'inconsistent',
            `${peer} cannot prove that its log of ${cp.treeSize} entries ` +
              `extends the ${held.treeSize} held here (${proof.problem})`,
          );
        if (!verifyConsistency(held.treeSize, cp.treeSize, held.root, cp.root, proof.proof))
          return this.#alarm(
            peer,
            s,
            'inconsistent',
            `${peer}'s log of ${cp.treeSize} entries ` +
              `does not extend the ${held.treeSize} held here: earlier entries were changed`,
          );
      }
    }
    const cosignature = sm2Sign(key, Buffer.from(cp.statement));
    if (!held || cp.treeSize > held.treeSize) {
      await storeHeld(this.#o.db, cp, cosignature);
      s.cosigned++;
      s.lastCosignedAt = this.#now().toISOString();
    }
    s.heldTreeSize = cp.treeSize;
    s.state = 'ok';
    delete s.alarm;
    delete s.lastError;
    if (this.#handedBack.get(peer) !== cp.treeSize) {
      try {
        await client.cosign(cp.treeSize, cosignature);
        this.#handedBack.set(peer, cp.treeSize);
      } catch (e) {
        // Kept here all the same; the hand-back is tried again next round.
        s.lastError = `cosignature not handed back: ${e instanceof Error ? e.message : String(e)}`.slice(0, 300);
      }
    }
  }

  async #alarm(peer: string, s: WitnessPeerState, kind: WitnessAlarmKind, message: string): Promise<void> {
    // The same finding every round (the peer's log keeps growing after the cut) is counted each
    // time but logged and recorded once: what identifies it is its kind, the size held here and
    // what it says apart from the peer's current sizes.
    const finding = `${kind}:${s.heldTreeSize ?? 0}:${message.replace(/\d+/g, '#')}`;
    const fresh = s.state !== 'alarm' || this.#findings.get(peer) !== finding;
    this.#findings.set(peer, finding);
    s.state = 'alarm';
    s.alarms[kind]++;
    s.alarm = { kind, message, at: this.#now().toISOString() };
    s.lastError = message;
    if (!fresh) return;
    this.#o.onAlarm?.(peer, kind, message);
    const log = this.#o.audit?.();
    if (log)
      await log.append({
        time: s.alarm.at,
        site: this.#o.siteId,
        actor: { kind: 'system', id: 'audit-witness' },
        action: 'audit-peer-alarm',
        outcome: 'failure',
        resource: `Site/${peer}`,
        detail: `${kind}: ${message}`.slice(0, 2000),
      });
  }

  /** Prometheus text: per peer, whether its log checks out, alarms by kind, the size held. */
  prometheus(): string {
    const site = this.#o.siteId;
    const lines: string[] = [];
    const metric = (name: string, type: string, help: string, rows: Array<[string, number]>) => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [labels, v] of rows) lines.push(`${name}{site="${site}",${labels}} ${v}`);
    };
    const states = this.states();
    metric(
      'medmesh_audit_witness_alarm',
      'gauge',
      "1 while the peer's audit log fails the witness check (truncated, inconsistent or forged checkpoint).",
      states.map((s) => [`peer="${s.peer}"`, s.state === 'alarm' ? 1 : 0]),
    );
    metric(
      'medmesh_audit_witness_up',
      'gauge',
      "Whether the last witness check of the peer's audit log succeeded.",
      states.map((s) => [`peer="${s.peer}"`, s.state === 'ok' ? 1 : 0]),
    );
    metric(
      'medmesh_audit_witness_alarms_total',
      'counter',
      "Witness checks of the peer's audit log that failed, by kind.",
      states.flatMap((s) =>
        (Object.keys(s.alarms) as WitnessAlarmKind[]).map((k): [string, number] => [`peer="${s.peer}",kind="${k}"`, s.alarms[k]]),
      ),
    );
    metric(
      'medmesh_audit_witness_held_tree_size',
      'gauge',
      "Size of the peer's latest audit checkpoint cosigned and held here.",
      states.map((s) => [`peer="${s.peer}"`, s.heldTreeSize ?? 0]),
    );
    return `${lines.join('\n')}\n`;
  }
}

export async function latestHeld(q: Queryable, peer: string): Promise<SignedCheckpoint | undefined> {
  const { rows } = await q.query<{
    tree_size: bigint;
    root: Uint8Array;
    issued_at: Date;
    statement: string;
    signature: Uint8Array;
  }>(
    `SELECT tree_size, root, issued_at, statement, signature FROM audit_peer_checkpoint
      WHERE peer_site = $1 ORDER BY tree_size DESC LIMIT 1`,
    [peer],
  );
  const r = rows[0];
  return r
    ? {
        site: peer,
        treeSize: Number(r.tree_size),
        root: Buffer.from(r.root),
        issuedAt: new Date(r.issued_at).toISOString(),
        statement: r.statement,
        signature: Buffer.from(r.signature),
      }
    : undefined;
}

async function storeHeld(q: Queryable, cp: SignedCheckpoint, cosignature: Buffer): Promise<void> {
  await q.query(
    `INSERT INTO audit_peer_checkpoint (peer_site, tree_size, root, issued_at, statement, signature, cosignature)
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING`,
    [cp.site, cp.treeSize, cp.root, cp.issuedAt, cp.statement, cp.signature, cosignature],
  );
}

export interface WitnessAnswer {
  peer: string;
  /** held: a checkpoint of this log the peer checked and keeps; none: it holds none yet. */
  status: 'held' | 'none' | 'unreachable' | 'invalid';
  checkpoint?: SignedCheckpoint;
  problem?: string;
}

/**
 * Asks every peer for the latest checkpoint of `siteId`'s log it holds, each answer bound to a
 * fresh nonce and signed by the peer; the checkpoint itself must carry this site's signature.
 */
export async function askWitnesses(o: {
  siteId: string;
  peers: ReadonlyMap<string, string>;
  /** This site's checkpoint signing keys. */
  siteKeys: readonly Sm2PublicKey[];
  peerKey: (peer: string) => Promise<Sm2PublicKey | undefined>;
  authorization: (peer: string) => string;
  timeoutMs?: number;
}): Promise<WitnessAnswer[]> {
  return Promise.all(
    [...o.peers].map(async ([peer, url]): Promise<WitnessAnswer> => {
      const witnessKey = await o.peerKey(peer);
      if (!witnessKey) return { peer, status: 'invalid', problem: `no key is registered for ${peer}` };
      const nonce = randomBytes(16).toString('hex');
      const client = new WitnessClient({ url, authorization: () => o.authorization(peer), timeoutMs: o.timeoutMs ?? 10_000 });
      let raw: unknown;
      try {
        raw = await client.held(o.siteId, nonce);
      } catch (e) {
        return { peer, status: 'unreachable', problem: e instanceof Error ? e.message : String(e) };
      }
      if (raw === undefined) return { peer, status: 'none' };
      const a = parseHeldAnswer(raw, { witness: peer, site: o.siteId, nonce, witnessKey, siteKeys: o.siteKeys });
      return a.ok ? { peer, status: 'held', checkpoint: a.checkpoint } : { peer, status: 'invalid', problem: a.problem };
    }),
  );
}

/**
 * `verifyAuditLog` with what the peers hold of this log: a log shorter than, or inconsistent
 * with, a checkpoint a peer cosigned fails. `confirmed`: at least one peer's checkpoint was
 * recomputed from this log (or the region has no other site) — without it the newest entries
 * could have been cut and nothing here would show it.
 */
export async function verifyWithPeers(
  q: Queryable,
  opts: VerifyOptions,
  ask: Omit<Parameters<typeof askWitnesses>[0], 'siteKeys'>,
): Promise<{ report: AuditReport; peers: Array<Omit<WitnessAnswer, 'checkpoint'> & { treeSize?: number }>; confirmed: boolean }> {
  const answers = await askWitnesses({ ...ask, siteKeys: opts.signers });
  const witnessed = answers.flatMap((a) =>
    a.status === 'held' && a.checkpoint ? [{ peer: a.peer, treeSize: a.checkpoint.treeSize, root: a.checkpoint.root }] : [],
  );
  const report = await verifyAuditLog(q, { ...opts, witnessed });
  const confirmed = ask.peers.size === 0 || (report.witnesses ?? []).some((w) => w.consistent);
  return {
    report,
    peers: answers.map(({ checkpoint, ...a }) => ({ ...a, ...(checkpoint ? { treeSize: checkpoint.treeSize } : {}) })),
    confirmed,
  };
}
