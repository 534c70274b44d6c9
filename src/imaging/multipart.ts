// multipart/related (RFC 2387) as DICOMweb uses it: STOW-RS bodies in, WADO-RS answers out.
export interface Part {
  headers: Record<string, string>;
  body: Buffer;
}

/** A malformed multipart/related body; the message names the part and what is wrong. */
export class MultipartError extends Error {}

export interface StreamedPart {
  /** 1-based position in the body. */
  index: number;
  headers: Record<string, string>;
  /** The part's bytes as they arrive; throws MultipartError if the body ends inside it. */
  body: AsyncIterable<Buffer>;
}

export interface MultipartLimits {
  /** Bytes allowed before the first boundary (default 64 KiB). */
  preambleBytes?: number;
  /** Bytes allowed for one part's header block (default 16 KiB). */
  headerBytes?: number;
}

const CRLF = Buffer.from('\r\n');
const BLANK_LINE = Buffer.from('\r\n\r\n');

/**
 * Reads a multipart/related body (RFC 2046) as it arrives, part by part, without holding more
 * than one chunk and a header block: a STOW-RS upload of any size flows straight into the
 * store. Each part's body must be read (or abandoned) before the next part is asked for; what
 * is left of it is skipped. Structural faults throw MultipartError.
 */
export async function* readMultipartRelated(
  source: AsyncIterable<Uint8Array>,
  boundary: string,
  limits: MultipartLimits = {},
): AsyncGenerator<StreamedPart, void, undefined> {
  const r = new ByteReader(source);
  const dash = Buffer.from(`--${boundary}`);
  const delimiter = Buffer.concat([CRLF, dash]);
  const preamble = await r.until(dash, limits.preambleBytes ?? 2 ** 16);
  if (preamble === undefined)
    throw new MultipartError(
      r.ended
        ? `the body never contains the boundary ${boundary}`
        : `no boundary ${boundary} within the first ${limits.preambleBytes ?? 2 ** 16} bytes`,
    );
  for (let index = 1; ; index++) {
    const after = await r.take(2);
    if (after?.equals(Buffer.from('--'))) return void (await r.drain()); // close delimiter; the epilogue is ignored
    if (!after?.equals(CRLF)) throw new MultipartError(`part ${index}: the boundary line is not followed by CRLF`);
    const headers: Record<string, string> = {};
    if ((await r.peek(2))?.equals(CRLF)) await r.take(2);
    else {
      const block = await r.until(BLANK_LINE, limits.headerBytes ?? 2 ** 14);
      if (block === undefined)
        throw new MultipartError(
          `part ${index}: its headers are not ended by a blank line` +
            `${r.ended ? ' (the body is truncated)' : ` within ${limits.headerBytes ?? 2 ** 14} bytes`}`,
        );
      for (const line of block.toString('latin1').split('\r\n')) {
        const colon = line.indexOf(':');
        if (colon <= 0) throw new MultipartError(`part ${index}: malformed header line ${JSON.stringify(line.slice(0, 60))}`);
        headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
    }
    const truncated = `part ${index} has no closing boundary (the body is truncated or the boundary is wrong)`;
    const passed = r.delimitersPassed;
    yield { index, headers, body: r.through(delimiter, truncated) };
    // Whatever the caller left unread of this part is skipped; the reader's state is only its buffer.
    if (r.delimitersPassed === passed) for await (const _ of r.through(delimiter, truncated));
  }
}

/** Pulls chunks from a source on demand, keeping only what has not been handed out yet. */
class ByteReader {
  readonly #it: AsyncIterator<Uint8Array>;
  #buf: Buffer = Buffer.alloc(0);
  #ended = false;
  /** How many times `through` has reached its delimiter. */
  delimitersPassed = 0;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#it = source[Symbol.asyncIterator]();
  }

  get ended(): boolean {
    return this.#ended;
  }

  async #more(): Promise<boolean> {
    if (this.#ended) return false;
    const next = await this.#it.next();
    if (next.done) {
      this.#ended = true;
      return false;
    }
    const chunk = Buffer.from(next.value.buffer, next.value.byteOffset, next.value.byteLength);
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, chunk]) : chunk;
    return true;
  }

  #consume(n: number): Buffer {
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  async peek(n: number): Promise<Buffer | undefined> {
    while (this.#buf.length < n) if (!(await this.#more())) return undefined;
    return this.#buf.subarray(0, n);
  }

  async take(n: number): Promise<Buffer | undefined> {
    return (await this.peek(n)) && this.#consume(n);
  }

  /** The bytes before `delim` (which is consumed); undefined if not found within `max` bytes or before the end. */
  async until(delim: Buffer, max: number): Promise<Buffer | undefined> {
    let from = 0;
    for (;;) {
      const at = this.#buf.indexOf(delim, from);
      if (at >= 0) {
        const out = this.#consume(at);
        this.#consume(delim.length);
        return out;
      }
      if (this.#buf.length > max + delim.length) return undefined;
      from = Math.max(0, this.#buf.length - delim.length + 1);
      if (!(await this.#more())) return undefined;
    }
  }

  /** Hands out the bytes before `delim` as they arrive (keeping back a possible partial delimiter), then consumes it. */
  async *through(delim: Buffer, truncated: string): AsyncGenerator<Buffer, void, undefined> {
    for (;;) {
      const at = this.#buf.indexOf(delim);
      if (at >= 0) {
        const out = this.#consume(at);
        this.#consume(delim.length);
        this.delimitersPassed++;
        if (out.length) yield out;
        return;
      }
      const keep = delim.length - 1;
      if (this.#buf.length > keep) {
        const out = this.#buf.subarray(0, this.#buf.length - keep);
        this.#buf = Buffer.from(this.#buf.subarray(this.#buf.length - keep));
        yield out;
      }
      if (!(await this.#more())) throw new MultipartError(truncated);
    }
  }

  async drain(): Promise<void> {
    while (await this.#more()) this.#buf = Buffer.alloc(0);
  }
}

/** Media type and parameters of a Content-Type or Accept entry (quotes removed, names lower-cased). */
export function mediaParams(value: string): { media: string; [param: string]: string | undefined } {
  const [media = '', ...rest] = splitParams(value);
  const out: { media: string; [k: string]: string | undefined } = { media: media.trim().toLowerCase() };
  for (const p of rest) {
    const eq = p.indexOf('=');
    if (eq > 0)
      out[p.slice(0, eq).trim().toLowerCase()] = p
        .slice(eq + 1)
        .trim()
        .replace(/^"(.*)"$/, '$1');
  }
  return out;
}

function splitParams(value: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (const c of value) {
    if (c === '"') quoted = !quoted;
    if (c === ';' && !quoted) {
      out.push(cur);
      cur = '';
    } else cur += c;
  }
  out.push(cur);
  return out;
}

/** Streams parts as one multipart/related body; returns the Content-Type to send with it. */
export function multipartRelated(
  type: string,
  parts: AsyncIterable<Part> | Iterable<Part>,
): { contentType: string; body: AsyncIterable<Buffer> } {
  const boundary = `medmesh-${crypto.randomUUID()}`;
  return {
    contentType: `multipart/related; type="${type}"; boundary=${boundary}`,
    body: (async function* () {
      for await (const p of parts) {
        const head = Object.entries(p.headers)
          .map(([k, v]) => `${k}: ${v}\r\n`)
          .join('');
        yield Buffer.from(`--${boundary}\r\n${head}\r\n`);
        yield p.body;
        yield Buffer.from('\r\n');
      }
      yield Buffer.from(`--${boundary}--\r\n`);
    })(),
  };
}
