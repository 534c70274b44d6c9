// A structural check of a DICOM Part 10 file before anything is stored: preamble and "DICM",
// a File Meta group with its group length and transfer syntax, then every data element's
// length checked against the bytes that remain (sequences, items and encapsulated pixel
// data included). dcmjs reads a truncated file "as far as it goes"; an archive must refuse
// it instead, and say where it breaks.
import { inflateRawSync } from 'node:zlib';

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

interface Encoding {
  explicit: boolean;
  little: boolean;
}

class Broken extends Error {}

interface Walk {
  n: number;
  pixel?: { offset: number; length: number; encapsulated: boolean };
}

const hex = (tag: number) => `(${(tag >>> 16).toString(16).padStart(4, '0').toUpperCase()},${(tag & 0xffff).toString(16).padStart(4, '0').toUpperCase()})`;

/** Checks the whole file; never throws. */
export function checkStructure(file: Uint8Array): StructureResult {
  const b = Buffer.from(file.buffer, file.byteOffset, file.byteLength);
  if (b.length < 132 || b.toString('latin1', 128, 132) !== 'DICM') return { ok: false, error: 'not a DICOM Part 10 file: no 128-byte preamble followed by "DICM"' };
  try {
    const counter: Walk = { n: 0 };
    const first = readHeader(b, 132, b.length, { explicit: true, little: true });
    if (first.tag !== 0x00020000 || first.length !== 4) return { ok: false, error: 'the File Meta Information has no group length (0002,0000)' };
    const metaEnd = 132 + first.headerLength + 4 + b.readUInt32LE(132 + first.headerLength);
    if (metaEnd > b.length) return { ok: false, error: `the File Meta Information group length runs past the end of the file` };
    let transferSyntaxUid: string | undefined;
    let sopInstance: string | undefined;
    let pos = 132;
    while (pos < metaEnd) {
      const h = readHeader(b, pos, metaEnd, { explicit: true, little: true });
      const value = b.toString('latin1', pos + h.headerLength, pos + h.headerLength + h.length).replace(/[\0 ]+$/, '');
      if (h.tag === 0x00020010) transferSyntaxUid = value;
      if (h.tag === 0x00020003) sopInstance = value;
      pos += h.headerLength + h.length;
      counter.n++;
    }
    if (!transferSyntaxUid) return { ok: false, error: 'the File Meta Information names no transfer syntax (0002,0010)' };
    if (!sopInstance) return { ok: false, error: 'the File Meta Information names no SOP Instance UID (0002,0003)' };
    let data = b.subarray(metaEnd);
    if (transferSyntaxUid === TS.deflatedLE) {
      try {
        data = inflateRawSync(data);
      } catch {
        return { ok: false, error: 'the deflated data set does not inflate' };
      }
    }
    const enc: Encoding = { explicit: transferSyntaxUid !== TS.implicitLE, little: transferSyntaxUid !== TS.explicitBE };
    walk(data, 0, data.length, enc, false, counter, 0);
    const pixel = counter.pixel && transferSyntaxUid !== TS.deflatedLE ? { ...counter.pixel, offset: counter.pixel.offset + metaEnd } : undefined;
    return { ok: true, value: { transferSyntaxUid, datasetOffset: metaEnd, elements: counter.n, ...(pixel ? { pixelData: pixel } : {}) } };
  } catch (e) {
    if (e instanceof Broken) return { ok: false, error: e.message };
    throw e;
  }
}

interface Header {
  tag: number;
  vr: string | undefined;
  length: number;
  headerLength: number;
}

function readHeader(b: Buffer, pos: number, end: number, enc: Encoding): Header {
  if (pos + 8 > end) throw new Broken(`truncated: an element header at byte ${pos} runs past the end`);
  const u16 = (at: number) => (enc.little ? b.readUInt16LE(at) : b.readUInt16BE(at));
  const u32 = (at: number) => (enc.little ? b.readUInt32LE(at) : b.readUInt32BE(at));
  const tag = ((u16(pos) << 16) | u16(pos + 2)) >>> 0;
  // Item and delimitation tags carry no VR in any encoding.
  if (tag === ITEM || tag === ITEM_END || tag === SEQ_END || !enc.explicit) return { tag, vr: undefined, length: u32(pos + 4), headerLength: 8 };
  const vr = b.toString('latin1', pos + 4, pos + 6);
  if (!/^[A-Z]{2}$/.test(vr)) throw new Broken(`element ${hex(tag)} at byte ${pos} has no valid VR (the transfer syntax may be declared wrongly)`);
  if (LONG_VRS.has(vr)) {
    if (pos + 12 > end) throw new Broken(`truncated: the header of ${hex(tag)} runs past the end`);
    return { tag, vr, length: u32(pos + 8), headerLength: 12 };
  }
  return { tag, vr, length: u16(pos + 6), headerLength: 8 };
}

/** Walks elements from pos to end (or to the delimiter when `delimited`); returns the position after. */
function walk(b: Buffer, pos: number, end: number, enc: Encoding, delimited: boolean, counter: Walk, depth: number): number {
  while (pos < end) {
    const h = readHeader(b, pos, end, enc);
    pos += h.headerLength;
    counter.n++;
    if (h.tag === ITEM_END) {
      if (!delimited) throw new Broken(`an item delimiter at byte ${pos - 8} closes nothing`);
      return pos;
    }
    if (h.tag === 0x7fe00010 && depth === 0) counter.pixel = { offset: pos, length: h.length === UNDEFINED ? end - pos : h.length, encapsulated: h.length === UNDEFINED };
    if (h.length !== UNDEFINED) {
      if (pos + h.length > end) throw new Broken(`truncated: ${hex(h.tag)} declares ${h.length} bytes but ${end - pos} remain`);
      if (h.vr === 'SQ') walkItems(b, pos, pos + h.length, enc, false, counter, depth + 1);
      pos += h.length;
      continue;
    }
    // Undefined length: a sequence, encapsulated pixel data, or UN holding an implicit sequence.
    if (h.tag === 0x7fe00010) {
      const start = pos;
      pos = walkFragments(b, pos, end, enc);
      if (depth === 0 && counter.pixel) counter.pixel.length = pos - start;
    } else pos = walkItems(b, pos, end, h.vr === 'UN' ? { explicit: false, little: true } : enc, true, counter, depth + 1);
  }
  if (delimited) throw new Broken('truncated: an item of undefined length has no delimiter');
  return pos;
}

function walkItems(b: Buffer, pos: number, end: number, enc: Encoding, delimited: boolean, counter: Walk, depth: number): number {
  while (pos < end) {
    const h = readHeader(b, pos, end, enc);
    pos += 8;
    if (h.tag === SEQ_END) {
      if (!delimited) throw new Broken(`a sequence delimiter at byte ${pos - 8} in a sequence of defined length`);
      return pos;
    }
    if (h.tag !== ITEM) throw new Broken(`expected an item in a sequence at byte ${pos - 8}, found ${hex(h.tag)}`);
    if (h.length === UNDEFINED) pos = walk(b, pos, end, enc, true, counter, depth);
    else {
      if (pos + h.length > end) throw new Broken(`truncated: an item declares ${h.length} bytes but ${end - pos} remain`);
      walk(b, pos, pos + h.length, enc, false, counter, depth);
      pos += h.length;
    }
  }
  if (delimited) throw new Broken('truncated: a sequence of undefined length has no delimiter');
  return pos;
}

function walkFragments(b: Buffer, pos: number, end: number, enc: Encoding): number {
  for (;;) {
    const h = readHeader(b, pos, end, enc);
    pos += 8;
    if (h.tag === SEQ_END) return pos;
    if (h.tag !== ITEM || h.length === UNDEFINED) throw new Broken(`encapsulated pixel data: expected a fragment at byte ${pos - 8}, found ${hex(h.tag)}`);
    if (pos + h.length > end) throw new Broken(`truncated: a pixel data fragment declares ${h.length} bytes but ${end - pos} remain`);
    pos += h.length;
  }
}
