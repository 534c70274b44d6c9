// The blob store contract, run for every implementation (the filesystem here; an
// S3-compatible store joins when a server is available to test against).
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { after, before, describe, it } from 'node:test';
import { FsBlobStore, type BlobStore } from './blob-store.ts';

function blobStoreContract(name: string, open: () => Promise<{ store: BlobStore; close(): Promise<void> }>): void {
  describe(`blob store contract: ${name}`, () => {
    let s: { store: BlobStore; close(): Promise<void> };
    before(async () => {
      s = await open();
    });
    after(async () => s.close());

    it('writes, reads back, lists and deletes', async () => {
      const big = Buffer.alloc(3 * 2 ** 20, 7);
      assert.deepEqual(await s.store.put('ab/one.mmf', Buffer.from('hello')), { bytes: 5 });
      assert.deepEqual(await s.store.put('ab/two.mmf', Readable.from([big.subarray(0, 2 ** 20), big.subarray(2 ** 20)])), { bytes: big.length });
      assert.equal((await buffer((await s.store.get('ab/one.mmf'))!)).toString(), 'hello');
      assert.ok((await buffer((await s.store.get('ab/two.mmf'))!)).equals(big));
      assert.ok((await s.store.read('ab/two.mmf'))!.equals(big), 'read whole');
      assert.equal(await s.store.read('ab/none.mmf'), undefined);
      const keys: string[] = [];
      for await (const k of s.store.list('ab/')) keys.push(k);
      assert.deepEqual(keys.sort(), ['ab/one.mmf', 'ab/two.mmf']);
      await s.store.delete('ab/one.mmf');
      assert.equal(await s.store.get('ab/one.mmf'), undefined);
      await s.store.delete('ab/never.mmf'); // deleting nothing is not an error
    });

    it('leaves nothing under the key when the source fails mid-stream', async () => {
      function* failing() {
        yield Buffer.alloc(1024, 1);
        throw new Error('the sender went away');
      }
      await assert.rejects(s.store.put('cd/broken.mmf', Readable.from(failing())), /the sender went away/);
      assert.equal(await s.store.get('cd/broken.mmf'), undefined);
      const keys: string[] = [];
      for await (const k of s.store.list('cd/')) keys.push(k);
      assert.deepEqual(keys, []);
    });

    it('refuses keys that could escape the store', async () => {
      for (const key of ['../x', '/etc/passwd', 'a/../../b', '', 'a//b']) await assert.rejects(s.store.put(key, Buffer.from('x')), /invalid blob key/, key);
    });
  });
}

blobStoreContract('filesystem', async () => {
  const root = await mkdtemp(join(tmpdir(), 'medmesh-blob-contract-'));
  return {
    store: new FsBlobStore({ root }),
    async close() {
      // No temporary files may be left behind either.
      const all = await readdir(root, { recursive: true });
      assert.deepEqual(all.filter((f) => f.includes('.partial-')), []);
      await rm(root, { recursive: true, force: true });
    },
  };
});
