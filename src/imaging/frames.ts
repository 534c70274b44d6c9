// WADO-RS frames for uncompressed data: frame n is the n-th equal slice of the native Pixel
// Data value. Compressed (encapsulated) and big-endian data are not cut up here: medmesh
// never transcodes, and says so.
import { checkStructure, TS } from './dicom-structure.ts';

export type FramesResult = { ok: true; value: Buffer[] } | { ok: false; status: 400 | 404 | 406; error: string };

export function extractFrames(file: Buffer, numberOfFrames: number | null, wanted: number[]): FramesResult {
  const s = checkStructure(file);
  if (!s.ok) return { ok: false, status: 406, error: s.error };
  const ts = s.value.transferSyntaxUid;
  if (ts !== TS.explicitLE && ts !== TS.implicitLE)
    return {
      ok: false,
      status: 406,
      error:
        'frames are served for uncompressed little-endian data; ' +
        `this instance is stored as ${ts} and medmesh does not transcode`,
    };
  const pixel = s.value.pixelData;
  if (!pixel || pixel.encapsulated) return { ok: false, status: 404, error: 'the instance has no native pixel data' };
  const count = numberOfFrames ?? 1;
  if (count < 1 || pixel.length % count !== 0)
    return { ok: false, status: 406, error: `pixel data of ${pixel.length} bytes does not split into ${count} frames` };
  const size = pixel.length / count;
  const out: Buffer[] = [];
  for (const n of wanted) {
    if (!Number.isInteger(n) || n < 1 || n > count)
      return { ok: false, status: 404, error: `frame ${n} does not exist (the instance has ${count})` };
    out.push(file.subarray(pixel.offset + (n - 1) * size, pixel.offset + n * size));
  }
  return { ok: true, value: out };
}
