// multipart/related (RFC 2387) as DICOMweb uses it: STOW-RS bodies in, WADO-RS answers out.
export interface Part {
  headers: Record<string, string>;
  body: Buffer;
}

export type MultipartResult = { ok: true; value: { type: string | undefined; parts: Part[] } } | { ok: false; error: string };

/** Splits a multipart/related body; every refusal names what is wrong. */
export function parseMultipartRelated(body: Buffer, contentType: string): MultipartResult {
  const params = mediaParams(contentType);
  if (params.media !== 'multipart/related') return { ok: false, error: `expected multipart/related, got ${params.media || '(none)'}` };
  const boundary = params.boundary;
  if (!boundary) return { ok: false, error: 'the Content-Type has no boundary parameter' };
  if (boundary.length > 70) return { ok: false, error: 'the boundary is longer than 70 characters (RFC 2046)' };
  const delimiter = Buffer.from(`--${boundary}`);
  let at = body.indexOf(delimiter);
  if (at < 0) return { ok: false, error: `the body never contains the boundary ${boundary}` };
  const parts: Part[] = [];
  for (;;) {
    let start = at + delimiter.length;
    if (body.subarray(start, start + 2).toString() === '--') break; // close delimiter
    if (body.subarray(start, start + 2).toString() !== '\r\n') return { ok: false, error: `part ${parts.length + 1}: the boundary line is not followed by CRLF` };
    start += 2;
    const next = body.indexOf(Buffer.concat([Buffer.from('\r\n'), delimiter]), start);
    if (next < 0) return { ok: false, error: `part ${parts.length + 1} has no closing boundary (the body is truncated or the boundary is wrong)` };
    const headerEnd = body.indexOf('\r\n\r\n', start);
    const headers: Record<string, string> = {};
    let content: Buffer;
    if (headerEnd >= 0 && headerEnd < next) {
      for (const line of body.subarray(start, headerEnd).toString('latin1').split('\r\n')) {
        const colon = line.indexOf(':');
        if (colon <= 0) return { ok: false, error: `part ${parts.length + 1}: malformed header line ${JSON.stringify(line.slice(0, 60))}` };
        headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
      content = body.subarray(headerEnd + 4, next);
    } else if (body.subarray(start, start + 2).toString() === '\r\n') content = body.subarray(start + 2, next);
    else return { ok: false, error: `part ${parts.length + 1}: no blank line between headers and body` };
    parts.push({ headers, body: content });
    at = next + 2;
  }
  return { ok: true, value: { type: params.type, parts } };
}

/** Media type and parameters of a Content-Type or Accept entry (quotes removed, names lower-cased). */
export function mediaParams(value: string): { media: string; [param: string]: string | undefined } {
  const [media = '', ...rest] = splitParams(value);
  const out: { media: string; [k: string]: string | undefined } = { media: media.trim().toLowerCase() };
  for (const p of rest) {
    const eq = p.indexOf('=');
    if (eq > 0) out[p.slice(0, eq).trim().toLowerCase()] = p.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1');
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
export function multipartRelated(type: string, parts: AsyncIterable<Part> | Iterable<Part>): { contentType: string; body: AsyncIterable<Buffer> } {
  const boundary = `medmesh-${crypto.randomUUID()}`;
  return {
    contentType: `multipart/related; type="${type}"; boundary=${boundary}`,
    body: (async function* () {
      for await (const p of parts) {
        const head = Object.entries(p.headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
        yield Buffer.from(`--${boundary}\r\n${head}\r\n`);
        yield p.body;
        yield Buffer.from('\r\n');
      }
      yield Buffer.from(`--${boundary}--\r\n`);
    })(),
  };
}
