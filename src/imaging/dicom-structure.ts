// A structural check of a DICOM Part 10 file before anything is stored: preamble and "DICM",
// a File Meta group with its group length and transfer syntax, then every data element's
// length checked against the bytes that remain (sequences, items and encapsulated pixel
// data included). dcmjs reads a truncated file "as far as it goes"; an archive must refuse
// it instead, and say where it breaks.
//
// One walker serves a file in memory (`checkStructure`) and a stream of any size
// (`checkStructureStream`, constant memory: values are skipped, not kept). The walker is a
// generator that asks for bytes; a driver answers from a buffer or from a stream.
import { Readable } from 'node:stream';
import { createInflateRaw, inflateRawSync } from 'node:zlib';

export const TS = {
  implicitLE: '1.2.840.10008.1.2',
  explicitLE: '1.2.840.10008.1.2.1',
  deflatedLE: '1.2.840.10008.1.2.1.99',
  explicitBE: '1.2.840.10008.1.2.2',
} as const;

export interface Structure {
  transferSyntaxUid: string;
  /** Byte offset of the data set (after the File Meta group). */
  datasetOffset: number;
  /** Elements walked (all levels): a sanity figure for tests and logs. */
  elements: number;
  /** Where the top-level Pixel Data value lies in the file (not for deflated data sets). */
  pixelData?: { offset: number; length: number; encapsulated: boolean };
}

export type StructureResult = { ok: true; value: Structure } | { ok: false; error: string };

const LONG_VRS = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'UC', 'UN', 'UR', 'UT', 'SV', 'UV']);
const UNDEFINED = 0xffffffff;
const ITEM = 0xfffee000;
const ITEM_END = 0xfffee00d;
const SEQ_END = 0xfffee0dd;
const PIXEL_DATA = 0x7fe00010;

interface Encoding {
  explicit: boolean;
  little: boolean;
}

class Broken extends Error {}

/** What the walker asks of its driver: some bytes (fewer at the end), or to pass over some (how many were there). */
type Need = { read: number } | { skip: number };
type Answer = Buffer | number;
type Walker<T> = Generator<Need, T, Answer>;

interface Walk {
  pos: number;
  n: number;
  pixel?: { offset: number; length: number; encapsulated: boolean };
}

const hex = (tag: number) =>
  `(${(tag >>> 16).toString(16).padStart(4, '0').toUpperCase()},${(tag & 0xffff).toString(16).padStart(4, '0').toUpperCase()})`;

function* read(w: Walk, n: number, what: () => string): Walker<Buffer> {
  const b = (yield { read: n }) as Buffer;
  if (b.length < n) throw new Broken(`truncated: ${what()} runs past the end`);
  w.pos += n;
  return b;
}

function* skip(w: Walk, n: number, tag: number): Walker<void> {
  const skipped = (yield { skip: n }) as number;
  if (skipped < n) throw new Broken(`truncated: ${hex(tag)} declares ${n} bytes but ${skipped} remain`);
  w.pos += n;
}

// ---- File Meta group ---------------------------------------------------------------------

interface Meta {
  transferSyntaxUid: string;
  metaEnd: number;
}

function* metaWalker(w: Walk): Walker<Meta> {
  const head = (yield { read: 132 }) as Buffer;
  if (head.length < 132 || head.toString('latin1', 128, 132) !== 'DICM')
    throw new Broken('not a DICOM Part 10 file: no 128-byte preamble followed by "DICM"');
  w.pos = 132;
  const first = yield* read(w, 12, () => 'the File Meta Information');
  if (
    first.readUInt16LE(0) !== 0x0002 ||
    first.readUInt16LE(2) !== 0x0000 ||
    first.toString('latin1', 4, 6) !== 'UL' ||
    first.readUInt16LE(6) !== 4
  )
    throw new Broken('the File Meta Information has no group length (0002,0000)');
  const groupLength = first.readUInt32LE(8);
  const meta = yield* read(w, groupLength, () => 'the File Meta Information group length');
  let transferSyntaxUid: string | undefined;
  let sopInstance: string | undefined;
  for (let p = 0; p < meta.length;) {
    const h = header(meta, p, meta.length, { explicit: true, little: true });
    if (p + h.headerLength + h.length > meta.length) throw new Broken(`the File Meta element ${hex(h.tag)} runs past its group`);
    const value = meta.toString('latin1', p + h.headerLength, p + h.headerLength + h.length).replace(/[\0 ]+$/, '');
    if (h.tag === 0x00020010) transferSyntaxUid = value;
    if (h.tag === 0x00020003) sopInstance = value;
    p += h.headerLength + h.length;
    w.n++;
  }
  if (!transferSyntaxUid) throw new Broken('the File Meta Information names no transfer syntax (0002,0010)');
  if (!sopInstance) throw new Broken('the File Meta Information names no SOP Instance UID (0002,0003)');
  return { transferSyntaxUid, metaEnd: w.pos };
}

// ---- data set ----------------------------------------------------------------------------

interface Header {
  tag: number;
  vr: string | undefined;
  length: number;
  headerLength: number;
}

/** An element header from bytes in hand (`b` holds at least 8 bytes at `p`; 12 for long VRs). */
function header(b: Buffer, p: number, end: number, enc: Encoding): Header {
  if (p + 8 > end) throw new Broken(`truncated: an element header at byte ${p} runs past the end`);
  const u16 = (at: number) => (enc.little ? b.readUInt16LE(at) : b.readUInt16BE(at));
  const u32 = (at: number) => (enc.little ? b.readUInt32LE(at) : b.readUInt32BE(at));
  const tag = ((u16(p) << 16) | u16(p + 2)) >>> 0;
  // Item and delimitation tags carry no VR in any encoding.
  if (tag === ITEM || tag === ITEM_END || tag === SEQ_END || !enc.explicit)
    return { tag, vr: undefined, length: u32(p + 4), headerLength: 8 };
  const vr = b.toString('latin1', p + 4, p + 6);
  if (!/^[A-Z]{2}$/.test(vr))
    throw new Broken(`element ${hex(tag)} at byte ${p} has no valid VR (the transfer syntax may be declared wrongly)`);
  if (LONG_VRS.has(vr)) {
    if (p + 12 > end) throw new Broken(`truncated: the header of ${hex(tag)} runs past the end`);
    return { tag, vr, length: u32(p + 8), headerLength: 12 };
  }
  return { tag, vr, length: u16(p + 6), headerLength: 8 };
}

/** The next element header; at the clean end of a top-level stream (`mayEnd`), undefined. */
function* readHeader(w: Walk, enc: Encoding, mayEnd: boolean): Walker<Header | undefined> {
  const at = w.pos;
  const first = (yield { read: 8 }) as Buffer;
  if (first.length === 0 && mayEnd) return undefined;
  if (first.length < 8) throw new Broken(`truncated: an element header at byte ${at} runs past the end`);
  w.pos += 8;
  const tag =
    (((enc.little ? first.readUInt16LE(0) : first.readUInt16BE(0)) << 16) |
      (enc.little ? first.readUInt16LE(2) : first.readUInt16BE(2))) >>>
    0;
  const long =
    enc.explicit && tag !== ITEM && tag !== ITEM_END && tag !== SEQ_END && LONG_VRS.has(first.toString('latin1', 4, 6));
  if (!long) return header(first, 0, 8, enc);
  const rest = (yield { read: 4 }) as Buffer;
  if (rest.length < 4) throw new Broken(`truncated: the header of ${hex(tag)} runs past the end`);
  w.pos += 4;
  return header(Buffer.concat([first, rest]), 0, 12, enc);
}

/** Elements until `end` (a defined length) or the item delimiter (`delimited`). */
function* walk(w: Walk, end: number, enc: Encoding, delimited: boolean, depth: number): Walker<void> {
  while (w.pos < end) {
    const start = w.pos;
    const h = yield* readHeader(w, enc, end === Infinity && !delimited);
    if (!h) return;
    w.n++;
    if (h.tag === ITEM_END) {
      if (!delimited) throw new Broken(`an item delimiter at byte ${start} closes nothing`);
      return;
    }
    if (h.tag === PIXEL_DATA && depth === 0) w.pixel = { offset: w.pos, length: h.length, encapsulated: h.length === UNDEFINED };
    if (h.length !== UNDEFINED) {
      if (end !== Infinity && w.pos + h.length > end)
        throw new Broken(`truncated: ${hex(h.tag)} declares ${h.length} bytes but ${end - w.pos} remain`);
      if (h.vr === 'SQ') yield* items(w, w.pos + h.length, enc, false, depth + 1, h.tag);
      else yield* skip(w, h.length, h.tag);
      continue;
    }
    // Undefined length: a sequence, encapsulated pixel data, or UN holding an implicit sequence.
    if (h.tag === PIXEL_DATA) {
      const from = w.pos;
      yield* fragments(w, enc);
      if (depth === 0 && w.pixel) w.pixel.length = w.pos - from;
    } else yield* items(w, Infinity, h.vr === 'UN' ? { explicit: false, little: true } : enc, true, depth + 1, h.tag);
  }
  if (delimited) throw new Broken('truncated: an item of undefined length has no delimiter');
}

function* items(w: Walk, end: number, enc: Encoding, delimited: boolean, depth: number, tag: number): Walker<void> {
  while (w.pos < end) {
    const at = w.pos;
    const raw = (yield { read: 8 }) as Buffer;
    if (raw.length < 8)
      throw new Broken(
        delimited ? 'truncated: a sequence of undefined length has no delimiter' : `truncated: ${hex(tag)} runs past the end`,
      );
    w.pos += 8;
    const h = header(raw, 0, 8, { explicit: false, little: enc.little });
    if (h.tag === SEQ_END) {
      if (!delimited) throw new Broken(`a sequence delimiter at byte ${at} in a sequence of defined length`);
      return;
    }
    if (h.tag !== ITEM) throw new Broken(`expected an item in a sequence at byte ${at}, found ${hex(h.tag)}`);
    if (h.length === UNDEFINED) yield* walk(w, Infinity, enc, true, depth);
    else {
      if (end !== Infinity && w.pos + h.length > end)
        throw new Broken(`truncated: an item declares ${h.length} bytes but ${end - w.pos} remain`);
      yield* walk(w, w.pos + h.length, enc, false, depth);
    }
  }
  if (delimited) throw new Broken('truncated: a sequence of undefined length has no delimiter');
}

function* fragments(w: Walk, enc: Encoding): Walker<void> {
  for (;;) {
    const at = w.pos;
    const raw = (yield { read: 8 }) as Buffer;
    if (raw.length < 8) throw new Broken('truncated: encapsulated pixel data has no sequence delimiter');
    w.pos += 8;
    const h = header(raw, 0, 8, { explicit: false, little: enc.little });
    if (h.tag === SEQ_END) return;
    if (h.tag !== ITEM || h.length === UNDEFINED)
      throw new Broken(`encapsulated pixel data: expected a fragment at byte ${at}, found ${hex(h.tag)}`);
    yield* skip(w, h.length, PIXEL_DATA);
  }
}

// ---- drivers -----------------------------------------------------------------------------

/** Runs a walker over bytes in memory. */
function runSync<T>(gen: Walker<T>, b: Buffer, start: number): T {
  let pos = start;
  let step = gen.next(undefined as never);
  while (!step.done) {
    const need = step.value;
    if ('read' in need) {
      const out = b.subarray(pos, Math.min(b.length, pos + need.read));
      pos += out.length;
      step = gen.next(out);
    } else {
      const n = Math.min(need.skip, b.length - pos);
      pos += n;
      step = gen.next(n);
    }
  }
  return step.value;
}

/** Bytes from a stream on demand, keeping no more than the current chunk. */
class ChunkReader {
  readonly #it: AsyncIterator<Buffer | Uint8Array | string>;
  #buf = Buffer.alloc(0);
  #done = false;

  constructor(source: AsyncIterable<Buffer | Uint8Array | string>) {
    this.#it = source[Symbol.asyncIterator]();
  }

  async #more(): Promise<boolean> {
    if (this.#done) return false;
    const r = await this.#it.next();
    if (r.done) {
      this.#done = true;
      return false;
    }
    const c =
      typeof r.value === 'string' ? Buffer.from(r.value) : Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, c]) : Buffer.from(c);
    return true;
  }

  async read(n: number): Promise<Buffer> {
    while (this.#buf.length < n && (await this.#more()));
    const out = this.#buf.subarray(0, Math.min(n, this.#buf.length));
    this.#buf = this.#buf.subarray(out.length);
    return out;
  }

  async skip(n: number): Promise<number> {
    let skipped = 0;
    while (skipped < n) {
      if (!this.#buf.length && !(await this.#more())) break;
      const take = Math.min(n - skipped, this.#buf.length);
      this.#buf = this.#buf.subarray(take);
      skipped += take;
    }
    return skipped;
  }

  async *rest(): AsyncIterable<Buffer> {
    if (this.#buf.length) yield this.#buf;
    this.#buf = Buffer.alloc(0);
    while (await this.#more()) {
      const c = this.#buf;
      this.#buf = Buffer.alloc(0);
      yield c;
    }
  }
}

async function runAsync<T>(gen: Walker<T>, r: ChunkReader): Promise<T> {
  let step = gen.next(undefined as never);
  while (!step.done) {
    const need = step.value;
    step = gen.next('read' in need ? await r.read(need.read) : await r.skip(need.skip));
  }
  return step.value;
}

function result(meta: Meta, w: Walk, deflated: boolean): StructureResult {
  const pixel = w.pixel && !deflated ? { ...w.pixel, offset: w.pixel.offset + meta.metaEnd } : undefined;
  return {
    ok: true,
    value: {
      transferSyntaxUid: meta.transferSyntaxUid,
      datasetOffset: meta.metaEnd,
      elements: w.n,
      ...(pixel ? { pixelData: pixel } : {}),
    },
  };
}

const encodingOf = (ts: string): Encoding => ({ explicit: ts !== TS.implicitLE, little: ts !== TS.explicitBE });

/** Checks a whole file in memory; never throws. */
export function checkStructure(file: Uint8Array): StructureResult {
  const b = Buffer.from(file.buffer, file.byteOffset, file.byteLength);
  try {
    const mw: Walk = { pos: 0, n: 0 };
    const meta = runSync(metaWalker(mw), b, 0);
    const deflated = meta.transferSyntaxUid === TS.deflatedLE;
    let data = b.subarray(meta.metaEnd);
    if (deflated) {
      try {
        data = inflateRawSync(data);
      } catch {
        return { ok: false, error: 'the deflated data set does not inflate' };
      }
    }
    const w: Walk = { pos: 0, n: mw.n };
    runSync(walk(w, data.length, encodingOf(meta.transferSyntaxUid), false, 0), data, 0);
    return result(meta, w, deflated);
  } catch (e) {
    if (e instanceof Broken) return { ok: false, error: e.message };
    throw e;
  }
}

/** Checks a file as it streams past, holding no more than a chunk; never throws for bad data. */
export async function checkStructureStream(source: AsyncIterable<Buffer | Uint8Array | string>): Promise<StructureResult> {
  const reader = new ChunkReader(source);
  try {
    const mw: Walk = { pos: 0, n: 0 };
    const meta = await runAsync(metaWalker(mw), reader);
    const deflated = meta.transferSyntaxUid === TS.deflatedLE;
    const data = deflated ? new ChunkReader(Readable.from(reader.rest()).pipe(createInflateRaw())) : reader;
    const w: Walk = { pos: 0, n: mw.n };
    try {
      await runAsync(walk(w, Infinity, encodingOf(meta.transferSyntaxUid), false, 0), data);
    } catch (e) {
      if (deflated && !(e instanceof Broken)) return { ok: false, error: 'the deflated data set does not inflate' };
      throw e;
    }
    return result(meta, w, deflated);
  } catch (e) {
    if (e instanceof Broken) return { ok: false, error: e.message };
    throw e;
  }
}
