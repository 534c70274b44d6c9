// The streaming multipart/related reader: the same parts whatever the chunking, boundaries
// split across chunks, bodies that almost contain the delimiter, and every malformed shape
// refused with the part it concerns.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { MultipartError, readMultipartRelated } from './multipart.ts';

const B = 'medmesh-b0undary';

function body(parts: Array<{ headers?: string; data: Buffer }>, o: { preamble?: string; epilogue?: string } = {}): Buffer {
  return Buffer.concat([
    Buffer.from(o.preamble ?? ''),
    ...parts.flatMap((p) => [
      Buffer.from(`--${B}\r\n${p.headers ?? 'Content-Type: application/dicom\r\n'}\r\n`),
      p.data,
      Buffer.from('\r\n'),
    ]),
    Buffer.from(`--${B}--\r\n${o.epilogue ?? ''}`),
  ]);
}

function chunks(b: Buffer, size: number): AsyncIterable<Buffer> {
  return Readable.from(
    Array.from({ length: Math.ceil(b.length / size) }, (_, i) => b.subarray(i * size, (i + 1) * size)),
    { objectMode: true },
  );
}

async function readAll(
  b: Buffer,
  size: number,
  limits = {},
): Promise<Array<{ index: number; headers: Record<string, string>; data: Buffer }>> {
  const out = [];
  for await (const p of readMultipartRelated(chunks(b, size), B, limits)) {
    const got: Buffer[] = [];
    for await (const c of p.body) got.push(c);
    out.push({ index: p.index, headers: p.headers, data: Buffer.concat(got) });
  }
  return out;
}

async function refusal(b: Buffer, size = 5, limits = {}): Promise<string> {
  try {
    await readAll(b, size, limits);
  } catch (e) {
    assert.ok(e instanceof MultipartError, `expected a MultipartError, got ${String(e)}`);
    return e.message;
  }
  assert.fail('the body was accepted');
}

describe('multipart/related reader', () => {
  // Content that nearly holds the delimiter, at the start, the middle and the end of a part.
  // The random filler holds neither CR nor the boundary's last character, so no delimiter
  // ("\r\n--" + boundary) can form by chance: not inside it, and not by completing the near-miss
  // before it (which once in 256 runs made the part end early).
  const last = B.charCodeAt(B.length - 1);
  const filler = (n: number) => Buffer.from(randomBytes(n).map((b) => (b === 0x0d || b === last ? 0x00 : b)));
  const tricky = Buffer.concat([
    Buffer.from(`\r\n--${B.slice(0, -1)}`),
    filler(3000),
    Buffer.from(`\r\n-${B}`),
    filler(17),
    Buffer.from(`\r\n--${B.slice(0, 5)}`),
  ]);
  const parts = [
    { data: randomBytes(10_000) },
    { data: tricky },
    { headers: '', data: Buffer.from('no headers at all') },
    { data: Buffer.alloc(0) },
  ];

  it('gives the same parts, byte for byte, at any chunk size', async () => {
    const b = body(parts, { preamble: 'ignored preamble\r\n', epilogue: 'ignored epilogue' });
    for (const size of [1, 2, 7, B.length + 3, 1000, b.length]) {
      const got = await readAll(b, size);
      assert.equal(got.length, parts.length, `chunk size ${size}`);
      for (const [i, p] of parts.entries()) {
        assert.equal(got[i]!.index, i + 1);
        assert.ok(got[i]!.data.equals(p.data), `part ${i + 1} at chunk size ${size}`);
      }
      assert.equal(got[0]!.headers['content-type'], 'application/dicom');
      assert.deepEqual(got[2]!.headers, {});
    }
  });

  it('skips what the caller leaves unread of a part', async () => {
    const seen: string[] = [];
    for await (const p of readMultipartRelated(chunks(body(parts), 64), B)) {
      if (p.index === 1) continue; // not read at all
      const it = p.body[Symbol.asyncIterator]();
      const first = await it.next(); // read a little, then abandon
      seen.push(`${p.index}:${first.done ? 'empty' : 'data'}`);
      await it.return?.();
    }
    assert.deepEqual(seen, ['2:data', '3:data', '4:empty']);
  });

  it('refuses malformed bodies, naming the part', async () => {
    assert.match(await refusal(Buffer.from('no boundary here at all')), /never contains the boundary medmesh-b0undary/);
    assert.match(
      await refusal(Buffer.alloc(100_000), 4096, { preambleBytes: 1000 }),
      /no boundary medmesh-b0undary within the first 1000 bytes/,
    );
    const whole = body(parts);
    const cut = whole.subarray(0, 5000);
    assert.match(await refusal(cut), /part 1 has no closing boundary \(the body is truncated or the boundary is wrong\)/);
    const cutInSecond = whole.subarray(0, whole.indexOf(tricky) + 100);
    assert.match(await refusal(cutInSecond, 333), /part 2 has no closing boundary/);
    assert.match(
      await refusal(Buffer.from(`--${B}XX\r\n\r\nabc\r\n--${B}--`)),
      /part 1: the boundary line is not followed by CRLF/,
    );
    assert.match(
      await refusal(Buffer.from(`--${B}\r\nContent-Type application/dicom\r\n\r\nabc\r\n--${B}--`)),
      /part 1: malformed header line "Content-Type application\/dicom"/,
    );
    assert.match(
      await refusal(Buffer.from(`--${B}\r\nContent-Type: application/dicom\r\n`)),
      /part 1: its headers are not ended by a blank line \(the body is truncated\)/,
    );
    assert.match(
      await refusal(Buffer.concat([Buffer.from(`--${B}\r\nX-Long: `), Buffer.alloc(40_000, 'a')]), 1024, { headerBytes: 1000 }),
      /part 1: its headers are not ended by a blank line within 1000 bytes/,
    );
    // Ends right after a boundary: neither a part nor the close delimiter.
    assert.match(await refusal(Buffer.from(`--${B}\r\n\r\nabc\r\n--${B}`)), /part 2: the boundary line is not followed by CRLF/);
  });
});
