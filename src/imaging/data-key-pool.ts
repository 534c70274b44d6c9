// Data keys for image files: one fresh key per file, under the KMS key for image files (made
// on first use). A few are made ahead, in the background, so the KMS's round trips stay off the
// ingest path; each is still used for one file only, and one older than SPARE_KEY_MAX_AGE_MS
// (or any, once the KMS is sealed) is destroyed unused: a key rotation reaches new files within
// that time.
import type { Kms } from '../security/kms/index.ts';
import { imagingFail, type ImagingResult } from './errors.ts';

export const IMAGING_KEY = 'imaging-files';

export interface DataKey {
  wrapped: Buffer;
  plaintext: Buffer;
  madeAt: number;
}

/** Data keys kept ready, and how long one may wait for its file. */
const SPARE_KEYS = 2;
const SPARE_KEY_MAX_AGE_MS = 2000;

export class DataKeyPool {
  readonly #kms: Kms;
  /** The KMS key for file data keys exists (created on first use, then not asked again). */
  #keyReady = false;
  #spares: DataKey[] = [];
  #refilling: Promise<void> | undefined;

  constructor(kms: Kms) {
    this.#kms = kms;
  }

  /** A fresh data key for one file (its plaintext is the caller's to wipe). */
  async next(): Promise<ImagingResult<DataKey>> {
    const now = Date.now();
    if (!this.#kms.signingKey()) this.#dropSpares(() => true);
    else this.#dropSpares((k) => now - k.madeAt > SPARE_KEY_MAX_AGE_MS);
    const spare = this.#spares.shift();
    if (spare) {
      this.#refill();
      return { ok: true, value: spare };
    }
    try {
      const k = await this.#newDataKey();
      this.#refill();
      return { ok: true, value: k };
    } catch (e) {
      return imagingFail('sealed', `cannot encrypt the file: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  async #newDataKey(): Promise<DataKey> {
    if (!this.#keyReady) await this.#kms.ensureKey(IMAGING_KEY);
    this.#keyReady = true;
    const k = await this.#kms.generateDataKey(IMAGING_KEY);
    return { wrapped: k.wrapped, plaintext: k.plaintext!, madeAt: Date.now() };
  }

  /** Tops the spare keys up in the background; a failure leaves them short (the next file asks the KMS itself). */
  #refill(): void {
    if (this.#refilling || this.#spares.length >= SPARE_KEYS) return;
    this.#refilling = (async () => {
      try {
        while (this.#spares.length < SPARE_KEYS && this.#kms.signingKey()) this.#spares.push(await this.#newDataKey());
      } catch {
        // sealed or the database unreachable: the ingest path reports it when it asks itself
      } finally {
        this.#refilling = undefined;
      }
    })();
  }

  #dropSpares(stale: (k: DataKey) => boolean): void {
    for (const k of this.#spares.filter(stale)) k.plaintext.fill(0);
    this.#spares = this.#spares.filter((k) => !stale(k));
  }
}
