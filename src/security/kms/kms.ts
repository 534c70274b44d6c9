// The key management service of one site: its master key and sealing (sealing.ts) and its
// named keys (key-ring.ts) behind one face, so callers hold one object per site.
import type { Sm2PrivateKey, Sm2PublicKey } from '../crypto/index.ts';
import type { DestructionApproval, DestructionCertificate } from './certificate.ts';
import type { WipeReport } from './destruction.ts';
import { KeyRing, type KeyInfo } from './key-ring.ts';
import { MasterKey, type KmsContext, type KmsStatus } from './sealing.ts';
import type { Custodian, ShareToken, WrappedShare } from './shares.ts';
import type { EnvelopeAlgorithm } from '../crypto/index.ts';

export type { KmsContext, KmsStatus, KeyInfo };

export class Kms {
  readonly #master: MasterKey;
  readonly #keys: KeyRing;

  constructor(ctx: KmsContext) {
    this.#master = new MasterKey(ctx);
    this.#keys = new KeyRing(ctx, this.#master);
  }

  // ---- master key: init, seal, unseal, shares -----------------------------------------------

  /** Creates the site's CMK, splits it k-of-n and wraps one share per custodian. Leaves the KMS unsealed. */
  init(opts: { custodians: Custodian[]; threshold?: number }): Promise<{ cmkId: string; shares: WrappedShare[] }> {
    return this.#master.init(opts);
  }

  status(): Promise<KmsStatus> {
    return this.#master.status();
  }

  seal(): void {
    this.#master.seal();
    this.#keys.clear();
  }

  /** Adds one opened share; unseals once `threshold` distinct shares reconstruct the CMK. */
  submitShare(token: ShareToken): Promise<KmsStatus> {
    return this.#master.submitShare(token);
  }

  /** The site's SM2 signing key while unsealed (token issuing, certificates, audit checkpoints). */
  signingKey(): { key: Sm2PrivateKey; kid: string } | undefined {
    return this.#master.signingKey();
  }

  /** A secret derived from the CMK for a fixed purpose (available only while unsealed). */
  deriveSecret(label: string): Buffer {
    return this.#master.deriveSecret(label);
  }

  signingPublicKey(): Promise<Sm2PublicKey | undefined> {
    return this.#master.signingPublicKey();
  }

  /** Keeps another site's wrapped share, signed by that site's service key. Deposits are write-once. */
  depositShare(w: WrappedShare, ownerKey: Sm2PublicKey | undefined): Promise<void> {
    return this.#master.depositShare(w, ownerKey);
  }

  depositedShares(ownerSite: string): Promise<WrappedShare[]> {
    return this.#master.depositedShares(ownerSite);
  }

  ownShares(): Promise<WrappedShare[]> {
    return this.#master.ownShares();
  }

  /** The custodians of the current master key, name -> public key (shares signed by this site). */
  custodians(): Promise<Map<string, Sm2PublicKey>> {
    return this.#master.custodians();
  }

  // ---- named keys ---------------------------------------------------------------------------

  ensureKey(name: string): Promise<void> {
    return this.#keys.ensureKey(name);
  }

  createKey(
    name: string,
    opts: { exportable?: boolean; rotationPeriodSeconds?: number; algorithm?: EnvelopeAlgorithm; material?: Uint8Array } = {},
  ): Promise<KeyInfo> {
    return this.#keys.createKey(name, opts);
  }

  macKey(name: string): Promise<{ version: number; key: Buffer }> {
    return this.#keys.macKey(name);
  }

  describeKey(name: string): Promise<KeyInfo> {
    return this.#keys.describeKey(name);
  }

  listKeys(): Promise<string[]> {
    return this.#keys.listKeys();
  }

  rotate(name: string): Promise<KeyInfo> {
    return this.#keys.rotate(name);
  }

  rotateDue(): Promise<string[]> {
    return this.#keys.rotateDue();
  }

  configureKey(
    name: string,
    opts: { minDecryptionVersion?: number; minEncryptionVersion?: number; rotationPeriodSeconds?: number | null },
  ): Promise<KeyInfo> {
    return this.#keys.configureKey(name, opts);
  }

  encrypt(name: string, plaintext: Uint8Array, aad?: Uint8Array): Promise<Buffer> {
    return this.#keys.encrypt(name, plaintext, aad);
  }

  decrypt(envelope: Uint8Array, aad?: Uint8Array): Promise<Buffer> {
    return this.#keys.decrypt(envelope, aad);
  }

  rewrap(envelope: Uint8Array, aad?: Uint8Array): Promise<Buffer> {
    return this.#keys.rewrap(envelope, aad);
  }

  generateDataKey(
    name: string,
    opts: { bytes?: 16 | 32; plaintext?: boolean } = {},
  ): Promise<{ wrapped: Buffer; plaintext?: Buffer }> {
    return this.#keys.generateDataKey(name, opts);
  }

  unwrapDataKey(wrapped: Uint8Array): Promise<Buffer> {
    return this.#keys.unwrapDataKey(wrapped);
  }

  exportKey(name: string, version: number): Promise<Buffer> {
    return this.#keys.exportKey(name, version);
  }

  // ---- destruction --------------------------------------------------------------------------

  destroyVersions(opts: {
    request: string;
    approvals: readonly DestructionApproval[];
    wipeWaitMs?: number;
  }): Promise<{ certificate: DestructionCertificate; wipe: WipeReport }> {
    return this.#keys.destroyVersions(opts);
  }

  destructionRequest(o: { keyName: string; versions: number[]; reason: string; validHours?: number }): Promise<string> {
    return this.#keys.destructionRequest(o);
  }

  forgetDestroyed(): Promise<void> {
    return this.#keys.forgetDestroyed();
  }

  certificates(name?: string): Promise<DestructionCertificate[]> {
    return this.#keys.certificates(name);
  }
}
