// The blob store contract, run for every implementation: the filesystem, and the S3 store
// against an S3-protocol server on 127.0.0.1 (s3rver; MEDMESH_TEST_S3_ENDPOINT with
// MEDMESH_TEST_S3_BUCKET, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY runs it against another,
// such as MinIO).
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { after, before, describe, it } from 'node:test';
import S3rver from 's3rver';
import { FsBlobStore, type BlobStore } from './blob-store.ts';
import { S3BlobStore } from './s3-blob-store.ts';

function blobStoreContract(name: string, open: () => Promise<{ store: BlobStore; close(): Promise<void> }>): void {
  describe(`blob store contract: ${name}`, () => {
    let s: { store: BlobStore; close(): Promise<void> };
    before(async () => {
      s = await open();
    });
    after(async () => s.close());

    it('writes, reads back, lists and deletes', async () => {
      const big = Buffer.alloc(6 * 2 ** 20, 7);
      big.writeUInt32BE(0xdeadbeef, 5 * 2 ** 20); // a part boundary is not a seam
      assert.deepEqual(await s.store.put('ab/one.mmf', Buffer.from('hello')), { bytes: 5 });
      assert.deepEqual(await s.store.put('ab/two.mmf', Readable.from([big.subarray(0, 2 ** 20), big.subarray(2 ** 20)])), {
        bytes: big.length,
      });
      assert.equal((await buffer((await s.store.get('ab/one.mmf'))!)).toString(), 'hello');
      assert.ok((await buffer((await s.store.get('ab/two.mmf'))!)).equals(big));
      assert.ok((await s.store.read('ab/two.mmf'))!.equals(big), 'read whole');
      assert.equal(await s.store.read('ab/none.mmf'), undefined);
      assert.deepEqual([await s.store.exists('ab/two.mmf'), await s.store.exists('ab/none.mmf')], [true, false]);
      const keys: string[] = [];
      for await (const k of s.store.list('ab/')) keys.push(k);
      assert.deepEqual(keys.sort(), ['ab/one.mmf', 'ab/two.mmf']);
      await s.store.delete('ab/one.mmf');
      assert.equal(await s.store.get('ab/one.mmf'), undefined);
      assert.equal(await s.store.exists('ab/one.mmf'), false);
      await s.store.delete('ab/never.mmf'); // deleting nothing is not an error
    });

    it('leaves nothing under the key when the source fails mid-stream', async () => {
      function* failing() {
        // Past the first part: in S3, a multipart upload is under way and must be abandoned.
        for (let i = 0; i < 6; i++) yield Buffer.alloc(2 ** 20, 1);
        throw new Error('the sender went away');
      }
      await assert.rejects(s.store.put('cd/broken.mmf', Readable.from(failing())), /the sender went away/);
      assert.equal(await s.store.get('cd/broken.mmf'), undefined);
      const keys: string[] = [];
      for await (const k of s.store.list('cd/')) keys.push(k);
      assert.deepEqual(keys, []);
    });

    it('refuses keys that could escape the store', async () => {
      for (const key of ['../x', '/etc/passwd', 'a/../../b', '', 'a//b'])
        await assert.rejects(s.store.put(key, Buffer.from('x')), /invalid blob key/, key);
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
      assert.deepEqual(
        all.filter((f) => f.includes('.partial-')),
        [],
      );
      await rm(root, { recursive: true, force: true });
    },
  };
});

blobStoreContract('S3-compatible', async () => {
  const external = process.env.MEDMESH_TEST_S3_ENDPOINT;
  const dir = await mkdtemp(join(tmpdir(), 'medmesh-s3-'));
  const server = external
    ? undefined
    : new S3rver({ address: '127.0.0.1', port: 0, directory: dir, silent: true, configureBuckets: [{ name: 'medmesh-test' }] });
  const endpoint = external ?? `http://127.0.0.1:${(await server!.run()).port}`;
  const store = new S3BlobStore({
    endpoint,
    bucket: process.env.MEDMESH_TEST_S3_BUCKET ?? 'medmesh-test',
    prefix: `contract-${Date.now()}`,
    accessKeyId: process.env.AWS_ACCESS_KEY_ID ?? 'S3RVER',
    secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY ?? 'S3RVER',
    // S3's smallest part, so the 6 MiB blob goes up as a multipart upload.
    partSizeBytes: 5 * 2 ** 20,
  });
  return {
    store,
    async close() {
      store.close();
      await server?.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
});

describe('S3-compatible blob store, stalled', () => {
  it('fails a put to a service that accepts the connection and never answers, within its request timeout', async () => {
    // A silent peer: the connection is accepted, nothing is ever sent back.
    const sockets = new Set<Socket>();
    const silent = createServer((s) => {
      sockets.add(s);
      s.on('error', () => undefined); // closed by the client's timeout
    });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const port = (silent.address() as AddressInfo).port;
    const store = new S3BlobStore({
      endpoint: `http://127.0.0.1:${port}`,
      bucket: 'medmesh-test',
      accessKeyId: 'S3RVER',
      secretAccessKey: 'S3RVER',
      requestTimeoutMs: 300,
    });
    try {
      const t0 = performance.now();
      await assert.rejects(store.put('stalled/one', new Uint8Array(10_000)));
      const ms = performance.now() - t0;
      assert.ok(ms < 5_000, `failed after ${Math.round(ms)} ms, not held for the stalled service`);
    } finally {
      store.close();
      for (const s of sockets) s.destroy();
      await new Promise((r) => silent.close(r));
    }
  });
});

describe('filesystem blob store', () => {
  it('makes a folder again when it was removed behind its back', async () => {
    const root = await mkdtemp(join(tmpdir(), 'medmesh-blob-fs-'));
    try {
      const store = new FsBlobStore({ root });
      await store.put('ab/one.mmf', Buffer.from('one'));
      await rm(join(root, 'ab'), { recursive: true }); // an operator's clean-up, say
      await store.put('ab/two.mmf', Buffer.from('two'));
      assert.equal((await store.read('ab/two.mmf'))?.toString(), 'two');
      assert.equal(await store.read('ab/one.mmf'), undefined);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
