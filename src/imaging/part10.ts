// A C-STORE carries a bare data set in the negotiated transfer syntax; the archive keeps
// Part 10 files. This writes the 128-byte preamble, "DICM" and a File Meta group (explicit
// VR little endian, PS3.10 §7.1) in front of the data set, byte for byte as received.
export const IMPLEMENTATION_CLASS_UID = '1.2.826.0.1.3680043.10.1519.1';
export const IMPLEMENTATION_VERSION = 'MEDMESH_1';

/** `dataset` may come as the chunks it arrived in: they are copied once, straight into the file. */
export function part10File(
  o: { sopClassUid: string; sopInstanceUid: string; transferSyntaxUid: string; sourceAe?: string },
  dataset: Uint8Array | readonly Uint8Array[],
): Buffer {
  const elements = [
    element(0x0001, 'OB', Buffer.from([0, 1])),
    element(0x0002, 'UI', uid(o.sopClassUid)),
    element(0x0003, 'UI', uid(o.sopInstanceUid)),
    element(0x0010, 'UI', uid(o.transferSyntaxUid)),
    element(0x0012, 'UI', uid(IMPLEMENTATION_CLASS_UID)),
    element(0x0013, 'SH', text(IMPLEMENTATION_VERSION)),
    ...(o.sourceAe ? [element(0x0016, 'AE', text(o.sourceAe))] : []),
  ];
  const meta = Buffer.concat(elements);
  const length = Buffer.alloc(4);
  length.writeUInt32LE(meta.length);
  return Buffer.concat([
    Buffer.alloc(128),
    Buffer.from('DICM'),
    element(0x0000, 'UL', length),
    meta,
    ...(dataset instanceof Uint8Array ? [dataset] : dataset),
  ]);
}

const pad = (b: Buffer, byte: number) => (b.length % 2 ? Buffer.concat([b, Buffer.from([byte])]) : b);
const uid = (s: string) => pad(Buffer.from(s, 'ascii'), 0);
const text = (s: string) => pad(Buffer.from(s, 'ascii'), 0x20);

function element(elementNumber: number, vr: string, value: Buffer): Buffer {
  const long = vr === 'OB';
  const header = Buffer.alloc(long ? 12 : 8);
  header.writeUInt16LE(0x0002, 0);
  header.writeUInt16LE(elementNumber, 2);
  header.write(vr, 4, 'ascii');
  if (long) header.writeUInt32LE(value.length, 8);
  else header.writeUInt16LE(value.length, 6);
  return Buffer.concat([header, value]);
}
