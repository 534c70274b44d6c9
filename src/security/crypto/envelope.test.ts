import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { algorithmFor, ENVELOPE_ALGORITHMS, keyBytesFor, openEnvelope, readEnvelopeHeader, sealEnvelope } from './envelope.ts';
import type { CryptoError } from './errors.ts';
import { rsa3072Generate, rsaOaepDecrypt, rsaOaepEncrypt, rsaPssSign, rsaPssVerify } from './fallback.ts';

describe('envelope', () => {
  for (const alg of ENVELOPE_ALGORITHMS) {
    it(`${alg}: describes itself, opens with the right key and refuses tampering`, () => {
      const key = randomBytes(keyBytesFor(alg));
      const aad = Buffer.from('Patient/123');
      const env = sealEnvelope({ alg, keyId: 'records', keyVersion: 3, key }, Buffer.from('身份证 440106199001011235'), aad);
      const { header } = readEnvelopeHeader(env);
      assert.deepEqual([header.v, header.alg, header.kid, header.kv], [1, alg, 'records', 3]);
      assert.equal(openEnvelope(env, key, aad).toString(), '身份证 440106199001011235');
      assert.throws(
        () => openEnvelope(env, key, Buffer.from('Patient/124')),
        (e: CryptoError) => e.code === 'auth-failed',
        'bound to its associated data',
      );
      assert.throws(
        () => openEnvelope(env, randomBytes(keyBytesFor(alg)), aad),
        (e: CryptoError) => e.code === 'auth-failed',
        'wrong key',
      );
      const body = Buffer.from(env);
      body[body.length - 1]! ^= 1;
      assert.throws(
        () => openEnvelope(body, key, aad),
        (e: CryptoError) => e.code === 'auth-failed',
        'tampered body',
      );
      // Changing the key version in the header (e.g. to dodge a minimum version) breaks authentication.
      const relabeled = Buffer.from(env.toString('latin1').replace('"kv":3', '"kv":4'), 'latin1');
      assert.throws(
        () => openEnvelope(relabeled, key, aad),
        (e: CryptoError) => e.code === 'auth-failed',
      );
    });
  }

  it('names unknown algorithms, versions and truncation', () => {
    const key = randomBytes(16);
    const env = sealEnvelope({ alg: 'SM4-GCM', keyId: 'k', keyVersion: 1, key }, Buffer.from('x'));
    const unknownAlg = Buffer.from(env.toString('latin1').replace('"SM4-GCM"', '"SM9-XYZ"'), 'latin1');
    assert.throws(
      () => openEnvelope(unknownAlg, key),
      (e: CryptoError) => e.code === 'unknown-algorithm' && /SM9-XYZ is not known/.test(e.message),
    );
    const v2 = Buffer.concat([Buffer.from('MMX2'), env.subarray(4)]);
    assert.throws(
      () => openEnvelope(v2, key),
      (e: CryptoError) => e.code === 'unsupported-version',
    );
    assert.throws(
      () => openEnvelope(env.subarray(0, 10), key),
      (e: CryptoError) => e.code === 'truncated',
    );
    assert.throws(
      () => openEnvelope(Buffer.from('hello world'), key),
      (e: CryptoError) => e.code === 'bad-input',
    );
    assert.throws(
      () => sealEnvelope({ alg: 'SM4-GCM', keyId: 'k', keyVersion: 1, key: randomBytes(32) }, Buffer.from('x')),
      (e: CryptoError) => e.code === 'bad-key',
    );
    assert.equal(algorithmFor('national'), 'SM4-GCM');
    assert.equal(algorithmFor('international'), 'AES-256-GCM');
  });
});

describe('RSA-3072 fallback', () => {
  const { privateKey, publicKey } = rsa3072Generate();
  it('encrypts with OAEP and signs with PSS', () => {
    const ct = rsaOaepEncrypt(publicKey, Buffer.from('data key'));
    assert.equal(rsaOaepDecrypt(privateKey, ct).toString(), 'data key');
    const sig = rsaPssSign(privateKey, Buffer.from('m'));
    assert.equal(rsaPssVerify(publicKey, Buffer.from('m'), sig), true);
    assert.equal(rsaPssVerify(publicKey, Buffer.from('n'), sig), false);
    assert.equal(rsaPssVerify(publicKey, Buffer.from('m'), sig.subarray(1)), false);
    const bad = Buffer.from(ct);
    bad[5]! ^= 1;
    assert.throws(
      () => rsaOaepDecrypt(privateKey, bad),
      (e: CryptoError) => e.code === 'decrypt-failed',
    );
  });
});
