// Worker thread for audit verification: checks entry MACs, that each entry's search columns
// say what its bytes say, and hashes the Merkle leaves, while the calling thread reads the
// next page and folds the leaves into the tree, so verification uses both cores.
import { parentPort } from 'node:worker_threads';
// sm3.ts, not the crypto index: without the rest of the module a worker starts ~80 ms sooner here.
import { equalConstantTime, hmacSm3Keyed } from '../crypto/sm3.ts';
import { columnsAgree, NULL_TEXT, type Span } from './entry-columns.ts';
import { leafHashOfPrefixed } from './merkle.ts';

interface Job {
  id: number;
  key: Uint8Array;
  /** Rows in the page. */
  count: number;
  /**
   * seq (8) | entry length (4) | 0x00 | entry | mac (32) | entity length (4) | entity |
   * agent length (4) | agent, repeated; a length of 0xffffffff is NULL. The 0x00 is the Merkle
   * leaf prefix.
   */
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
  const hashes = new ArrayBuffer(job.count * 32);
  const leaves = Buffer.from(hashes);
  for (let i = 0; off < buf.length; i++) {
    const seq = buf.subarray(off, off + 8);
    const len = buf.readUInt32BE(off + 8);
    const entry = { start: off + 13, length: len };
    leafHashOfPrefixed(buf.subarray(off + 12, off + 13 + len)).copy(leaves, i * 32);
    const tag = buf.subarray(off + 13 + len, off + 45 + len);
    off += 45 + len;
    const entity = text();
    const agent = text();
    const at = Number(seq.readBigUInt64BE());
    if (!equalConstantTime(mac(seq, buf.subarray(entry.start, entry.start + len)), tag)) bad.push(at);
    else if (!columnsAgree(buf, entry, entity, agent)) columns.push(at);
  }
  parentPort?.postMessage({ id: job.id, bad, columns, leaves: hashes }, [hashes]);
});
