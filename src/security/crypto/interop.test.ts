// Interoperability with the openssl command line, both directions.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { CryptoError } from './errors.ts';
import { Sm2PrivateKey, Sm2PublicKey } from './sm2-keys.ts';
import { sm2Sign, sm2Verify } from './sm2.ts';
import { sm4CbcDecrypt, sm4CbcEncrypt } from './sm4.ts';

const openssl = (...args: string[]) => execFileSync('openssl', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const ID = '1234567812345678';

describe('interop with the openssl command line', () => {
  let dir: string;
  const f = (name: string) => join(dir, name);
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'medmesh-openssl-'));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it('openssl reads our SM2 keys and verifies our signatures with the same ID', async () => {
    const key = Sm2PrivateKey.generate();
    await writeFile(f('our-key.pem'), key.toPem());
    await writeFile(f('our-pub.pem'), key.publicKey.toPem());
    assert.match(openssl('pkey', '-in', f('our-key.pem'), '-noout', '-text'), /ASN1 OID: SM2/);
    assert.match(openssl('pkey', '-pubin', '-in', f('our-pub.pem'), '-noout', '-text'), /ASN1 OID: SM2/);
    const msg = Buffer.from('转诊单 referral #42');
    await writeFile(f('msg'), msg);
    await writeFile(f('our.sig'), sm2Sign(key, msg));
    assert.match(
      openssl('dgst', '-sm3', '-verify', f('our-pub.pem'), '-signature', f('our.sig'), '-sigopt', `distid:${ID}`, f('msg')),
      /Verified OK/,
    );
    assert.match(
      openssl(
        'pkeyutl',
        '-verify',
        '-pubin',
        '-inkey',
        f('our-pub.pem'),
        '-rawin',
        '-in',
        f('msg'),
        '-sigfile',
        f('our.sig'),
        '-digest',
        'sm3',
        '-pkeyopt',
        `distid:${ID}`,
      ),
      /Verified Successfully/,
    );
    // With the empty ID OpenSSL uses by default, our signature must not verify: the ID is really in Z.
    assert.throws(() => openssl('dgst', '-sm3', '-verify', f('our-pub.pem'), '-signature', f('our.sig'), f('msg')));
  });

  it('we read openssl SM2 keys and verify its signatures', async () => {
    openssl('genpkey', '-algorithm', 'SM2', '-out', f('ssl-key.pem'));
    openssl('pkey', '-in', f('ssl-key.pem'), '-pubout', '-out', f('ssl-pub.pem'));
    const msg = randomBytes(1000);
    await writeFile(f('m2'), msg);
    openssl('dgst', '-sm3', '-sign', f('ssl-key.pem'), '-sigopt', `distid:${ID}`, '-out', f('ssl.sig'), f('m2'));
    const sig = await readFile(f('ssl.sig'));
    const pub = Sm2PublicKey.fromPem(await readFile(f('ssl-pub.pem'), 'utf8'));
    assert.equal(sm2Verify(pub, msg, sig), true);
    assert.equal(sm2Verify(pub, Buffer.concat([msg, Buffer.from('x')]), sig), false);
    const priv = Sm2PrivateKey.fromPem(await readFile(f('ssl-key.pem'), 'utf8'));
    assert.equal(priv.publicKey.hex, pub.hex);
    assert.equal(sm2Verify(pub, msg, sm2Sign(priv, msg)), true);
  });

  it('SM4-CBC: openssl enc encrypts, we decrypt, and the reverse', async () => {
    const key = randomBytes(16);
    const iv = randomBytes(16);
    const plain = randomBytes(4099);
    await writeFile(f('plain'), plain);
    openssl('enc', '-sm4-cbc', '-K', key.toString('hex'), '-iv', iv.toString('hex'), '-in', f('plain'), '-out', f('ssl.enc'));
    assert.deepEqual(sm4CbcDecrypt(key, iv, await readFile(f('ssl.enc'))), plain);
    await writeFile(f('our.enc'), sm4CbcEncrypt(key, iv, plain));
    openssl(
      'enc',
      '-d',
      '-sm4-cbc',
      '-K',
      key.toString('hex'),
      '-iv',
      iv.toString('hex'),
      '-in',
      f('our.enc'),
      '-out',
      f('back'),
    );
    assert.deepEqual(await readFile(f('back')), plain);
  });

  it('refuses bad PEM, non-SM2 keys and malformed signatures without throwing from verify', () => {
    assert.throws(
      () => Sm2PrivateKey.fromPem('-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----'),
      (e: CryptoError) => e.code === 'bad-pem',
    );
    const p256 = openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256');
    assert.throws(
      () => Sm2PrivateKey.fromPem(p256),
      (e: CryptoError) => e.code === 'bad-key' && /not an SM2 key/.test(e.message),
    );
    assert.throws(
      () => Sm2PrivateKey.fromScalar(Buffer.alloc(32)),
      (e: CryptoError) => e.code === 'bad-key',
    );
    assert.throws(
      () => Sm2PublicKey.fromPoint(Buffer.alloc(65, 4)),
      (e: CryptoError) => e.code === 'bad-key',
    );
    const key = Sm2PrivateKey.generate();
    const msg = Buffer.from('m');
    const sig = sm2Sign(key, msg);
    for (const bad of [
      Buffer.alloc(0),
      Buffer.from('30'),
      Buffer.alloc(71, 0x30),
      sig.subarray(0, sig.length - 1),
      Buffer.concat([sig, Buffer.from([0])]),
    ]) {
      assert.equal(sm2Verify(key.publicKey, msg, bad), false);
    }
    assert.equal(sm2Verify(Sm2PrivateKey.generate().publicKey, msg, sig), false, 'another key');
  });
});
