import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { CryptoError } from './errors.ts';
import { Sm2PrivateKey, Sm2PublicKey } from './sm2-keys.ts';
import { sm2Decrypt, sm2Encrypt, sm2Sign, sm2Verify } from './sm2.ts';

describe('SM2 wrapper', () => {
  const key = Sm2PrivateKey.generate();
  it('round-trips keys through PEM and DER', () => {
    assert.equal(Sm2PrivateKey.fromPem(key.toPem()).publicKey.hex, key.publicKey.hex);
    assert.equal(Sm2PrivateKey.fromPem(key.toDer()).publicKey.hex, key.publicKey.hex);
    assert.equal(Sm2PublicKey.fromPem(key.publicKey.toDer()).hex, key.publicKey.hex);
    // PEM as bytes (a .pem file read without an encoding), with a BOM or leading blank lines too.
    for (const prefix of ['', '\uFEFF', '\n\n']) {
      assert.equal(Sm2PrivateKey.fromPem(Buffer.from(prefix + key.toPem())).publicKey.hex, key.publicKey.hex);
      assert.equal(Sm2PublicKey.fromPem(new Uint8Array(Buffer.from(prefix + key.publicKey.toPem()))).hex, key.publicKey.hex);
    }
  });
  it('signs and verifies any message, in DER and raw forms, and a changed byte fails', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 300 }), fc.nat(), (msg, pos) => {
        const m = Buffer.from(msg);
        for (const format of ['der', 'raw'] as const) {
          const sig = sm2Sign(key, m, { format });
          assert.equal(sm2Verify(key.publicKey, m, sig, { format }), true);
          const bad = Buffer.from(sig);
          bad[pos % bad.length]! ^= 0x40;
          assert.equal(sm2Verify(key.publicKey, m, bad, { format }), false);
        }
      }),
      { numRuns: 30 },
    );
  });
  it('encrypts C1C3C2 with an explicit 04 C1 and rejects tampering and the wrong key', () => {
    const msg = Buffer.from('data key 0123456789abcdef');
    const raw = sm2Encrypt(key.publicKey, msg);
    assert.equal(raw[0], 4);
    assert.equal(raw.length, 1 + 64 + 32 + msg.length);
    assert.deepEqual(sm2Decrypt(key, raw), msg);
    const asn1 = sm2Encrypt(key.publicKey, msg, { format: 'asn1' });
    assert.equal(asn1[0], 0x30);
    assert.deepEqual(sm2Decrypt(key, asn1, { format: 'asn1' }), msg);
    const tampered = Buffer.from(raw);
    tampered[raw.length - 1]! ^= 1;
    assert.throws(
      () => sm2Decrypt(key, tampered),
      (e: CryptoError) => e.code === 'auth-failed',
    );
    assert.throws(() => sm2Decrypt(Sm2PrivateKey.generate(), raw), CryptoError);
    assert.throws(
      () => sm2Decrypt(key, raw.subarray(0, 90)),
      (e: CryptoError) => e.code === 'truncated',
    );
    assert.throws(
      () => sm2Encrypt(key.publicKey, Buffer.alloc(0)),
      (e: CryptoError) => e.code === 'bad-input',
    );
  });
});
