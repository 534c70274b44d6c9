// Worker thread for file encryption: opens (MAC check, decryption, SHA-256 of the plaintext)
// or seals (SM4-CBC + HMAC-SM3) one file per message, so a site decrypting a whole study or
// taking images in encrypts and decrypts beside its main thread.
import { createHash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { CryptoError } from './errors.ts';
import { decryptFile, encryptFile, type FileKey } from './file-stream.ts';
import { transferable } from './transfer.ts';

export type CryptoJob =
  { id: number; op: 'open'; sealed: ArrayBuffer; key: Uint8Array } | { id: number; op: 'seal'; file: ArrayBuffer; key: FileKey };

parentPort?.on('message', (job: CryptoJob) => {
  try {
    if (job.op === 'seal') {
      const sealed = transferable(encryptFile(new Uint8Array(job.file), job.key));
      parentPort?.postMessage({ id: job.id, ok: true, bytes: sealed }, [sealed]);
      return;
    }
    const file = decryptFile(new Uint8Array(job.sealed), () => job.key);
    const sha256 = createHash('sha256').update(file).digest('hex');
    const own = transferable(file);
    parentPort?.postMessage({ id: job.id, ok: true, bytes: own, sha256 }, [own]);
  } catch (e) {
    const code = e instanceof CryptoError ? e.code : job.op === 'seal' ? 'bad-input' : 'decrypt-failed';
    parentPort?.postMessage({ id: job.id, ok: false, code, message: e instanceof Error ? e.message : String(e) });
  }
});
