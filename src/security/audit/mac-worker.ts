// Worker thread for audit verification: checks entry MACs, and that each entry's search
// columns say what its bytes say, while the calling thread rebuilds the Merkle tree, so
// verification uses both cores.
import { parentPort } from 'node:worker_threads';
// sm3.ts, not the crypto index: without the rest of the module a worker starts ~80 ms sooner here.
import { equalConstantTime, hmacSm3Keyed } from '../crypto/sm3.ts';
import { columnsAgree, NULL_TEXT, type Span } from './entry-columns.ts';

interface Job {
  id: number;
  key: Uint8Array;
  /** seq (8) | entry length (4) | entry | mac (32) | entity length (4) | entity | agent length (4) | agent, repeated; a length of 0xffffffff is NULL. */
  packed: ArrayBuffer;
}

parentPort?.on('message', (job: Job) => {
  const mac = hmacSm3Keyed(job.key);
  const buf = Buffer.from(job.packed);
  const bad: number[] = [];
  const columns: number[] = [];
  let off = 0;
  const text = (): Span | null => {
    const n = buf.readUInt32BE(off);
    off += 4;
    if (n === NULL_TEXT) return null;
    off += n;
    return { start: off - n, length: n };
  };
  while (off < buf.length) {
    const seq = buf.subarray(off, off + 8);
    const len = buf.readUInt32BE(off + 8);
    const entry = { start: off + 12, length: len };
    const tag = buf.subarray(off + 12 + len, off + 44 + len);
    off += 44 + len;
    const entity = text();
    const agent = text();
    const at = Number(seq.readBigUInt64BE());
    if (!equalConstantTime(mac(seq, buf.subarray(entry.start, entry.start + len)), tag)) bad.push(at);
    else if (!columnsAgree(buf, entry, entity, agent)) columns.push(at);
  }
  parentPort?.postMessage({ id: job.id, bad, columns });
});
