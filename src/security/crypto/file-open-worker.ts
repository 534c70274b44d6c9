// Worker thread for reading encrypted files: checks the MAC, decrypts and hashes one file per
// message, so a site serving a whole study decrypts on every core.
import { createHash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { CryptoError } from './errors.ts';
import { decryptFile } from './file-stream.ts';

interface Job {
  id: number;
  sealed: ArrayBuffer;
  key: Uint8Array;
}

parentPort?.on('message', (job: Job) => {
  try {
    const file = decryptFile(new Uint8Array(job.sealed), () => job.key);
    const sha256 = createHash('sha256').update(file).digest('hex');
    const own = file.byteOffset === 0 && file.byteLength === file.buffer.byteLength ? (file.buffer as ArrayBuffer) : new Uint8Array(file).buffer;
    parentPort?.postMessage({ id: job.id, ok: true, file: own, sha256 }, [own]);
  } catch (e) {
    const code = e instanceof CryptoError ? e.code : 'decrypt-failed';
    parentPort?.postMessage({ id: job.id, ok: false, code, message: e instanceof Error ? e.message : String(e) });
  }
});
