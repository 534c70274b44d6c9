// Worker thread for audit verification: checks entry MACs while the calling thread
// rebuilds the Merkle tree, so verification uses both cores.
import { parentPort } from 'node:worker_threads';
// sm3.ts, not the crypto index: without the rest of the module a worker starts ~80 ms sooner here.
import { equalConstantTime, hmacSm3Keyed } from '../crypto/sm3.ts';

interface Job {
  id: number;
  key: Uint8Array;
  /** seq (8) | entry length (4) | entry | mac (32), repeated. */
  packed: ArrayBuffer;
}

parentPort?.on('message', (job: Job) => {
  const mac = hmacSm3Keyed(job.key);
  const buf = Buffer.from(job.packed);
  const bad: number[] = [];
  for (let off = 0; off < buf.length; ) {
    const seq = buf.subarray(off, off + 8);
    const len = buf.readUInt32BE(off + 8);
    const entry = buf.subarray(off + 12, off + 12 + len);
    const tag = buf.subarray(off + 12 + len, off + 44 + len);
    if (!equalConstantTime(mac(seq, entry), tag)) bad.push(Number(seq.readBigUInt64BE()));
    off += 44 + len;
  }
  parentPort?.postMessage({ id: job.id, bad });
});
