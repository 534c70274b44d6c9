// The imaging store: a DICOM file in, checked, encrypted under its own data key into the blob
// store, then indexed; out again decrypted with its SHA-256 checked. The blob is written
// while the index rows are (on PostgreSQL; on PGlite first), and is durable before they
// commit; it is removed if they cannot be, so a failure leaves neither. Data keys come from
// data-key-pool.ts, the index statements from instance-index.ts.
import { createHash, randomUUID } from 'node:crypto';
import { PassThrough } from 'node:stream';
import type { Db, Queryable } from '../db/index.ts';
import { createEncryptStream, encryptFile, openHere, type FileCryptoPool, type OpenedFile } from '../security/crypto/index.ts';
import type { Kms } from '../security/kms/index.ts';
import type { BlobStore } from './blob-store.ts';
import { attributesOf, readInstance, type DicomJson, type InstanceAttributes } from './dicom-attributes.ts';
import { checkStructureStream } from './dicom-structure.ts';
import { blobFailure, imagingFail, type ImagingError, type ImagingResult } from './errors.ts';
import { DataKeyPool, IMAGING_KEY } from './data-key-pool.ts';
import { currentInstance, IndexRefusal, writeInstanceIndex, type InstanceRow } from './instance-index.ts';

export interface ImagingStoreOptions {
  db: Db;
  blobs: BlobStore;
  kms: Kms;
  /** Largest file accepted, in bytes (default 512 MiB). */
  maxFileBytes?: number;
  /** Files larger than this are streamed through rather than held in memory (default 16 MiB). */
  streamAboveBytes?: number;
  /** Whether this site may keep the instance (its patient's residency); a reason when not. */
  admit?: (a: InstanceAttributes) => Promise<string | undefined>;
  /** The FHIR Patient this site holds for a DICOM Patient ID (for senders whose scope is limited). */
  findPatient?: (dicomPatientId: string) => Promise<{ ok: true; id: string | undefined } | { ok: false; error: string }>;
  /** Opens and seals files on worker threads (absent: on the calling thread). */
  files?: Pick<FileCryptoPool, 'open' | 'seal'>;
}

export interface IngestOutcome {
  /**
   * stored: new instance; duplicate: same bytes already held (nothing written); new-version:
   * same UID, different bytes; restored: same bytes as held, whose file had been lost from the
   * blob store (the row now points at the new file).
   */
  status: 'stored' | 'duplicate' | 'new-version' | 'restored';
  sopClassUid: string;
  sopInstanceUid: string;
  studyInstanceUid: string;
  seriesInstanceUid: string;
  version: number;
  sha256: string;
}

export interface StoredInstance {
  sopInstanceUid: string;
  sopClassUid: string;
  studyInstanceUid: string;
  seriesInstanceUid: string;
  transferSyntaxUid: string;
  version: number;
  sha256: string;
  sizeBytes: number;
  attributes: DicomJson;
}

export class ImagingStore {
  readonly #o: ImagingStoreOptions;
  readonly #keys: DataKeyPool;

  constructor(opts: ImagingStoreOptions) {
    this.#o = opts;
    this.#keys = new DataKeyPool(opts.kms);
  }

  get db(): Db {
    return this.#o.db;
  }

  /** Largest file accepted, in bytes. */
  get maxFileBytes(): number {
    return this.#o.maxFileBytes ?? 512 * 2 ** 20;
  }

  /** Files larger than this are streamed through rather than held in memory. */
  get streamAboveBytes(): number {
    return this.#o.streamAboveBytes ?? 16 * 2 ** 20;
  }

  /**
   * Takes a file from a stream of unknown length: held while small (one pass over bytes in
   * memory is the quicker path), streamed through `ingestStream` once it outgrows
   * `streamAboveBytes` or the file limit.
   */
  async receive(source: AsyncIterable<Uint8Array>, opts: IngestOptions): Promise<ImagingResult<IngestOutcome>> {
    const threshold = Math.min(this.streamAboveBytes, this.maxFileBytes);
    const it = source[Symbol.asyncIterator]();
    const held: Uint8Array[] = [];
    let size = 0;
    for (;;) {
      const next = await it.next();
      if (next.done) return this.ingest(Buffer.concat(held), opts);
      held.push(next.value);
      size += next.value.byteLength;
      if (size > threshold) {
        const rest = async function* () {
          while (held.length) yield held.shift()!;
          for (let n = await it.next(); !n.done; n = await it.next()) yield n.value;
        };
        return this.ingestStream(rest(), opts);
      }
    }
  }

  /** Takes one Part 10 file. `source` says who sent it (calling AE, user) for the record. */
  async ingest(file: Uint8Array, opts: IngestOptions): Promise<ImagingResult<IngestOutcome>> {
    const max = this.maxFileBytes;
    if (file.byteLength > max)
      return imagingFail('too-large', `the file has ${file.byteLength} bytes; this site accepts at most ${max}`);
    const key = await this.#keys.next();
    if (!key.ok) return key;
    // Encryption (most of the work) starts at once on a worker, while this thread checks the
    // file and asks the index whether this site may keep it and whether the same bytes are
    // held already; the ciphertext of a file turned away is dropped unwritten. The worker has
    // its own copy of the key once seal returns, so this one is wiped at once.
    const fileKey = { keyId: IMAGING_KEY, keyVersion: 0, key: key.value.plaintext };
    const sealing = this.#o.files ? this.#o.files.seal(file, fileKey) : Promise.resolve(encryptFile(file, fileKey));
    key.value.plaintext.fill(0);
    sealing.catch(() => undefined); // awaited below unless the file is turned away first
    const read = readInstance(file);
    if (!read.ok) return imagingFail('invalid', read.error);
    const a = read.value;
    const sha256 = createHash('sha256').update(file).digest('hex');
    const [refused, existing] = await Promise.all([this.#refuse(a, opts), currentInstance(this.#o.db, a.sopInstanceUid)]);
    if (refused) return refused;
    if (existing?.sha256 === sha256 && (await this.#o.blobs.exists(existing.blob_key)))
      return { ok: true, value: outcomeOf(a, sha256, 'duplicate', existing.version) };
    const sealed = await sealing;
    const blobKey = newBlobKey();
    // The index rows are written while the blob is (they need only its key); they commit once it is durable.
    return this.#commit(
      a,
      { sha256, size: file.byteLength, blobKey, dataKey: key.value.wrapped, source: opts.source },
      this.#o.blobs.put(blobKey, sealed),
    );
  }

  /**
   * Takes a file as it streams in, of any size up to the limit: checked, hashed and encrypted
   * into the blob store on the way, holding no more than its header (up to `headBytes`) and
   * the chunk in hand. Answers only once the blob and the index are durable.
   */
  async ingestStream(
    source: AsyncIterable<Buffer | Uint8Array>,
    opts: IngestOptions & { headBytes?: number },
  ): Promise<ImagingResult<IngestOutcome>> {
    const max = this.maxFileBytes;
    const headLimit = opts.headBytes ?? 4 * 2 ** 20;
    const key = await this.#keys.next();
    if (!key.ok) {
      for await (const _ of source); // read to the end: the sender is not left hanging
      return key;
    }
    const blobKey = newBlobKey();
    const encrypt = createEncryptStream({ keyId: IMAGING_KEY, keyVersion: 0, key: key.value.plaintext });
    const walkerFeed = new PassThrough();
    const stored: Promise<Error | undefined> = this.#o.blobs.put(blobKey, encrypt).then(
      () => undefined,
      (e: unknown) => (e instanceof Error ? e : new Error('the blob store failed')),
    );
    const putFailed = stored.then((e) => (e ? Promise.reject(e) : new Promise<never>(() => {})));
    putFailed.catch(() => undefined); // observed below; never an unhandled rejection
    const checked = checkStructureStream(walkerFeed);
    let walking = true; // a walker that has given its verdict (a broken file) is fed no more
    const stopWalking = () => void (walking = false);
    checked.then(stopWalking, stopWalking);
    const hash = createHash('sha256');
    // The first bytes, where the attributes are, copied into one buffer (no second copy to parse).
    const head = Buffer.allocUnsafe(headLimit);
    let headSize = 0;
    let size = 0;
    const write = (w: PassThrough | typeof encrypt, chunk: Buffer) =>
      w.write(chunk) ? undefined : new Promise<void>((r) => w.once('drain', () => r()));
    /** The blob store failed mid-file: the rest of the file is read and dropped, so the sender is not left blocked. */
    let putError: Error | undefined;
    const abandon = (e: unknown) => {
      putError ??= e instanceof Error ? e : new Error(String(e));
      encrypt.destroy();
      walkerFeed.destroy();
    };
    try {
      for await (const raw of source) {
        const chunk = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
        size += chunk.length;
        if (putError || size > max) continue; // read on to the end, keep nothing
        hash.update(chunk);
        if (headSize < headLimit) headSize += chunk.copy(head, headSize, 0, Math.min(chunk.length, headLimit - headSize));
        // The walker may stop early (a broken file): then it is not waited for. A failing blob
        // write stops the writing at once.
        await Promise.race([
          Promise.all([write(encrypt, chunk), walking ? Promise.race([write(walkerFeed, chunk), checked]) : undefined]),
          putFailed,
        ]).catch(abandon);
      }
    } catch (e) {
      // The source failed (the sender went away, a body cut off): nothing of this file may stay,
      // and the caller hears its own source's error.
      abandon(e);
      key.value.plaintext.fill(0);
      await stored; // the blob store has removed its partial file before the blob goes
      await this.#o.blobs.delete(blobKey).catch(() => undefined);
      throw e;
    }
    if (!putError) {
      encrypt.end();
      walkerFeed.end();
    }
    const [structure, putOutcome] = await Promise.all([putError ? undefined : checked, stored]);
    key.value.plaintext.fill(0);
    const discard = async (r: { ok: false; error: ImagingError }) => {
      await this.#o.blobs.delete(blobKey).catch(() => undefined);
      return r;
    };
    // The blob store's own failure, not the stream's reaction to it being cut short.
    if (putError || putOutcome) return discard(blobFailure(putOutcome ?? putError));
    if (size > max) return discard(imagingFail('too-large', `the file has ${size} bytes; this site accepts at most ${max}`));
    if (!structure?.ok) return discard(imagingFail('invalid', structure?.error ?? 'the file could not be checked'));
    const read = attributesOf(head.subarray(0, headSize), structure.value);
    if (!read.ok) return discard(imagingFail('invalid', read.error));
    const a = read.value;
    const refused = await this.#refuse(a, opts);
    if (refused) return discard(refused);
    return this.#commit(
      a,
      { sha256: hash.digest('hex'), size, blobKey, dataKey: key.value.wrapped, source: opts.source },
      Promise.resolve(),
    );
  }

  async #refuse(a: InstanceAttributes, opts: IngestOptions): Promise<{ ok: false; error: ImagingError } | undefined> {
    const instance = { sopClassUid: a.sopClassUid, sopInstanceUid: a.sopInstanceUid };
    if (opts.expectStudy && a.studyInstanceUid !== opts.expectStudy) {
      return {
        ok: false,
        error: {
          kind: 'wrong-study',
          message: `instance ${a.sopInstanceUid} belongs to study ${a.studyInstanceUid}, not ${opts.expectStudy}`,
          instance,
        },
      };
    }
    const notHere = await this.#o.admit?.(a);
    if (notHere !== undefined) return { ok: false, error: { kind: 'not-held-here', message: notHere, instance } };
    const forbidden = opts.mayStore ? await this.#callerRefusal(a, opts.mayStore) : undefined;
    if (forbidden !== undefined) return { ok: false, error: { kind: 'forbidden', message: forbidden, instance } };
    return undefined;
  }

  /** Why this sender may not store images of the instance's patient (undefined: it may). */
  async #callerRefusal(a: InstanceAttributes, mayStore: NonNullable<IngestOptions['mayStore']>): Promise<string | undefined> {
    const pid = a.patientId?.trim();
    if (!pid)
      return `instance ${a.sopInstanceUid} carries no Patient ID: only a sender allowed every patient's images may store it`;
    if (!this.#o.findPatient)
      return (
        `this site cannot tell whose images instance ${a.sopInstanceUid} are, ` +
        "so it takes them only from senders allowed every patient's images"
      );
    const found = await this.#o.findPatient(pid);
    if (!found.ok) return found.error;
    return mayStore({ dicomPatientId: pid, recordId: found.id });
  }

  /**
   * Indexes a blob while `stored` writes it: the index transaction commits only once the blob
   * is durable, so a crash leaves at most an unreferenced blob, never a row without its file.
   * The blob is removed whenever the index does not take it.
   */
  async #commit(
    a: InstanceAttributes,
    f: { sha256: string; size: number; blobKey: string; dataKey: Buffer; source: string },
    stored: Promise<unknown>,
  ): Promise<ImagingResult<IngestOutcome>> {
    let putError: unknown;
    const blob = stored.then(
      () => undefined,
      (e: unknown) => void (putError = e ?? new Error('the blob store failed')),
    );
    const indexThenWait = (tx: Queryable) =>
      writeInstanceIndex(tx, this.#o.blobs, a, f).then(async (v) => {
        if (v === 'duplicate') return v;
        await blob;
        if (putError !== undefined) throw new BlobPutFailed(); // the rows are rolled back
        return v;
      });
    try {
      // PGlite has one connection for the whole site: the index transaction may not hold it for
      // as long as a blob takes to write (a slow disk or bucket would stop every request).
      if (this.#o.db.kind === 'pglite') await blob;
      let version: Awaited<ReturnType<typeof indexThenWait>>;
      try {
        version = await this.#o.db.transaction(indexThenWait);
      } catch (e) {
        // Another sender's first copy of this instance committed meanwhile: go again, now it is there.
        if (!isUniqueViolation(e)) throw e;
        version = await this.#o.db.transaction(indexThenWait);
      }
      if (version === 'duplicate') {
        // The same bytes are held already (sent before, or by another sender meanwhile).
        await blob;
        await this.#o.blobs.delete(f.blobKey);
        const held = await currentInstance(this.#o.db, a.sopInstanceUid);
        return { ok: true, value: outcomeOf(a, f.sha256, 'duplicate', held?.version ?? 1) };
      }
      if (typeof version === 'object') return { ok: true, value: outcomeOf(a, f.sha256, 'restored', version.restored) };
      return { ok: true, value: outcomeOf(a, f.sha256, version > 1 ? 'new-version' : 'stored', version) };
    } catch (e) {
      await blob; // a blob still being written is removed once it is there
      await this.#o.blobs.delete(f.blobKey).catch(() => undefined);
      const instance = { sopClassUid: a.sopClassUid, sopInstanceUid: a.sopInstanceUid };
      if (e instanceof IndexRefusal) return { ok: false, error: { kind: 'invalid', message: e.message, instance } };
      if (putError !== undefined) return { ok: false, error: { ...blobFailure(putError).error, instance } };
      throw e;
    }
  }

  /** The current copy of an instance: its bytes as received, checked against the SHA-256. */
  async read(sopInstanceUid: string): Promise<ImagingResult<{ instance: StoredInstance; file: Buffer }>> {
    const row = await currentInstance(this.#o.db, sopInstanceUid);
    if (!row) return imagingFail('not-found', `no instance ${sopInstanceUid}`);
    const sealed = await this.#o.blobs.read(row.blob_key);
    if (!sealed) return imagingFail('corrupt', `instance ${sopInstanceUid}: its file is missing from the blob store`);
    let key: Buffer;
    try {
      key = await this.#o.kms.unwrapDataKey(row.data_key);
    } catch (e) {
      return imagingFail('sealed', `cannot decrypt instance ${sopInstanceUid}: ${e instanceof Error ? e.message : String(e)}`);
    }
    let opened: OpenedFile;
    try {
      opened = this.#o.files ? await this.#o.files.open(sealed, key) : openHere(sealed, key);
    } catch (e) {
      return imagingFail('corrupt', `instance ${sopInstanceUid}: ${e instanceof Error ? e.message : String(e)}`);
    } finally {
      key.fill(0);
    }
    const { file, sha256: sha } = opened;
    if (sha !== row.sha256)
      return imagingFail('corrupt', `instance ${sopInstanceUid}: SHA-256 ${sha} differs from ${row.sha256} recorded at ingest`);
    return { ok: true, value: { instance: toInstance(row), file } };
  }

  /**
   * Current instances whose file the blob store does not hold (lost or removed behind the
   * index's back), of the given instances or studies: checked before a retrieval sends its first
   * byte, and counted by the collection report.
   */
  async missingFiles(where: {
    sopInstanceUids?: readonly string[];
    studyInstanceUids?: readonly string[];
  }): Promise<Array<{ sopInstanceUid: string; studyInstanceUid: string }>> {
    const { rows } = await this.#o.db.query<{ sop_instance_uid: string; study_uid: string; blob_key: string }>(
      `SELECT sop_instance_uid, study_uid, blob_key FROM imaging_instance
       WHERE current AND (sop_instance_uid = ANY($1::text[]) OR study_uid = ANY($2::text[]))`,
      [where.sopInstanceUids ?? [], where.studyInstanceUids ?? []],
    );
    const missing: Array<{ sopInstanceUid: string; studyInstanceUid: string }> = [];
    // A few at a time: an S3-compatible store answers each with a round trip.
    for (let i = 0; i < rows.length; i += 16) {
      const batch = rows.slice(i, i + 16);
      const held = await Promise.all(batch.map((r) => this.#o.blobs.exists(r.blob_key)));
      batch.forEach((r, k) => {
        if (!held[k]) missing.push({ sopInstanceUid: r.sop_instance_uid, studyInstanceUid: r.study_uid });
      });
    }
    return missing;
  }

  /** The FHIR Patient a study is linked to (`null` until linked), `undefined` for a study not held. */
  async studyPatient(studyInstanceUid: string): Promise<string | null | undefined> {
    const { rows } = await this.#o.db.query<{ patient_ref: string | null }>(
      'SELECT patient_ref FROM imaging_study WHERE study_uid = $1',
      [studyInstanceUid],
    );
    if (!rows[0]) return undefined;
    const ref = rows[0].patient_ref;
    return ref?.startsWith('Patient/') ? ref.slice('Patient/'.length) : null;
  }

  /** Current instances of a study or series, in instance-number order. */
  async instances(where: { studyInstanceUid: string; seriesInstanceUid?: string }): Promise<StoredInstance[]> {
    const { rows } = await this.#o.db.query<InstanceRow>(
      `SELECT * FROM imaging_instance WHERE current AND study_uid = $1 AND ($2::text IS NULL OR series_uid = $2)
        ORDER BY series_uid, instance_number NULLS LAST, sop_instance_uid`,
      [where.studyInstanceUid, where.seriesInstanceUid ?? null],
    );
    return rows.map(toInstance);
  }
}

/** Rolls back the index rows of a file the blob store did not keep. */
class BlobPutFailed extends Error {}

export interface IngestOptions {
  /** Who sent it (calling AE, user), for the record. */
  source: string;
  /** STOW-RS to /studies/{uid}: refuse instances of another study. */
  expectStudy?: string;
  /**
   * For a sender whose access covers only some patients: whether it may store images of this
   * one (`recordId`: the FHIR Patient held here, undefined when there is none yet); a reason
   * when not. Asked before anything is written.
   */
  mayStore?: (patient: { dicomPatientId: string; recordId: string | undefined }) => Promise<string | undefined>;
}

const newBlobKey = () => `${randomUUID().slice(0, 2)}/${randomUUID()}.mmf`;

function outcomeOf(a: InstanceAttributes, sha256: string, status: IngestOutcome['status'], version: number): IngestOutcome {
  return {
    status,
    sopClassUid: a.sopClassUid,
    sopInstanceUid: a.sopInstanceUid,
    studyInstanceUid: a.studyInstanceUid,
    seriesInstanceUid: a.seriesInstanceUid,
    version,
    sha256,
  };
}

const isUniqueViolation = (e: unknown) => typeof e === 'object' && e !== null && (e as { code?: unknown }).code === '23505';

function toInstance(r: InstanceRow): StoredInstance {
  return {
    sopInstanceUid: r.sop_instance_uid,
    sopClassUid: r.sop_class_uid,
    studyInstanceUid: r.study_uid,
    seriesInstanceUid: r.series_uid,
    transferSyntaxUid: r.transfer_syntax_uid,
    version: r.version,
    sha256: r.sha256,
    sizeBytes: Number(r.size_bytes),
    attributes: r.attributes,
  };
}
