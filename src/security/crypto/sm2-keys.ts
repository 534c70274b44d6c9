// SM2 keys as PKCS#8 / SubjectPublicKeyInfo (id-ecPublicKey with the SM2 curve OID
// 1.2.156.10197.1.301), the form `openssl pkey` reads and writes. Node's OpenSSL parses
// any PEM/DER form; we normalise through it and slice the fixed-layout DER it emits.
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { sm2 } from 'sm-crypto-v2';
import { CryptoError } from './errors.ts';

const SPKI_PREFIX = Buffer.from('3059301306072a8648ce3d020106082a811ccf5501822d034200', 'hex');
const PKCS8_PREFIX = Buffer.from('308187020100301306072a8648ce3d020106082a811ccf5501822d046d306b0201010420', 'hex');
const PKCS8_MIDDLE = Buffer.from('a144034200', 'hex');
/** Order n of the SM2 curve: private keys are 1 <= d <= n - 2. */
const SM2_N = BigInt('0xfffffffeffffffffffffffffffffffff7203df6b21c6052b53bbf40939d54123');

export class Sm2PublicKey {
  /** Uncompressed point, 65 bytes: 04 || X || Y. */
  readonly point: Buffer;
  #precomputed: ReturnType<typeof sm2.precomputePublicKey> | undefined;

  private constructor(point: Buffer) {
    this.point = point;
  }

  static fromPoint(point: Uint8Array): Sm2PublicKey {
    const p = Buffer.from(point);
    if (p.length !== 65 || p[0] !== 4 || !onCurve(p))
      throw new CryptoError('bad-key', 'SM2 public key must be an uncompressed point (04 || X || Y, 65 bytes) on the SM2 curve');
    return new Sm2PublicKey(p);
  }

  static fromPem(pem: string | Uint8Array): Sm2PublicKey {
    let key: KeyObject;
    try {
      key = createPublicKey(keyInput(pem, 'spki'));
    } catch (e) {
      throw new CryptoError('bad-pem', `not a public key in PEM or SPKI DER (${e instanceof Error ? e.message : String(e)})`);
    }
    const der = key.export({ type: 'spki', format: 'der' });
    if (der.length !== SPKI_PREFIX.length + 65 || !der.subarray(0, SPKI_PREFIX.length).equals(SPKI_PREFIX))
      throw new CryptoError('bad-key', 'public key is not an SM2 key (curve 1.2.156.10197.1.301)');
    return Sm2PublicKey.fromPoint(der.subarray(SPKI_PREFIX.length));
  }

  get hex(): string {
    return this.point.toString('hex');
  }

  /** Precomputed multiples for fast verification, built on first use. */
  get precomputed(): ReturnType<typeof sm2.precomputePublicKey> {
    return (this.#precomputed ??= sm2.precomputePublicKey(this.hex));
  }

  toDer(): Buffer {
    return Buffer.concat([SPKI_PREFIX, this.point]);
  }

  toPem(): string {
    return pem('PUBLIC KEY', this.toDer());
  }
}

export class Sm2PrivateKey {
  readonly #d: Buffer;
  readonly publicKey: Sm2PublicKey;

  private constructor(d: Buffer) {
    this.#d = d;
    this.publicKey = Sm2PublicKey.fromPoint(Buffer.from(sm2.getPublicKeyFromPrivateKey(d.toString('hex')), 'hex'));
  }

  static generate(): Sm2PrivateKey {
    return new Sm2PrivateKey(Buffer.from(sm2.generateKeyPairHex().privateKey.padStart(64, '0'), 'hex'));
  }

  static fromScalar(d: Uint8Array): Sm2PrivateKey {
    if (d.length !== 32) throw new CryptoError('bad-key', `SM2 private key must be 32 bytes, got ${d.length}`);
    const v = BigInt(`0x${Buffer.from(d).toString('hex')}`);
    if (v < 1n || v > SM2_N - 2n) throw new CryptoError('bad-key', 'SM2 private key is out of range [1, n-2]');
    return new Sm2PrivateKey(Buffer.from(d));
  }

  static fromPem(pem: string | Uint8Array): Sm2PrivateKey {
    let key: KeyObject;
    try {
      key = createPrivateKey(keyInput(pem, 'pkcs8'));
    } catch (e) {
      throw new CryptoError('bad-pem', `not a private key in PEM or PKCS#8 DER (${e instanceof Error ? e.message : String(e)})`);
    }
    const der = key.export({ type: 'pkcs8', format: 'der' });
    if (
      der.length !== PKCS8_PREFIX.length + 32 + PKCS8_MIDDLE.length + 65 ||
      !der.subarray(0, PKCS8_PREFIX.length).equals(PKCS8_PREFIX)
    ) {
      throw new CryptoError('bad-key', 'private key is not an SM2 key (curve 1.2.156.10197.1.301)');
    }
    return Sm2PrivateKey.fromScalar(der.subarray(PKCS8_PREFIX.length, PKCS8_PREFIX.length + 32));
  }

  /** The scalar as hex, for the signing library only; never logged or exported by default. */
  scalarHex(): string {
    return this.#d.toString('hex');
  }

  toDer(): Buffer {
    return Buffer.concat([PKCS8_PREFIX, this.#d, PKCS8_MIDDLE, this.publicKey.point]);
  }

  toPem(): string {
    return pem('PRIVATE KEY', this.toDer());
  }
}

/** A key as given: PEM text (a string, or the bytes of a .pem file as read) or DER bytes. */
function keyInput<T extends 'spki' | 'pkcs8'>(
  pem: string | Uint8Array,
  type: T,
): string | { key: Buffer; format: 'der'; type: T } {
  if (typeof pem === 'string') return pem;
  const bytes = Buffer.from(pem);
  // DER starts with a SEQUENCE tag (0x30), never with text: PEM is recognised by its armour.
  const text = bytes
    .toString('latin1')
    .replace(/^\uFEFF|^\u00EF\u00BB\u00BF/, '')
    .trimStart();
  return text.startsWith('-----BEGIN') ? bytes.toString('utf8') : { key: bytes, format: 'der', type };
}

function onCurve(point: Buffer): boolean {
  try {
    return sm2.verifyPublicKey(point.toString('hex'));
  } catch {
    return false;
  }
}

function pem(label: string, der: Buffer): string {
  return `-----BEGIN ${label}-----\n${der.toString('base64').replace(/.{1,64}/g, '$&\n')}-----END ${label}-----\n`;
}
