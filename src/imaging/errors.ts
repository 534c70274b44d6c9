// Imaging errors as values, in the vocabulary DIMSE statuses and HTTP answers map from.
export type ImagingErrorKind =
  | 'invalid' // the file or query is malformed (DIMSE 0xA900/0xC000, HTTP 400)
  | 'too-large' // above the configured size (HTTP 413)
  | 'wrong-study' // STOW-RS to /studies/{uid} with an instance of another study
  | 'not-found'
  | 'corrupt' // a stored file no longer matches its checksum
  | 'sealed'; // the KMS is sealed: nothing can be encrypted or decrypted

export interface ImagingError {
  kind: ImagingErrorKind;
  message: string;
  /** The instance concerned, when the file was readable that far. */
  instance?: { sopClassUid: string; sopInstanceUid: string };
}

export type ImagingResult<T> = { ok: true; value: T } | { ok: false; error: ImagingError };

export const imagingFail = (kind: ImagingErrorKind, message: string): { ok: false; error: ImagingError } => ({ ok: false, error: { kind, message } });
