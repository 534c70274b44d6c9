// The site's customer master key (CMK): created split k-of-n into custodian shares, held
// only in memory once enough shares unsealed it, and the site signing key it wraps. Also
// the shares this site keeps for other sites. Named keys live in key-ring.ts.
import { randomBytes, randomUUID } from 'node:crypto';
import { combine, split } from 'shamir-secret-sharing';
import type { Db, Queryable } from '../../db/index.ts';
import { equalConstantTime, hmacSm3, Sm2PrivateKey, Sm2PublicKey, type CryptoPolicy } from '../crypto/index.ts';
import { KmsError } from './errors.ts';
import { kcvOf, unwrapUnder, wrapUnder } from './master-key.ts';
import {
  depositShare,
  shareSignedBy,
  signShare,
  wrapShare,
  type Custodian,
  type ShareToken,
  type WrappedShare,
} from './shares.ts';

export interface KmsContext {
  db: Db;
  siteId: string;
  policy: CryptoPolicy;
  now?: () => Date;
  /** Called once the KMS is unsealed (after init or the last share), e.g. to load keys into caches. */
  onUnsealed?: () => void;
}

export interface KmsStatus {
  initialized: boolean;
  sealed: boolean;
  cmkId?: string;
  threshold?: number;
  shareCount?: number;
  /** Distinct shares submitted towards unsealing. */
  progress: number;
}

/** The master key while unsealed. */
export interface Unsealed {
  cmk: Buffer;
  cmkId: string;
  signing: Sm2PrivateKey;
}

export class MasterKey {
  readonly #ctx: KmsContext;
  #cmk: Buffer | undefined;
  #cmkId: string | undefined;
  #signing: Sm2PrivateKey | undefined;
  readonly #submitted = new Map<number, ShareToken>();

  constructor(ctx: KmsContext) {
    this.#ctx = ctx;
  }

  /** Creates the site's CMK, splits it k-of-n and wraps one share per custodian. Leaves the KMS unsealed. */
  async init(opts: { custodians: Custodian[]; threshold?: number }): Promise<{ cmkId: string; shares: WrappedShare[] }> {
    const n = opts.custodians.length;
    const k = opts.threshold ?? 3;
    if (k < 2 || k > n || n > 255)
      throw new KmsError('bad-request', `threshold must be 2..${n} for ${n} custodians (got ${k}); at least 2 custodians`);
    if (new Set(opts.custodians.map((c) => c.name)).size !== n)
      throw new KmsError('bad-request', 'custodian names must be distinct');
    const cmk = randomBytes(32);
    const cmkId = randomUUID();
    // The library insists on plain Uint8Array (not Buffer).
    const parts = await split(new Uint8Array(cmk), n, k);
    const signing = Sm2PrivateKey.generate();
    const shares = parts.map((share, i) =>
      signShare(
        wrapShare({
          site: this.#ctx.siteId,
          cmkId,
          index: i + 1,
          threshold: k,
          custodian: opts.custodians[i]!,
          token: { cmkId, index: i + 1, share },
        }),
        signing,
      ),
    );
    await this.#ctx.db.transaction(async (tx) => {
      const exists = await tx.query('SELECT 1 FROM kms_root WHERE site_id = $1 FOR UPDATE', [this.#ctx.siteId]);
      if (exists.rows.length)
        throw new KmsError(
          'already-initialized',
          `the KMS of site ${this.#ctx.siteId} is already initialized; its master key cannot be replaced`,
        );
      await tx.query(
        `INSERT INTO kms_root (site_id, cmk_id, kcv, threshold, share_count, signing_public_key, signing_private_wrapped)
         VALUES ($1, $2, $3, $4, $5, $6, $7)`,
        [
          this.#ctx.siteId,
          cmkId,
          kcvOf(cmk),
          k,
          n,
          signing.publicKey.toPem(),
          wrapUnder(cmk, `signing:${cmkId}`, signing.toDer()),
        ],
      );
      for (const s of shares)
        await tx.query('INSERT INTO kms_share (cmk_id, share_index, custodian, wrapped) VALUES ($1, $2, $3, $4::jsonb)', [
          cmkId,
          s.index,
          s.custodian,
          JSON.stringify(s),
        ]);
    });
    this.#unsealWith(cmk, cmkId, signing);
    return { cmkId, shares };
  }

  async status(): Promise<KmsStatus> {
    const root = await this.root(this.#ctx.db);
    if (!root) return { initialized: false, sealed: true, progress: 0 };
    return {
      initialized: true,
      sealed: this.#cmk === undefined,
      cmkId: root.cmk_id,
      threshold: root.threshold,
      shareCount: root.share_count,
      progress: this.#submitted.size,
    };
  }

  seal(): void {
    this.#cmk?.fill(0);
    this.#cmk = undefined;
    this.#signing = undefined;
    this.#submitted.clear();
  }

  /** Adds one opened share; unseals once `threshold` distinct shares reconstruct the CMK. */
  async submitShare(token: ShareToken): Promise<KmsStatus> {
    const root = await this.root(this.#ctx.db);
    if (!root)
      throw new KmsError('not-initialized', `the KMS of site ${this.#ctx.siteId} is not initialized: run medmesh keys init`);
    if (this.#cmk) return this.status();
    if (token.cmkId !== root.cmk_id)
      throw new KmsError(
        'share-of-other-key',
        `this share belongs to master key ${token.cmkId}; site ${this.#ctx.siteId} uses ${root.cmk_id}`,
      );
    const prev = this.#submitted.get(token.index);
    if (prev && !equalConstantTime(prev.share, token.share))
      throw new KmsError('duplicate-share', `share ${token.index} was already submitted with different contents`);
    this.#submitted.set(token.index, token);
    if (this.#submitted.size < root.threshold) return this.status();
    const cmk = Buffer.from(await combine([...this.#submitted.values()].map((t) => new Uint8Array(t.share))));
    if (kcvOf(cmk) !== root.kcv) {
      this.#submitted.clear();
      cmk.fill(0);
      throw new KmsError(
        'bad-share',
        "the submitted shares do not reconstruct this site's master key (check value mismatch): " +
          'one is wrong or tampered; start again',
      );
    }
    const signing = Sm2PrivateKey.fromPem(unwrapUnder(cmk, `signing:${root.cmk_id}`, root.signing_private_wrapped));
    this.#unsealWith(cmk, root.cmk_id, signing);
    return this.status();
  }

  #unsealWith(cmk: Buffer, cmkId: string, signing: Sm2PrivateKey): void {
    this.#cmk = cmk;
    this.#cmkId = cmkId;
    this.#signing = signing;
    this.#submitted.clear();
    this.#ctx.onUnsealed?.();
  }

  /** The master key, or a `sealed` error. */
  unsealed(): Unsealed {
    if (!this.#cmk || !this.#cmkId || !this.#signing)
      throw new KmsError(
        'sealed',
        `the KMS of site ${this.#ctx.siteId} is sealed: submit custodian shares (medmesh keys unseal)`,
      );
    return { cmk: this.#cmk, cmkId: this.#cmkId, signing: this.#signing };
  }

  /** The site's SM2 signing key while unsealed (token issuing, certificates, audit checkpoints). */
  signingKey(): { key: Sm2PrivateKey; kid: string } | undefined {
    return this.#signing && this.#cmkId
      ? { key: this.#signing, kid: `${this.#ctx.siteId}-${this.#cmkId.slice(0, 8)}` }
      : undefined;
  }

  /**
   * A secret derived from the CMK for a fixed purpose (HMAC-SM3(CMK, label)): stable for the
   * life of the master key, available only while unsealed. The audit log MACs entries with one.
   */
  deriveSecret(label: string): Buffer {
    const { cmk } = this.unsealed();
    return hmacSm3(cmk, Buffer.from(`medmesh derive|${label}`));
  }

  async signingPublicKey(): Promise<Sm2PublicKey | undefined> {
    const root = await this.root(this.#ctx.db);
    return root ? Sm2PublicKey.fromPem(root.signing_public_key) : undefined;
  }

  // ---- shares kept for other sites --------------------------------------------------------

  /**
   * Keeps another site's wrapped share, signed by that site's service key (`ownerKey`: the key
   * registered here for it, none when it is not). Deposits are write-once.
   */
  depositShare(w: WrappedShare, ownerKey: Sm2PublicKey | undefined): Promise<void> {
    return depositShare(this.#ctx.db, this.#ctx.siteId, w, ownerKey);
  }

  async depositedShares(ownerSite: string): Promise<WrappedShare[]> {
    const { rows } = await this.#ctx.db.query<{ wrapped: WrappedShare }>(
      'SELECT wrapped FROM kms_deposited_share WHERE owner_site = $1 ORDER BY cmk_id, share_index',
      [ownerSite],
    );
    return rows.map((r) => r.wrapped);
  }

  async ownShares(): Promise<WrappedShare[]> {
    const { rows } = await this.#ctx.db.query<{ wrapped: WrappedShare }>(
      'SELECT s.wrapped FROM kms_share s JOIN kms_root r ON r.cmk_id = s.cmk_id WHERE r.site_id = $1 ORDER BY s.share_index',
      [this.#ctx.siteId],
    );
    return rows.map((r) => r.wrapped);
  }

  /**
   * The custodians of the current master key, name -> public key: from the shares made at init,
   * counted only when signed by this site's signing key (a row added to kms_share by hand is not
   * a custodian).
   */
  async custodians(): Promise<Map<string, Sm2PublicKey>> {
    const { signing } = this.unsealed();
    const out = new Map<string, Sm2PublicKey>();
    for (const w of await this.ownShares())
      if (shareSignedBy(w, signing.publicKey)) out.set(w.custodian, Sm2PublicKey.fromPem(w.custodianPublicKey));
    return out;
  }

  /** This site's master-key row (absent before init). */
  async root(q: Queryable = this.#ctx.db) {
    const { rows } = await q.query<{
      cmk_id: string;
      kcv: string;
      threshold: number;
      share_count: number;
      signing_public_key: string;
      signing_private_wrapped: Buffer;
    }>(
      'SELECT cmk_id, kcv, threshold, share_count, signing_public_key, signing_private_wrapped FROM kms_root WHERE site_id = $1',
      [this.#ctx.siteId],
    );
    return rows[0];
  }
}
