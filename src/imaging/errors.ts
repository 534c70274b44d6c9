// Imaging errors as values, in the vocabulary DIMSE statuses and HTTP answers map from.
export type ImagingErrorKind =
  | 'invalid' // the file or query is malformed (DIMSE 0xA900/0xC000, HTTP 400)
  | 'too-large' // above the configured size (HTTP 413)
  | 'wrong-study' // STOW-RS to /studies/{uid} with an instance of another study
  | 'not-held-here' // the patient's data may not be kept at this site (residency; DIMSE 0x0124)
  | 'forbidden' // the sender may not store images of this patient (its access scope; 0x0124)
  | 'not-found'
  | 'corrupt' // a stored file no longer matches its checksum
  | 'sealed' // the KMS is sealed: nothing can be encrypted or decrypted
  | 'storage-failed'; // the blob store could not keep the file (a full or failing disk, an unreachable bucket)

export interface ImagingError {
  kind: ImagingErrorKind;
  message: string;
  /** The instance concerned, when the file was readable that far. */
  instance?: { sopClassUid: string; sopInstanceUid: string };
}

export type ImagingResult<T> = { ok: true; value: T } | { ok: false; error: ImagingError };

export const imagingFail = (kind: ImagingErrorKind, message: string): { ok: false; error: ImagingError } => ({
  ok: false,
  error: { kind, message },
});

/** Why the blob store failed, without the paths and keys its errors carry. */
export function blobFailure(e: unknown): { ok: false; error: ImagingError } {
  const code = typeof e === 'object' && e !== null ? (e as { code?: unknown }).code : undefined;
  const why =
    typeof code === 'string' ? code : e instanceof Error ? (e.name !== 'Error' ? e.name : e.message.slice(0, 80)) : String(e);
  return imagingFail('storage-failed', `the blob store could not keep the file (${why})`);
}

/** The PS3.4 status for an instance the store did not take: the C-STORE response status and the STOW-RS Failure Reason. */
export function storeFailureStatus(kind: ImagingErrorKind): number {
  switch (kind) {
    case 'too-large':
    case 'storage-failed':
      return 0xa700; // Refused: out of resources (a sender may try again later)
    case 'invalid':
      return 0xc000; // Error: cannot understand
    case 'wrong-study':
      return 0xa900; // Error: data set does not match (the study of the request)
    case 'not-held-here':
    case 'forbidden':
      return 0x0124; // Refused: not authorized
    case 'not-found':
    case 'corrupt':
    case 'sealed':
      return 0x0110; // Processing failure
  }
}
