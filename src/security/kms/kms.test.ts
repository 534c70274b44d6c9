// KMS lifecycle end to end: init -> seal -> unseal -> rotate -> rewrap -> destroy with
// certificate. Runs on PGlite and PostgreSQL.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Db } from '../../db/index.ts';
import { openTestDb, testBackend } from '../../db/test-db.ts';
import { CryptoError, Sm2PrivateKey } from '../crypto/index.ts';
import {
  approveRequest,
  canonicalRequest,
  parseRequest,
  signCertificate,
  verifyCertificate,
  type DestructionApproval,
  type DestructionDocument,
} from './certificate.ts';
import { KmsError } from './errors.ts';
import { Kms } from './kms.ts';
import { decodeShareToken, encodeShareToken, signShare, unwrapShare, type WrappedShare } from './shares.ts';

const KMS_TABLES = ['kms_root', 'kms_share', 'kms_deposited_share', 'kms_key', 'kms_key_version', 'kms_destruction_certificate'];
const custodianKeys = ['alice', 'bob', 'carol', 'dave', 'erin'].map((name) => ({ name, key: Sm2PrivateKey.generate() }));
const custodians = custodianKeys.map((c) => ({ name: c.name, publicKey: c.key.publicKey }));
const keyOf = (w: WrappedShare) => custodianKeys.find((c) => c.name === w.custodian)!.key;
const isKms = (code: string) => (e: unknown) => e instanceof KmsError && e.code === code;

describe(`KMS (${testBackend()})`, () => {
  let db: Db;
  let kms: Kms;
  let shares: WrappedShare[];
  let clock = new Date('2026-01-01T00:00:00Z');
  const counts = async () => {
    const { rows } = await db.query<Record<string, number>>(
      `SELECT ${KMS_TABLES.map((t) => `(SELECT count(*)::int FROM ${t}) AS ${t}`).join(', ')}`,
    );
    return rows[0]!;
  };
  const restart = () => new Kms({ db, siteId: 'B', policy: 'national', now: () => clock });

  before(async () => {
    db = await openTestDb();
    kms = restart();
  });
  after(() => db.close());

  it('starts uninitialized and refuses bad init parameters without writing anything', async () => {
    assert.deepEqual(await kms.status(), { initialized: false, sealed: true, progress: 0 });
    await assert.rejects(kms.createKey('records'), isKms('sealed'));
    await assert.rejects(kms.init({ custodians: custodians.slice(0, 2), threshold: 3 }), isKms('bad-request'));
    await assert.rejects(kms.init({ custodians: [custodians[0]!, custodians[0]!], threshold: 2 }), isKms('bad-request'));
    assert.deepEqual(Object.values(await counts()), [0, 0, 0, 0, 0, 0]);
  });

  it('initializes a 3-of-5 master key; the key itself is stored nowhere', async () => {
    const r = await kms.init({ custodians, threshold: 3 });
    shares = r.shares;
    assert.equal(shares.length, 5);
    assert.deepEqual(await kms.status(), {
      initialized: true,
      sealed: false,
      cmkId: r.cmkId,
      threshold: 3,
      shareCount: 5,
      progress: 0,
    });
    await assert.rejects(kms.init({ custodians, threshold: 3 }), isKms('already-initialized'));
    const tokens = shares.slice(0, 3).map((w) => unwrapShare(w, keyOf(w)));
    const { combine } = await import('shamir-secret-sharing');
    const cmk = Buffer.from(await combine(tokens.map((t) => new Uint8Array(t.share))));
    const dump =
      JSON.stringify((await db.query('SELECT * FROM kms_root')).rows) +
      JSON.stringify((await db.query('SELECT * FROM kms_share')).rows);
    assert.ok(!dump.includes(cmk.toString('hex')) && !dump.includes(cmk.toString('base64')), 'CMK never stored in clear');
  });

  it('encrypts with named keys, rotates, rewraps and enforces minimum versions', async () => {
    await kms.createKey('records');
    await assert.rejects(kms.createKey('records'), isKms('key-exists'));
    await assert.rejects(kms.createKey('Bad Name!'), isKms('bad-request'));
    const v1 = await kms.encrypt('records', Buffer.from('张三 440106199001011235'), Buffer.from('Patient/1'));
    assert.equal((await kms.decrypt(v1, Buffer.from('Patient/1'))).toString(), '张三 440106199001011235');
    const info = await kms.rotate('records');
    assert.equal(info.latestVersion, 2);
    const v2 = await kms.encrypt('records', Buffer.from('x'));
    assert.match(v2.subarray(6, 200).toString(), /"kv":2/);
    assert.equal(
      (await kms.decrypt(v1, Buffer.from('Patient/1'))).toString(),
      '张三 440106199001011235',
      'old versions still decrypt',
    );
    const rewrapped = await kms.rewrap(v1, Buffer.from('Patient/1'));
    assert.match(rewrapped.subarray(6, 200).toString(), /"kv":2/);
    await kms.configureKey('records', { minDecryptionVersion: 2 });
    await assert.rejects(kms.decrypt(v1, Buffer.from('Patient/1')), isKms('version-below-minimum'));
    assert.equal((await kms.decrypt(rewrapped, Buffer.from('Patient/1'))).toString(), '张三 440106199001011235');
    await assert.rejects(kms.configureKey('records', { minDecryptionVersion: 9 }), isKms('bad-request'));
    await kms.rotate('records');
    await kms.configureKey('records', { minEncryptionVersion: 2 });
    assert.match(
      (await kms.encrypt('records', Buffer.from('y'))).subarray(6, 200).toString(),
      /"kv":2/,
      'minimum encryption version pins new encryptions',
    );
    await kms.configureKey('records', { minEncryptionVersion: 0 });
    await assert.rejects(
      kms.decrypt(Buffer.from('garbage envelope')),
      (e: unknown) => e instanceof CryptoError && e.code === 'bad-input',
    );
  });

  it('imports a region-wide key once, checked for length, usable for keyed hashing in-process only', async () => {
    const material = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
    await assert.rejects(kms.createKey('region-short', { material: material.subarray(0, 8) }), isKms('bad-request'));
    await assert.rejects(kms.createKey('region-rotating', { material, rotationPeriodSeconds: 3600 }), isKms('bad-request'));
    await kms.createKey('region-mac', { material });
    const mac = await kms.macKey('region-mac');
    assert.deepEqual(
      [mac.version, mac.key.toString('hex')],
      [1, material.toString('hex')],
      'the same material at every site that imports it',
    );
    await assert.rejects(kms.exportKey('region-mac', 1), isKms('not-exportable'));
    await assert.rejects(kms.macKey('no-such-key'), isKms('unknown-key'));
  });

  it('hands out data keys (plaintext + wrapped, or wrapped only) and rotates on schedule', async () => {
    await kms.createKey('dicom', { rotationPeriodSeconds: 86_400 });
    const dk = await kms.generateDataKey('dicom');
    assert.equal(dk.plaintext?.length, 16);
    assert.deepEqual(await kms.unwrapDataKey(dk.wrapped), dk.plaintext);
    const only = await kms.generateDataKey('dicom', { plaintext: false, bytes: 32 });
    assert.equal(only.plaintext, undefined);
    assert.equal((await kms.unwrapDataKey(only.wrapped)).length, 32);
    clock = new Date(clock.getTime() + 2 * 86_400_000);
    await kms.encrypt('dicom', Buffer.from('z'));
    assert.equal((await kms.describeKey('dicom')).latestVersion, 2, 'an overdue key rotates before it is used');
    await assert.rejects(kms.exportKey('dicom', 1), isKms('not-exportable'));
    await kms.createKey('export-me', { exportable: true });
    assert.equal((await kms.exportKey('export-me', 1)).length, 16);
  });

  it('seals on restart and unseals only with threshold shares that reconstruct the key', async () => {
    const before = await counts();
    const envelope = await kms.encrypt('records', Buffer.from('survives restart'));
    kms = restart();
    assert.equal((await kms.status()).sealed, true);
    await assert.rejects(kms.decrypt(envelope), isKms('sealed'));
    const tokens = shares.map((w) => unwrapShare(w, keyOf(w)));
    // A share wrapped for alice does not open with bob's key, and a tampered file does not open at all.
    assert.throws(() => unwrapShare(shares[0]!, custodianKeys[1]!.key), isKms('bad-share'));
    const tampered = {
      ...shares[0]!,
      sealed: Buffer.from(Buffer.from(shares[0]!.sealed, 'base64').map((b, i, a) => (i === a.length - 1 ? b ^ 1 : b))).toString(
        'base64',
      ),
    };
    assert.throws(
      () => unwrapShare(tampered, keyOf(shares[0]!)),
      (e: unknown) => e instanceof CryptoError && e.code === 'auth-failed',
    );
    // A share of another key is refused at once.
    await assert.rejects(
      kms.submitShare({ ...tokens[0]!, cmkId: '00000000-0000-4000-8000-000000000000' }),
      isKms('share-of-other-key'),
    );
    // A tampered plain share is caught by the check value once the threshold is reached.
    const bad = decodeShareToken(encodeShareToken(tokens[2]!));
    bad.share = Buffer.from(bad.share).map((b, i) => (i === 3 ? b ^ 0xff : b));
    assert.equal((await kms.submitShare(tokens[0]!)).progress, 1);
    assert.equal((await kms.submitShare(tokens[1]!)).sealed, true, 'below threshold stays sealed');
    await assert.rejects(kms.submitShare(bad), isKms('bad-share'));
    assert.equal((await kms.status()).progress, 0, 'a failed attempt starts over');
    await kms.submitShare(tokens[4]!);
    await kms.submitShare(tokens[2]!);
    const st = await kms.submitShare(tokens[3]!);
    assert.equal(st.sealed, false);
    assert.equal((await kms.decrypt(envelope)).toString(), 'survives restart');
    assert.deepEqual(await counts(), before, 'sealing and unsealing write nothing');
  });

  it(
    'destroys versions only on a request two custodians signed; ' + 'the certificate carries approvals anyone can check',
    async () => {
      const env = await kms.encrypt('dicom', Buffer.from('to be destroyed'));
      await assert.rejects(kms.destructionRequest({ keyName: 'dicom', versions: [2, 7], reason: 'x' }), isKms('bad-request'));
      const request = await kms.destructionRequest({ keyName: 'dicom', versions: [1, 2], reason: 'retention ended' });
      const r = parseRequest(request);
      const approve = (name: string, key = custodianKeys.find((c) => c.name === name)!.key, of = r) =>
        approveRequest(of, { approver: name, key, now: clock });
      const [alice, bob] = [approve('alice'), approve('bob')];
      const mallory = Sm2PrivateKey.generate();
      const before = await counts();
      const refused = async (approvals: DestructionApproval[], text = request, code = 'not-approved') =>
        assert.rejects(kms.destroyVersions({ request: text, approvals }), isKms(code));
      await refused([alice]); // one approver
      await refused([alice, alice]); // the same custodian twice
      await refused([alice, approve('mallory', mallory)]); // not a custodian
      await refused([alice, approve('bob', mallory)]); // a custodian's name, another key
      await refused([alice, approve('bob', undefined, { ...r, versions: [1] })]); // bob approved something else
      await refused([alice, { ...bob, approver: 'carol' }]); // a signature moved to another name
      // The request changed after approval (every approval is over its digest).
      await refused([alice, bob], canonicalRequest({ ...r, versions: [1, 2, 3] }));
      await refused([alice, bob], canonicalRequest({ ...r, site: 'C' }), 'bad-request');
      const saved = clock;
      clock = new Date(Date.parse(r.expiresAt) + 1000);
      await refused([alice, bob]); // expired
      clock = saved;
      assert.deepEqual(await counts(), before, 'refused destruction writes nothing');

      const { certificate: cert, wipe } = await kms.destroyVersions({ request, approvals: [alice, bob] });
      assert.equal(wipe.rewritten, true, wipe.note);
      const published = new Map(custodianKeys.map((c) => [c.name, c.key.publicKey]));
      const checked = verifyCertificate(cert, { siteKey: (await kms.signingPublicKey())!, approverKeys: published });
      assert.deepEqual([checked.valid, checked.problems], [true, []]);
      assert.deepEqual(
        [
          checked.document?.keyName,
          checked.document?.versions,
          checked.document?.approvers,
          checked.document?.confirmations[0]?.site,
        ],
        ['dicom', [1, 2], ['alice', 'bob'], 'B'],
      );
      assert.deepEqual(checked.approvals, [
        { approver: 'alice', signed: true, keyMatches: true },
        { approver: 'bob', signed: true, keyMatches: true },
      ]);
      // Anyone with the certificate and the custodians' keys sees a wrong key, a changed document, or
      // approvals not over the request.
      const wrongBob = verifyCertificate(cert, { approverKeys: new Map([...published, ['bob', mallory.publicKey]]) });
      assert.equal(wrongBob.valid, false);
      assert.match(wrongBob.problems.join(';'), /bob is not made with the key given for bob/);
      assert.equal(
        verifyCertificate({ ...cert, document: cert.document.replace('retention ended', 'retention extended') }).valid,
        false,
      );
      const doc = JSON.parse(cert.document) as DestructionDocument;
      const site = Sm2PrivateKey.generate();
      const forgedApprovals = signCertificate({ ...doc, approvals: [alice, { ...bob, signature: alice.signature }] }, site);
      assert.match(verifyCertificate(forgedApprovals).problems.join(';'), /approval of bob does not verify.*1 verified approver/);
      const oldStyle = signCertificate(
        { ...doc, type: 'medmesh-key-destruction/1', request: undefined, approvals: undefined },
        site,
      );
      assert.match(verifyCertificate(oldStyle).problems.join(';'), /approvers are names only/);

      await assert.rejects(kms.decrypt(env), isKms('version-destroyed'));
      await assert.rejects(kms.destroyVersions({ request, approvals: [alice, bob] }), isKms('version-destroyed'));
      await assert.rejects(kms.rotate('dicom'), isKms('version-destroyed'), 'a destroyed key cannot be rotated back to life');
      // Even after a restart and unseal the material is gone.
      kms = restart();
      for (const w of shares.slice(0, 3)) await kms.submitShare(unwrapShare(w, keyOf(w)));
      await assert.rejects(kms.decrypt(env), isKms('version-destroyed'));
      const { rows } = await db.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM kms_key_version WHERE name = 'dicom' AND material_wrapped IS NOT NULL",
      );
      assert.equal(rows[0]!.n, 0);
      await assert.rejects(db.query('DELETE FROM kms_destruction_certificate'), /permanent records/);
      await assert.rejects(db.query("UPDATE kms_destruction_certificate SET document = 'x'"), /permanent records/);
      assert.equal((await kms.certificates('dicom')).length, 1);
    },
  );

  it('stops another node of the site decrypting with a destroyed version at once, and zeroes its copy', async () => {
    await kms.createKey('lab');
    const env = await kms.encrypt('lab', Buffer.from('result'));
    const other = restart(); // another API node of the site (or the site beside an offline destroy)
    for (const w of shares.slice(0, 3)) await other.submitShare(unwrapShare(w, keyOf(w)));
    assert.equal((await other.decrypt(env)).toString(), 'result');
    const copy = (await other.macKey('lab')).key; // the node's cached material
    const request = await kms.destructionRequest({ keyName: 'lab', versions: [1], reason: 'lab results moved' });
    const r = parseRequest(request);
    await kms.destroyVersions({
      request,
      approvals: ['carol', 'dave'].map((n) =>
        approveRequest(r, { approver: n, key: custodianKeys.find((c) => c.name === n)!.key, now: clock }),
      ),
    });
    await assert.rejects(other.decrypt(env), isKms('version-destroyed'));
    await other.forgetDestroyed();
    assert.ok(
      copy.every((b) => b === 0),
      "the other node's copy is zeroed",
    );
  });

  it('leaves no copy of destroyed wrapped material in the live table file (the table is rewritten)', async () => {
    await kms.createKey('notes');
    await kms.rotate('notes');
    const material = async (v: number) =>
      Buffer.from(
        (
          await db.query<{ m: Uint8Array }>(
            "SELECT material_wrapped AS m FROM kms_key_version WHERE name = 'notes' AND version = $1",
            [v],
          )
        ).rows[0]!.m,
      );
    const [m1, m2] = [await material(1), await material(2)];
    const tableFile = async () => {
      await db.query('CHECKPOINT');
      const { rows } = await db.query<{ b: Uint8Array }>(
        "SELECT pg_read_binary_file(pg_relation_filepath('kms_key_version')) AS b",
      );
      return Buffer.from(rows[0]!.b);
    };
    assert.ok((await tableFile()).includes(m1), 'the probe finds live material');
    const request = await kms.destructionRequest({ keyName: 'notes', versions: [1], reason: 'notes retention ended' });
    const r = parseRequest(request);
    const { wipe } = await kms.destroyVersions({
      request,
      approvals: ['alice', 'erin'].map((n) =>
        approveRequest(r, { approver: n, key: custodianKeys.find((c) => c.name === n)!.key, now: clock }),
      ),
    });
    assert.deepEqual([wipe.rewritten, wipe.complete], [true, true], wipe.note);
    const file = await tableFile();
    assert.ok(!file.includes(m1), 'no row version of the table holds the destroyed material');
    assert.ok(file.includes(m2), 'the version kept is still there');
  });

  it("keeps other sites' wrapped shares, signed by their site, which only their custodians can open", async () => {
    const other = new Kms({ db, siteId: 'C', policy: 'national' });
    const bKey = (await kms.signingPublicKey())!;
    for (const w of shares.slice(0, 2)) await other.depositShare(w, bKey);
    await assert.rejects(other.depositShare({ ...shares[0]!, site: 'C' }, bKey), isKms('bad-request'));
    // Nobody but B can fill one of B's slots first: unsigned, signed by another key, altered, or B not trusted here.
    const { ownerSignature: _, ...unsigned } = shares[2]!;
    const altered = { ...shares[2]!, sealed: shares[0]!.sealed };
    await assert.rejects(other.depositShare(unsigned, bKey), isKms('bad-share'));
    await assert.rejects(other.depositShare(signShare(altered, Sm2PrivateKey.generate()), bKey), isKms('bad-share'));
    await assert.rejects(other.depositShare(altered, bKey), isKms('bad-share'));
    await assert.rejects(other.depositShare(shares[2]!, undefined), isKms('untrusted-owner'));
    assert.deepEqual(
      (await other.depositedShares('B')).map((w) => w.index),
      [1, 2],
      'none of those was kept',
    );
    await other.depositShare(shares[2]!, bKey);
    const fetched = await other.depositedShares('B');
    assert.deepEqual(
      fetched.map((w) => w.index),
      [1, 2, 3],
    );
    assert.equal(unwrapShare(fetched[0]!, keyOf(fetched[0]!)).index, 1);
  });
});
