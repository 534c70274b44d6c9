// Official test vectors: GM/T 0004 (SM3), GM/T 0002 (SM4), GM/T 0003.5 (SM2), RFC 8998 (SM4-GCM).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CryptoError } from './errors.ts';
import { sm3, hmacSm3 } from './sm3.ts';
import { sm4BlockEncryptor, sm4CbcDecrypt, sm4CbcEncrypt, sm4EncryptBlock, sm4GcmDecrypt, sm4GcmEncrypt } from './sm4.ts';
import { Sm2PrivateKey } from './sm2-keys.ts';
import { sm2Decrypt, sm2Sign, sm2Verify } from './sm2.ts';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('SM3 (GM/T 0004-2012 Appendix A)', () => {
  it('hashes "abc"', () => {
    assert.equal(sm3(Buffer.from('abc')).toString('hex'), '66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0');
  });
  it('hashes the 512-bit message "abcd" x 16', () => {
    assert.equal(
      sm3(Buffer.from('abcd'.repeat(16))).toString('hex'),
      'debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732',
    );
  });
  it('hashes incrementally the same as at once, and HMAC depends on the key', () => {
    assert.deepEqual(sm3(Buffer.from('ab'), Buffer.from('c')), sm3(Buffer.from('abc')));
    assert.notDeepEqual(hmacSm3(Buffer.from('k1'), Buffer.from('m')), hmacSm3(Buffer.from('k2'), Buffer.from('m')));
    assert.equal(hmacSm3(Buffer.from('k'), Buffer.from('m')).length, 32);
  });
});

describe('SM4 (GM/T 0002-2012 Appendix A)', () => {
  const key = hex('0123456789abcdeffedcba9876543210');
  it('encrypts example 1', () => {
    assert.equal(sm4EncryptBlock(key, key).toString('hex'), '681edf34d206965e86b3e94f536e4246');
  });
  it('encrypts example 2: one million iterations', () => {
    const encrypt = sm4BlockEncryptor(key);
    let block: Buffer = Buffer.from(key);
    for (let i = 0; i < 1_000_000; i++) block = encrypt(block);
    assert.equal(block.toString('hex'), '595298c7c6fd271f0402f804c33d3f66');
  });
  it('round-trips CBC and refuses a wrong key, a short IV and a truncated ciphertext with typed errors', () => {
    const iv = hex('000102030405060708090a0b0c0d0e0f');
    const ct = sm4CbcEncrypt(key, iv, Buffer.from('病历 medical record'));
    assert.equal(sm4CbcDecrypt(key, iv, ct).toString(), '病历 medical record');
    assert.throws(
      () => sm4CbcDecrypt(hex('00'.repeat(16)), iv, ct),
      (e: CryptoError) => e.code === 'decrypt-failed' || e.code === 'auth-failed',
    );
    assert.throws(
      () => sm4CbcEncrypt(key.subarray(0, 15), iv, ct),
      (e: CryptoError) => e.code === 'bad-key' && /16 bytes, got 15/.test(e.message),
    );
    assert.throws(
      () => sm4CbcEncrypt(key, iv.subarray(0, 8), ct),
      (e: CryptoError) => e.code === 'bad-input',
    );
    assert.throws(
      () => sm4CbcDecrypt(key, iv, ct.subarray(0, 15)),
      (e: CryptoError) => e.code === 'truncated',
    );
  });
});

describe('SM4-GCM (RFC 8998 Appendix A.1)', () => {
  const key = hex('0123456789ABCDEFFEDCBA9876543210');
  const iv = hex('00001234567800000000ABCD');
  const aad = hex('FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2');
  const pt = hex(
    'AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD' +
      'EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA',
  );
  const ct = hex(
    '17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735' +
      'D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D',
  );
  const tag = hex('83DE3541E4C2B58177E065A9BF7B62EC');
  it('produces the published ciphertext and tag', () => {
    const r = sm4GcmEncrypt(key, iv, pt, aad);
    assert.deepEqual(r.ciphertext, ct);
    assert.deepEqual(r.tag, tag);
    assert.deepEqual(sm4GcmDecrypt(key, iv, ct, tag, aad), pt);
  });
  it('rejects a tampered ciphertext, tag or associated data, and a wrong key', () => {
    const flip = (b: Buffer, i: number) => Buffer.from(b.map((x, j) => (j === i ? x ^ 1 : x)));
    for (const [c, t, a, k] of [
      [flip(ct, 10), tag, aad, key],
      [ct, flip(tag, 0), aad, key],
      [ct, tag, flip(aad, 3), key],
      [ct, tag, aad, flip(key, 15)],
    ] as const) {
      assert.throws(
        () => sm4GcmDecrypt(k, iv, c, t, a),
        (e: CryptoError) => e instanceof CryptoError && e.code === 'auth-failed',
      );
    }
    assert.throws(
      () => sm4GcmDecrypt(key, iv, ct, tag.subarray(0, 12), aad),
      (e: CryptoError) => e.code === 'truncated',
    );
  });
});

describe('SM2 (GM/T 0003.5-2012 Annex A, recommended curve)', () => {
  const priv = Sm2PrivateKey.fromScalar(hex('3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8'));
  const k = hex('59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21');
  it('derives the published public key', () => {
    assert.equal(
      priv.publicKey.hex,
      '0409f9df311e5421a150dd7d161e4bc5c672179fad1833fc076bb08ff356f3502' +
        '0ccea490ce26775a52dc6ea718cc1aa600aed05fbf35e084a6632f6072da9ad13',
    );
  });
  it('signs "message digest" with ID 1234567812345678 and the fixed k to the published r, s', () => {
    const sig = sm2Sign(priv, Buffer.from('message digest'), { format: 'raw', fixedK: k });
    assert.equal(
      sig.toString('hex').toUpperCase(),
      'F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3' +
        'B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA',
    );
    assert.equal(sm2Verify(priv.publicKey, Buffer.from('message digest'), sig, { format: 'raw' }), true);
    assert.equal(
      sm2Verify(priv.publicKey, Buffer.from('message digest'), sig, { format: 'raw', userId: 'another-id' }),
      false,
      'Z binds the user ID',
    );
  });
  it('decrypts the published "encryption standard" ciphertext in raw C1C3C2 and ASN.1 forms', () => {
    const x1 = '04EBFC718E8D1798620432268E77FEB6415E2EDE0E073C0F4F640ECD2E149A73';
    const y1 = 'E858F9D81E5430A57B36DAAB8F950A3C64E6EE6A63094D99283AFF767E124DF0';
    const c3 = '59983C18F809E262923C53AEC295D30383B54E39D609D160AFCB1908D0BD8766';
    const c2 = '21886CA989CA9C7D58087307CA93092D651EFA';
    assert.equal(sm2Decrypt(priv, hex(`04${x1}${y1}${c3}${c2}`)).toString(), 'encryption standard');
    const asn1 = hex(`307C0220${x1}022100${y1}0420${c3}0413${c2}`);
    assert.equal(sm2Decrypt(priv, asn1, { format: 'asn1' }).toString(), 'encryption standard');
    // Without the explicit 04, the first byte of x1 (also 04) would be taken for the format byte.
    assert.throws(() => sm2Decrypt(priv, hex(`${x1}${y1}${c3}${c2}`).subarray(1)), CryptoError);
  });
});

describe('SM4-GCM on two threads (GcmWorker)', () => {
  it('matches the single-thread result and the RFC 8998 vector, and refuses a wrong tag', async () => {
    const { GcmWorker } = await import('./sm4-gcm-parallel.ts');
    const w = new GcmWorker();
    try {
      const key = hex('0123456789ABCDEFFEDCBA9876543210');
      const iv = hex('00001234567800000000ABCD');
      const aad = hex('FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2');
      const pt = hex(
        'AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD' +
          'EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA',
      );
      const r = await w.encrypt(key, iv, pt, aad);
      assert.equal(r.tag.toString('hex').toUpperCase(), '83DE3541E4C2B58177E065A9BF7B62EC');
      const big = Buffer.alloc(300_001, 7);
      const a = await w.encrypt(key, iv, big, aad);
      const b = sm4GcmEncrypt(key, iv, big, aad);
      assert.deepEqual([a.ciphertext, a.tag], [b.ciphertext, b.tag]);
      assert.deepEqual(await w.decrypt(key, iv, a.ciphertext, a.tag, aad), big);
      const bad = Buffer.from(a.tag);
      bad[0]! ^= 1;
      await assert.rejects(w.decrypt(key, iv, a.ciphertext, bad, aad), (e: CryptoError) => e.code === 'auth-failed');
    } finally {
      await w.close();
    }
  });
});

describe('HMAC-SM3 with a precomputed key schedule', () => {
  it('equals HMAC-SM3 for short, block-size and long keys', async () => {
    const { hmacSm3Keyed } = await import('./sm3.ts');
    for (const len of [0, 1, 16, 63, 64, 65, 200]) {
      const key = Buffer.alloc(len, 7);
      const mac = hmacSm3Keyed(key);
      for (const msg of ['', 'a', 'x'.repeat(1000)])
        assert.deepEqual(
          mac(Buffer.from(msg.slice(0, 3)), Buffer.from(msg.slice(3))),
          hmacSm3(key, Buffer.from(msg)),
          `key ${len}`,
        );
    }
  });
});
