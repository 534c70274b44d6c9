// Per-link keys: one SM2 wrap and signature per rotation, not per page; pages under an old
// key still open after a rotation; a header not signed by the sender, or made for another
// receiver, opens nothing.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Sm2PrivateKey } from '../security/crypto/index.ts';
import { LinkKeyReceiver, LinkKeySender } from './link-keys.ts';
import { feedAad, openPage, sealPage } from './wire.ts';

const page = (n: number) => ({ changes: [], next: { txid: String(n), pos: '1' }, withheld: n, more: false });

describe('per-link keys', () => {
  const [b, c, mallory] = [Sm2PrivateKey.generate(), Sm2PrivateKey.generate(), Sm2PrivateKey.generate()];
  const at = { txid: '0', pos: '0' };

  it('keeps one key per link until it rotates, and old pages still open after a rotation', () => {
    const sender = new LinkKeySender({ rotateMs: 60_000 });
    const k1 = sender.keyFor({ from: 'B', to: 'C', receiverKey: c.publicKey, signer: b, now: 0 });
    assert.equal(
      sender.keyFor({ from: 'B', to: 'C', receiverKey: c.publicKey, signer: b, now: 59_999 }),
      k1,
      'the same key within its lifetime',
    );
    const k2 = sender.keyFor({ from: 'B', to: 'C', receiverKey: c.publicKey, signer: b, now: 60_000 });
    assert.notDeepEqual(k2.id, k1.id, 'a new key after the rotation period');
    assert.notEqual(
      sender.keyFor({ from: 'B', to: 'C', receiverKey: mallory.publicKey, signer: b, now: 60_001 }),
      k2,
      'a re-registered receiver key gets a new link key at once',
    );

    const seal = new LinkKeySender({ rotateMs: 0 }); // a new key for every page
    const receiver = new LinkKeyReceiver();
    const frames = [1, 2, 3].map((n) =>
      sealPage(page(n), { from: 'B', to: 'C', keys: seal, receiverKey: c.publicKey, senderKey: b, aad: feedAad('B', 'C', at) }),
    );
    for (const [i, f] of frames.entries()) {
      const r = openPage(f, { from: 'B', to: 'C', keys: receiver, key: c, senderKey: b.publicKey, aad: feedAad('B', 'C', at) });
      assert.ok(r.ok && r.page.withheld === i + 1);
    }
  });

  it('opens nothing from a key header the sender did not sign, or made for another site', () => {
    const forged = sealPage(page(1), {
      from: 'B',
      to: 'C',
      keys: new LinkKeySender(),
      receiverKey: c.publicKey,
      senderKey: mallory,
      aad: feedAad('B', 'C', at),
    });
    const r = openPage(forged, {
      from: 'B',
      to: 'C',
      keys: new LinkKeyReceiver(),
      key: c,
      senderKey: b.publicKey,
      aad: feedAad('B', 'C', at),
    });
    assert.ok(!r.ok && r.error.kind === 'auth-failed', 'signed by someone other than B');
    const forA = sealPage(page(1), {
      from: 'B',
      to: 'A',
      keys: new LinkKeySender(),
      receiverKey: c.publicKey,
      senderKey: b,
      aad: feedAad('B', 'C', at),
    });
    assert.ok(
      !openPage(forA, {
        from: 'B',
        to: 'C',
        keys: new LinkKeyReceiver(),
        key: c,
        senderKey: b.publicKey,
        aad: feedAad('B', 'C', at),
      }).ok,
      'a key B made for A is not a key for C',
    );
    const good = sealPage(page(1), {
      from: 'B',
      to: 'C',
      keys: new LinkKeySender(),
      receiverKey: c.publicKey,
      senderKey: b,
      aad: feedAad('B', 'C', at),
    });
    const cache = new LinkKeyReceiver();
    assert.ok(openPage(good, { from: 'B', to: 'C', keys: cache, key: c, senderKey: b.publicKey, aad: feedAad('B', 'C', at) }).ok);
    assert.ok(
      !openPage(good, { from: 'B', to: 'C', keys: cache, key: mallory, senderKey: b.publicKey, aad: feedAad('B', 'C', at) }).ok,
      'an opened key serves only the key that opened it',
    );
  });
});
