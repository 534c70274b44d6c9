// Test helpers for what fetch will not send: raw request bytes over a socket, and the checks
// every refusal must pass (the route's shape, no database text).
import assert from 'node:assert/strict';
import { connect } from 'node:net';

/** What a database says when text reaches it that it cannot hold. */
export const DATABASE_TEXT = new RegExp(
  [
    // PostgreSQL's and PGlite's own words
    /invalid byte sequence|unsupported Unicode escape|must follow a high surrogate/.source,
    /invalid input syntax|syntax error at or near|violates|relation "|column "|SQLSTATE/.source,
    // the pool's, and the SQLSTATEs of bad text (character_not_in_repertoire, untranslatable_character)
    /Cannot use a pool|\b22021\b|\b22P05\b/.source,
  ].join('|'),
  'i',
);

/** A patient whose extensions nest `levels` deep: objects and arrays 2 * levels + 2 deep. */
export function nested(levels: number): string {
  return (
    '{"resourceType":"Patient","extension":[' +
    '{"url":"http://x.example/e","extension":['.repeat(levels) +
    ']}'.repeat(levels) +
    ']}'
  );
}

export interface RawAnswer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** One request as raw bytes (what fetch will not send: raw UTF-8, NUL, broken encodings); send Connection: close. */
export function rawRequest(base: string, head: string | Buffer, body: Buffer = Buffer.alloc(0)): Promise<RawAnswer> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    // Written, not ended: a client that half-closes gets no answer from Node's server at all.
    const c = connect(Number(u.port), u.hostname, () => c.write(Buffer.concat([Buffer.from(head), body])));
    c.on('data', (d: Buffer) => chunks.push(d));
    c.on('error', reject);
    c.on('close', () => {
      const all = Buffer.concat(chunks).toString('utf8');
      const end = all.indexOf('\r\n\r\n');
      const lines = all.slice(0, end).split('\r\n');
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(lines[0] ?? '')?.[1] ?? 0);
      const headers: Record<string, string> = {};
      for (const l of lines.slice(1)) {
        const i = l.indexOf(':');
        headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
      }
      let text = all.slice(end + 4);
      if (headers['transfer-encoding'] === 'chunked') {
        let out = '';
        for (;;) {
          const nl = text.indexOf('\r\n');
          const n = parseInt(text.slice(0, nl), 16);
          if (!n) break;
          out += text.slice(nl + 2, nl + 2 + n);
          text = text.slice(nl + 2 + n + 2);
        }
        text = out;
      }
      resolve({ status, headers, body: text });
    });
  });
}

/** The answer is a refusal in the shape of the route at `path`, naming nothing internal. */
export function assertRouteError(path: string, r: RawAnswer, what: string): void {
  assert.ok(r.status >= 400 && r.status < 500, `${what}: ${r.status} ${r.body.slice(0, 300)}`);
  assert.doesNotMatch(r.body, DATABASE_TEXT, `${what}: no database text`);
  const body = JSON.parse(r.body) as Record<string, unknown>;
  if (/^\/+fhir(?:[/?#]|$)/i.test(path)) {
    assert.match(r.headers['content-type'] ?? '', /^application\/fhir\+json/, what);
    assert.equal(body.resourceType, 'OperationOutcome', what);
    const issue = (body.issue as Array<{ severity: string; code: string; diagnostics: string }>)[0]!;
    assert.equal(issue.severity, 'error', what);
    assert.equal(typeof issue.code, 'string', what);
    assert.equal(typeof issue.diagnostics, 'string', what);
  } else {
    assert.match(r.headers['content-type'] ?? '', /^application\/json/, what);
    assert.equal(typeof body.code, 'string', `${what}: ${r.body}`);
    assert.equal(typeof body.message, 'string', `${what}: ${r.body}`);
  }
}
