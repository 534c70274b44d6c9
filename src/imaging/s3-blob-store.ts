// Image files in an S3-compatible object store (DESIGN.md §9): the same contract as the
// filesystem store. An object appears under its key only when its upload completes (S3's
// PUT and multipart completion are atomic), so a file cut off mid-stream leaves nothing.
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { Readable } from 'node:stream';
import { checkBlobKey, type BlobStore } from './blob-store.ts';

export interface S3BlobStoreOptions {
  /** The service, e.g. https://s3.example.org or http://10.1.2.3:9000 (MinIO, Ceph RGW). */
  endpoint: string;
  bucket: string;
  /** Keys are stored under this prefix (e.g. the site id), so one bucket can serve several. */
  prefix?: string;
  region?: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** Bucket in the path rather than the host name (most self-hosted services; default true). */
  forcePathStyle?: boolean;
  /** Multipart part size (default 8 MiB; S3's minimum is 5 MiB). */
  partSizeBytes?: number;
  /**
   * A request whose socket stays silent this long fails (default 15 s): a stalled service must
   * fail the store (a DICOM sender is answered "out of resources"), not hold it for minutes.
   */
  requestTimeoutMs?: number;
  /** Connecting gives up after this long (default 5 s). */
  connectTimeoutMs?: number;
}

export class S3BlobStore implements BlobStore {
  readonly #client: S3Client;
  readonly #o: S3BlobStoreOptions;
  readonly #prefix: string;

  constructor(opts: S3BlobStoreOptions) {
    this.#o = opts;
    this.#prefix = opts.prefix ? `${opts.prefix.replace(/\/+$/, '')}/` : '';
    this.#client = new S3Client({
      endpoint: opts.endpoint,
      region: opts.region ?? 'us-east-1',
      forcePathStyle: opts.forcePathStyle ?? true,
      credentials: { accessKeyId: opts.accessKeyId, secretAccessKey: opts.secretAccessKey },
      requestHandler: {
        requestTimeout: opts.requestTimeoutMs ?? 15_000,
        connectionTimeout: opts.connectTimeoutMs ?? 5_000,
        // Without it the SDK only warns and keeps waiting.
        throwOnRequestTimeout: true,
      },
      // A stalled service is retried by the caller's sender, not three times over here.
      maxAttempts: 2,
    });
  }

  #key(key: string): string {
    return this.#prefix + checkBlobKey(key);
  }

  async put(key: string, data: Readable | Uint8Array): Promise<{ bytes: number }> {
    const Key = this.#key(key);
    let bytes = 0;
    // The source's own error is what the caller should see, not the upload's reaction to it.
    let sourceError: unknown;
    const body =
      data instanceof Uint8Array
        ? Buffer.from(data.buffer, data.byteOffset, data.byteLength)
        : Readable.from(
            (async function* () {
              try {
                for await (const chunk of data as AsyncIterable<Buffer>) {
                  bytes += chunk.length;
                  yield chunk;
                }
              } catch (e) {
                sourceError = e;
                throw e;
              }
            })(),
          );
    if (body instanceof Buffer) bytes = body.length;
    const upload = new Upload({
      client: this.#client,
      params: { Bucket: this.#o.bucket, Key, Body: body },
      partSize: this.#o.partSizeBytes ?? 8 * 2 ** 20,
      queueSize: 2,
      leavePartsOnError: false,
    });
    try {
      await upload.done();
    } catch (e) {
      throw sourceError ?? e;
    }
    return { bytes };
  }

  async get(key: string): Promise<Readable | undefined> {
    const r = await this.#object(key);
    return r ? (r.Body as Readable) : undefined;
  }

  async read(key: string): Promise<Buffer | undefined> {
    const r = await this.#object(key);
    return r?.Body ? Buffer.from(await r.Body.transformToByteArray()) : undefined;
  }

  async #object(key: string) {
    try {
      return await this.#client.send(new GetObjectCommand({ Bucket: this.#o.bucket, Key: this.#key(key) }));
    } catch (e) {
      if (e instanceof S3ServiceException && (e.name === 'NoSuchKey' || e.$metadata.httpStatusCode === 404)) return undefined;
      throw e;
    }
  }

  async exists(key: string): Promise<boolean> {
    try {
      await this.#client.send(new HeadObjectCommand({ Bucket: this.#o.bucket, Key: this.#key(key) }));
      return true;
    } catch (e) {
      if (e instanceof S3ServiceException && (e.name === 'NotFound' || e.$metadata.httpStatusCode === 404)) return false;
      throw e;
    }
  }

  async delete(key: string): Promise<void> {
    await this.#client.send(new DeleteObjectCommand({ Bucket: this.#o.bucket, Key: this.#key(key) }));
  }

  async *list(prefix = ''): AsyncIterable<string> {
    let token: string | undefined;
    do {
      const page = await this.#client.send(
        new ListObjectsV2Command({
          Bucket: this.#o.bucket,
          Prefix: this.#prefix + prefix,
          ...(token ? { ContinuationToken: token } : {}),
        }),
      );
      for (const o of page.Contents ?? []) if (o.Key) yield o.Key.slice(this.#prefix.length);
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  close(): void {
    this.#client.destroy();
  }
}
