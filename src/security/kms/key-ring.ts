// The site's named keys, modelled on Vault's Transit engine: versions wrapped under the
// customer master key (sealing.ts), rotation and minimum versions, envelope encryption and
// data keys, and destruction on custodians' signed approval (destruction.ts). Unwrapped
// material is cached in this process and zeroed when the site seals or a version is destroyed.
import { randomBytes } from 'node:crypto';
import type { Queryable } from '../../db/index.ts';
import {
  algorithmFor,
  keyBytesFor,
  openEnvelope,
  readEnvelopeHeader,
  sealEnvelope,
  type EnvelopeAlgorithm,
} from '../crypto/index.ts';
import type { DestructionApproval, DestructionCertificate } from './certificate.ts';
import { destroyKeyVersions, makeDestructionRequest, rewriteKeyVersions, type WipeReport } from './destruction.ts';
import { KmsError } from './errors.ts';
import { unwrapUnder, wrapUnder } from './master-key.ts';
import type { KmsContext, MasterKey } from './sealing.ts';

export interface KeyInfo {
  name: string;
  algorithm: EnvelopeAlgorithm;
  exportable: boolean;
  latestVersion: number;
  minDecryptionVersion: number;
  minEncryptionVersion: number;
  rotationPeriodSeconds: number | null;
  versions: Array<{ version: number; createdAt: string; destroyedAt: string | null }>;
}

interface KeyRow {
  name: string;
  algorithm: EnvelopeAlgorithm;
  exportable: boolean;
  latest_version: number;
  min_decryption_version: number;
  min_encryption_version: number;
  rotation_period_seconds: number | null;
}

const KEY_NAME = /^[a-z][a-z0-9._-]{0,63}$/;

export class KeyRing {
  readonly #ctx: KmsContext;
  readonly #master: MasterKey;
  readonly #material = new Map<string, Buffer>();

  constructor(ctx: KmsContext, master: MasterKey) {
    this.#ctx = ctx;
    this.#master = master;
  }

  #now(): Date {
    return this.#ctx.now?.() ?? new Date();
  }

  /** Zeroes every cached copy (the site seals). */
  clear(): void {
    for (const m of this.#material.values()) m.fill(0);
    this.#material.clear();
  }

  /** Creates the named key on first use (for keys the site itself needs, such as `identity`). */
  async ensureKey(name: string): Promise<void> {
    try {
      await this.createKey(name);
    } catch (e) {
      if (!(e instanceof KmsError && e.code === 'key-exists')) throw e;
    }
  }

  // ---- named keys -------------------------------------------------------------------------

  /**
   * `material`: import this key instead of generating one — for a region-wide key every site
   * must hold the same (the EMPI blind-index key); imported keys do not rotate on their own.
   */
  async createKey(
    name: string,
    opts: { exportable?: boolean; rotationPeriodSeconds?: number; algorithm?: EnvelopeAlgorithm; material?: Uint8Array } = {},
  ): Promise<KeyInfo> {
    const { cmk } = this.#master.unsealed();
    if (!KEY_NAME.test(name))
      throw new KmsError(
        'bad-request',
        `key name ${JSON.stringify(name)} must be lower-case letters, digits, '.', '_' or '-' ` +
          '(at most 64), starting with a letter',
      );
    if (
      opts.rotationPeriodSeconds !== undefined &&
      (!Number.isInteger(opts.rotationPeriodSeconds) || opts.rotationPeriodSeconds < 60)
    )
      throw new KmsError('bad-request', 'rotation period must be a whole number of seconds, at least 60');
    const algorithm = opts.algorithm ?? algorithmFor(this.#ctx.policy);
    if (opts.material && opts.material.length !== keyBytesFor(algorithm))
      throw new KmsError(
        'bad-request',
        `imported key material must be ${keyBytesFor(algorithm)} bytes for ${algorithm} (got ${opts.material.length})`,
      );
    if (opts.material && opts.rotationPeriodSeconds !== undefined)
      throw new KmsError('bad-request', 'an imported key cannot rotate on its own: every site must rotate it together');
    await this.#ctx.db.transaction(async (tx) => {
      const r = await tx.query(
        `INSERT INTO kms_key (name, algorithm, exportable, latest_version, rotation_period_seconds) VALUES ($1, $2, $3, 1, $4)
         ON CONFLICT (name) DO NOTHING RETURNING name`,
        [name, algorithm, opts.exportable ?? false, opts.rotationPeriodSeconds ?? null],
      );
      if (r.rows.length === 0) throw new KmsError('key-exists', `key ${name} already exists`);
      await this.#insertVersion(tx, cmk, name, 1, algorithm, opts.material);
    });
    return this.describeKey(name);
  }

  /** The current material of a named key, for keyed hashing inside this process (never exported). */
  async macKey(name: string): Promise<{ version: number; key: Buffer }> {
    const { version, key } = await this.#encryptionKey(name);
    return { version, key };
  }

  async describeKey(name: string): Promise<KeyInfo> {
    const row = await this.#key(this.#ctx.db, name);
    const { rows } = await this.#ctx.db.query<{ version: number; created_at: Date; destroyed_at: Date | null }>(
      'SELECT version, created_at, destroyed_at FROM kms_key_version WHERE name = $1 ORDER BY version',
      [name],
    );
    return {
      name,
      algorithm: row.algorithm,
      exportable: row.exportable,
      latestVersion: row.latest_version,
      minDecryptionVersion: row.min_decryption_version,
      minEncryptionVersion: row.min_encryption_version,
      rotationPeriodSeconds: row.rotation_period_seconds,
      versions: rows.map((v) => ({
        version: v.version,
        createdAt: new Date(v.created_at).toISOString(),
        destroyedAt: v.destroyed_at ? new Date(v.destroyed_at).toISOString() : null,
      })),
    };
  }

  async listKeys(): Promise<string[]> {
    const { rows } = await this.#ctx.db.query<{ name: string }>('SELECT name FROM kms_key ORDER BY name');
    return rows.map((r) => r.name);
  }

  async rotate(name: string): Promise<KeyInfo> {
    const { cmk } = this.#master.unsealed();
    await this.#ctx.db.transaction(async (tx) => {
      const row = await this.#key(tx, name, { forUpdate: true });
      const alive = await tx.query('SELECT 1 FROM kms_key_version WHERE name = $1 AND destroyed_at IS NULL LIMIT 1', [name]);
      if (alive.rows.length === 0)
        throw new KmsError(
          'version-destroyed',
          `key ${name} was destroyed (every version); create a new key instead of rotating it`,
        );
      await this.#insertVersion(tx, cmk, name, row.latest_version + 1, row.algorithm);
      await tx.query('UPDATE kms_key SET latest_version = $2 WHERE name = $1', [name, row.latest_version + 1]);
    });
    return this.describeKey(name);
  }

  /** Rotates every key whose latest version is older than its rotation period. */
  async rotateDue(): Promise<string[]> {
    this.#master.unsealed();
    const { rows } = await this.#ctx.db.query<{ name: string }>(
      `SELECT k.name FROM kms_key k JOIN kms_key_version v ON v.name = k.name AND v.version = k.latest_version
       WHERE k.rotation_period_seconds IS NOT NULL
         AND v.created_at + make_interval(secs => k.rotation_period_seconds) <= $1::timestamptz`,
      [this.#now().toISOString()],
    );
    for (const r of rows) await this.rotate(r.name);
    return rows.map((r) => r.name);
  }

  async configureKey(
    name: string,
    opts: { minDecryptionVersion?: number; minEncryptionVersion?: number; rotationPeriodSeconds?: number | null },
  ): Promise<KeyInfo> {
    await this.#ctx.db.transaction(async (tx) => {
      const row = await this.#key(tx, name, { forUpdate: true });
      const minDec = opts.minDecryptionVersion ?? row.min_decryption_version;
      const minEnc = opts.minEncryptionVersion ?? row.min_encryption_version;
      if (!Number.isInteger(minDec) || minDec < 1 || minDec > row.latest_version)
        throw new KmsError('bad-request', `minimum decryption version must be 1..${row.latest_version}`);
      if (!Number.isInteger(minEnc) || minEnc < 0 || minEnc > row.latest_version || (minEnc !== 0 && minEnc < minDec))
        throw new KmsError('bad-request', `minimum encryption version must be 0 (latest) or ${minDec}..${row.latest_version}`);
      const period = opts.rotationPeriodSeconds === undefined ? row.rotation_period_seconds : opts.rotationPeriodSeconds;
      await tx.query(
        `UPDATE kms_key SET min_decryption_version = $2, min_encryption_version = $3, rotation_period_seconds = $4
          WHERE name = $1`,
        [name, minDec, minEnc, period],
      );
    });
    return this.describeKey(name);
  }

  // ---- using keys -------------------------------------------------------------------------

  async encrypt(name: string, plaintext: Uint8Array, aad?: Uint8Array): Promise<Buffer> {
    const { version, algorithm, key } = await this.#encryptionKey(name);
    return sealEnvelope({ alg: algorithm, keyId: name, keyVersion: version, key }, plaintext, aad);
  }

  async decrypt(envelope: Uint8Array, aad?: Uint8Array): Promise<Buffer> {
    const { header } = readEnvelopeHeader(envelope);
    const key = await this.#decryptionKey(header.kid, header.kv);
    return openEnvelope(envelope, key, aad);
  }

  /** Re-encrypts to the key's current encryption version; the plaintext never leaves the KMS. */
  async rewrap(envelope: Uint8Array, aad?: Uint8Array): Promise<Buffer> {
    const { header } = readEnvelopeHeader(envelope);
    const plaintext = await this.decrypt(envelope, aad);
    try {
      return await this.encrypt(header.kid, plaintext, aad);
    } finally {
      plaintext.fill(0);
    }
  }

  /** A fresh data key wrapped under a named key (envelope encryption). */
  async generateDataKey(
    name: string,
    opts: { bytes?: 16 | 32; plaintext?: boolean } = {},
  ): Promise<{ wrapped: Buffer; plaintext?: Buffer }> {
    const dk = randomBytes(opts.bytes ?? 16);
    const wrapped = await this.encrypt(name, dk, Buffer.from(`datakey:${name}`));
    if (opts.plaintext === false) {
      dk.fill(0);
      return { wrapped };
    }
    return { wrapped, plaintext: dk };
  }

  async unwrapDataKey(wrapped: Uint8Array): Promise<Buffer> {
    const { header } = readEnvelopeHeader(wrapped);
    return this.decrypt(wrapped, Buffer.from(`datakey:${header.kid}`));
  }

  /** Key material of an exportable key version (non-exportable keys never leave). */
  async exportKey(name: string, version: number): Promise<Buffer> {
    const row = await this.#key(this.#ctx.db, name);
    if (!row.exportable) throw new KmsError('not-exportable', `key ${name} is not exportable`);
    return Buffer.from(await this.#decryptionKey(name, version));
  }

  // ---- destruction ------------------------------------------------------------------------

  /**
   * Destroys the key versions a request names, once at least two custodians of this site's
   * master key signed it (`approvals`, see certificate.ts), and returns the signed certificate
   * (also stored permanently). Then rewrites the table so no old row version keeps the wrapped
   * material (`wipe`); `wipeWaitMs` bounds the wait for older transactions (default 30 s).
   */
  async destroyVersions(opts: {
    request: string;
    approvals: readonly DestructionApproval[];
    wipeWaitMs?: number;
  }): Promise<{ certificate: DestructionCertificate; wipe: WipeReport }> {
    const { cmkId, signing } = this.#master.unsealed();
    const { certificate, xid } = await destroyKeyVersions(
      {
        db: this.#ctx.db,
        siteId: this.#ctx.siteId,
        now: this.#now(),
        cmkId,
        signing,
        custodians: await this.#master.custodians(),
        forget: (name, version) => this.#forget(name, version),
        lockKey: (tx, name) => this.#key(tx, name, { forUpdate: true }),
      },
      opts,
    );
    const wipe = await rewriteKeyVersions(this.#ctx.db, {
      afterXid: xid,
      ...(opts.wipeWaitMs !== undefined ? { waitMs: opts.wipeWaitMs } : {}),
    });
    return { certificate, wipe };
  }

  /**
   * A request to destroy versions of a key, for custodians to approve (`approveRequest`). Needs
   * no unsealing; refuses versions that do not exist or are gone already.
   */
  async destructionRequest(o: { keyName: string; versions: number[]; reason: string; validHours?: number }): Promise<string> {
    const root = await this.#master.root();
    if (!root) throw new KmsError('not-initialized', `the KMS of site ${this.#ctx.siteId} is not initialized`);
    return makeDestructionRequest({
      ...o,
      site: this.#ctx.siteId,
      cmkId: root.cmk_id,
      key: await this.describeKey(o.keyName),
      now: this.#now(),
    });
  }

  /**
   * Zeroes this process's copies of versions destroyed since they were loaded (by another API
   * node, or by `medmesh keys destroy` beside a running site). A site calls it every few seconds;
   * any use of such a copy checks first anyway.
   */
  async forgetDestroyed(): Promise<void> {
    if (this.#material.size === 0) return;
    const { rows } = await this.#ctx.db.query<{ name: string; version: number }>(
      'SELECT name, version FROM kms_key_version WHERE destroyed_at IS NOT NULL AND name = ANY($1::text[])',
      [[...new Set([...this.#material.keys()].map((k) => k.slice(0, k.lastIndexOf(':'))))]],
    );
    for (const r of rows) this.#forget(r.name, r.version);
  }

  async certificates(name?: string): Promise<DestructionCertificate[]> {
    const pub = (await this.#master.signingPublicKey())?.toPem() ?? '';
    const { rows } = await this.#ctx.db.query<{ document: string; signature: Buffer }>(
      `SELECT document, signature FROM kms_destruction_certificate ${name ? 'WHERE key_name = $1' : ''} ORDER BY issued_at`,
      name ? [name] : [],
    );
    return rows.map((r) => ({
      document: r.document,
      signature: Buffer.from(r.signature).toString('base64'),
      signingPublicKey: pub,
    }));
  }

  async #key(q: Queryable, name: string, opts: { forUpdate?: boolean } = {}): Promise<KeyRow> {
    const { rows } = await q.query<KeyRow>(
      `SELECT name, algorithm, exportable, latest_version, min_decryption_version, min_encryption_version, rotation_period_seconds
         FROM kms_key WHERE name = $1${opts.forUpdate ? ' FOR UPDATE' : ''}`,
      [name],
    );
    if (!rows[0]) throw new KmsError('unknown-key', `no key named ${name}`);
    return rows[0];
  }

  async #insertVersion(
    tx: Queryable,
    cmk: Buffer,
    name: string,
    version: number,
    algorithm: EnvelopeAlgorithm,
    imported?: Uint8Array,
  ): Promise<void> {
    const material = imported ? Buffer.from(imported) : randomBytes(keyBytesFor(algorithm));
    // created_at from the KMS clock, which is also what rotation periods are measured against.
    await tx.query('INSERT INTO kms_key_version (name, version, material_wrapped, created_at) VALUES ($1, $2, $3, $4)', [
      name,
      version,
      wrapUnder(cmk, `${name}:${version}`, material),
      this.#now().toISOString(),
    ]);
  }

  async #encryptionKey(name: string): Promise<{ version: number; algorithm: EnvelopeAlgorithm; key: Buffer }> {
    this.#master.unsealed();
    let row = await this.#key(this.#ctx.db, name);
    if (row.rotation_period_seconds !== null && (await this.rotateDue()).includes(name))
      row = await this.#key(this.#ctx.db, name);
    const version = row.min_encryption_version || row.latest_version;
    return { version, algorithm: row.algorithm, key: await this.#decryptionKey(name, version) };
  }

  async #decryptionKey(name: string, version: number): Promise<Buffer> {
    const { cmk } = this.#master.unsealed();
    const cached = this.#material.get(`${name}:${version}`);
    // One query per use, cached or not: a version destroyed by another node or process since it
    // was loaded here must stop decrypting at once (and its copy here is zeroed).
    const { rows } = await this.#ctx.db.query<{
      min_decryption_version: number;
      found: boolean;
      destroyed: boolean;
      material_wrapped: Buffer | null;
    }>(
      `SELECT k.min_decryption_version, v.version IS NOT NULL AS found, v.destroyed_at IS NOT NULL AS destroyed,
              CASE WHEN $3 THEN NULL ELSE v.material_wrapped END AS material_wrapped
         FROM kms_key k LEFT JOIN kms_key_version v ON v.name = k.name AND v.version = $2 WHERE k.name = $1`,
      [name, version, cached !== undefined],
    );
    const row = rows[0];
    if (!row) throw new KmsError('unknown-key', `no key named ${name}`);
    if (version < row.min_decryption_version)
      throw new KmsError(
        'version-below-minimum',
        `version ${version} of key ${name} is below the minimum decryption version ${row.min_decryption_version}; ` +
          'rewrap data before raising the minimum',
      );
    if (!row.found) throw new KmsError('unknown-key', `key ${name} has no version ${version}`);
    if (row.destroyed) {
      this.#forget(name, version);
      throw new KmsError(
        'version-destroyed',
        `version ${version} of key ${name} was destroyed; data encrypted under it cannot be decrypted`,
      );
    }
    if (cached) return cached;
    if (!row.material_wrapped) throw new KmsError('unknown-key', `key ${name} has no material for version ${version}`);
    const material = unwrapUnder(cmk, `${name}:${version}`, row.material_wrapped);
    this.#material.set(`${name}:${version}`, material);
    return material;
  }

  #forget(name: string, version: number): void {
    this.#material.get(`${name}:${version}`)?.fill(0);
    this.#material.delete(`${name}:${version}`);
  }
}
