/** Memory that can move to another thread: the buffer's own when it spans all of it (no copy), else a copy. */
export function transferable(b: Uint8Array): ArrayBuffer {
  return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer
    ? b.buffer
    : new Uint8Array(b).buffer;
}
