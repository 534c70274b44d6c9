// Worker thread computing GHASH for SM4-GCM bulk data while the calling thread runs the
// native SM4-CTR: the two halves of GCM then use both cores.
import { parentPort } from 'node:worker_threads';
import { ghash } from '@noble/ciphers/_polyval.js';

type Msg =
  | { op: 'start'; id: number; h: Uint8Array; aad: Uint8Array; expected: number }
  | { op: 'data'; id: number; chunk: Uint8Array }
  | { op: 'finish'; id: number; lengths: Uint8Array };

const states = new Map<number, ReturnType<typeof ghash.create>>();
parentPort?.on('message', (m: Msg) => {
  switch (m.op) {
    case 'start':
      states.set(m.id, ghash.create(m.h, m.expected).update(m.aad));
      break;
    case 'data':
      states.get(m.id)?.update(m.chunk);
      break;
    case 'finish': {
      const s = states.get(m.id);
      states.delete(m.id);
      parentPort?.postMessage({ id: m.id, s: s ? s.update(m.lengths).digest() : null });
      break;
    }
  }
});
