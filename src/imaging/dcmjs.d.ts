// The small part of dcmjs (no bundled types) that medmesh uses.
declare module 'dcmjs' {
  interface DicomElement {
    vr: string;
    Value?: unknown[];
    /** The value as read, before dcmjs decoded or relabelled it. */
    _rawValue?: unknown[];
  }
  type DicomDict = Record<string, DicomElement>;
  interface ReadOptions {
    ignoreErrors?: boolean;
    untilTag?: string | null;
    includeUntilTagValue?: boolean;
    noCopy?: boolean;
  }
  const dcmjs: {
    data: {
      DicomMessage: { readFile(buffer: ArrayBuffer, options?: ReadOptions): { meta: DicomDict; dict: DicomDict } };
      DicomMetaDictionary: { naturalizeDataset(dict: DicomDict): Record<string, unknown> };
    };
    log: { setLevel(level: string): void };
  };
  export default dcmjs;
}
