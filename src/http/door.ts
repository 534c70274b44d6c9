// The door: what every request must be before any route sees it, and how the HTTP layer
// answers what it refuses itself. Limits are checked on the raw request (before parsing
// recursion or the database could fail on it); every refusal is a 4xx in the shape of the
// route it was meant for (outcome.ts), and no internal error text reaches a client.
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import { randomUUID } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest, FastifyServerOptions } from 'fastify';
import { DbClosedError, TransactionMisuseError, WorkAbortedError } from '../db/index.ts';
import { problem, problemBody, sendProblem, type Problem } from './outcome.ts';

/** Objects and arrays nested deeper than this in a JSON body are refused (FHIR resources need far fewer). */
export const MAX_JSON_DEPTH = 100;
/** How long a connection answered for a malformed request may go on sending before it is closed. */
const CLIENT_ERROR_LINGER_MS = 2000;
/** A request line longer than this that overflows the header limit is answered 414, not 431. */
const MAX_REQUEST_LINE = 8192;
/** Longest path segment (a FHIR id is at most 64 characters, a DICOM UID 64). */
export const MAX_PATH_SEGMENT = 200;

/** A request the door refuses, thrown from a parser or hook and answered by the error handler. */
export class DoorError extends Error {
  readonly problem: Problem;
  constructor(problem: Problem) {
    super(problem.message);
    this.problem = problem;
  }
}

const bad = (message: string, fhir: Problem['fhir'] = 'invalid'): DoorError =>
  new DoorError({ status: 400, fhir, code: 'bad-request', message });

/**
 * Where a JSON text breaks a limit a parser would not catch, or undefined: nesting deeper than
 * `maxDepth`, U+0000 (no database text can hold it) or an unpaired surrogate escape (not a
 * Unicode string). One pass over the raw text, before JSON.parse and anything recursive.
 */
export function jsonRefusal(text: string, maxDepth: number): { tooDeep: boolean; message: string } | undefined {
  let depth = 0;
  let inString = false;
  const hex = (at: number) => (/^[0-9a-fA-F]{4}$/.test(text.slice(at, at + 4)) ? parseInt(text.slice(at, at + 4), 16) : -1);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x22) inString = false;
      else if (c === 0x5c) {
        if (text.charCodeAt(i + 1) !== 0x75) {
          i++;
          continue;
        }
        const cp = hex(i + 2);
        if (cp === 0) return { tooDeep: false, message: 'a string holds U+0000 (NUL), which is not allowed' };
        const lone = { tooDeep: false, message: `a string holds an unpaired surrogate (\\u${text.slice(i + 2, i + 6)})` };
        if (cp >= 0xdc00 && cp <= 0xdfff) return lone;
        if (cp >= 0xd800 && cp <= 0xdbff) {
          const low = text.charCodeAt(i + 6) === 0x5c && text.charCodeAt(i + 7) === 0x75 ? hex(i + 8) : -1;
          if (low < 0xdc00 || low > 0xdfff) return lone;
          i += 6;
        }
        i += 5;
      }
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) {
      if (++depth > maxDepth) return { tooDeep: true, message: `objects and arrays are nested deeper than ${maxDepth} levels` };
    } else if (c === 0x7d || c === 0x5d) depth--;
  }
  return undefined;
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

/** The body as text: UTF-8 only (a charset parameter naming anything else is refused, invalid bytes too). */
function bodyText(req: FastifyRequest, body: Buffer): string {
  const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(req.headers['content-type'] ?? '')?.[1]?.toLowerCase();
  if (charset && charset !== 'utf-8' && charset !== 'utf8')
    throw new DoorError({
      status: 415,
      fhir: 'not-supported',
      code: 'unsupported-media-type',
      message: `charset ${charset} is not supported: JSON bodies are UTF-8`,
    });
  try {
    return UTF8.decode(body);
  } catch {
    throw bad('the request body is not valid UTF-8', 'structure');
  }
}

export interface DoorOptions {
  bodyLimit: number;
  maxJsonDepth: number;
}

/**
 * Body parsers (JSON and forms, strict UTF-8, limits checked before parsing; an empty body
 * is no body) and the request-line checks every route gets.
 */
export function registerDoor(app: FastifyInstance, opts: DoorOptions): void {
  // Only JSON and forms are spoken; anything else (text/plain included) is answered with 415.
  app.removeContentTypeParser(['text/plain', 'application/json']);
  // The default parser keeps its prototype-poisoning checks; it runs on text that passed ours.
  const parse = app.getDefaultJsonParser('error', 'error');
  app.addContentTypeParser(
    ['application/json', 'application/fhir+json', 'application/json+fhir'],
    { parseAs: 'buffer' },
    (req, body: Buffer, done) => {
      let text: string;
      try {
        text = bodyText(req, body);
        // Generic clients send a content type with every request, bodiless ones too.
        if (text.trim() === '') return done(null, undefined);
        const refusal = jsonRefusal(text, opts.maxJsonDepth);
        if (refusal)
          throw new DoorError({
            status: 400,
            fhir: refusal.tooDeep ? 'too-costly' : 'invalid',
            code: 'bad-request',
            message: refusal.tooDeep
              ? `JSON body refused: ${refusal.message} (limits: ${opts.maxJsonDepth} levels of nesting, ${opts.bodyLimit} bytes)`
              : `JSON body refused: ${refusal.message}`,
          });
      } catch (e) {
        return done(e as Error, undefined);
      }
      void parse(req, text, done);
    },
  );
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'buffer' }, (req, body: Buffer, done) => {
    try {
      const text = bodyText(req, body);
      checkQuery(text, 'the form body');
      done(null, text);
    } catch (e) {
      done(e as Error, undefined);
    }
  });
  app.addHook('onRequest', (req, _reply, done) => {
    try {
      checkTarget(req.url);
    } catch (e) {
      done(e as Error);
      return;
    }
    // A DELETE (or OPTIONS) carries no body here: a content type sent with an empty one is ignored.
    if (
      (req.method === 'DELETE' || req.method === 'OPTIONS') &&
      req.headers['transfer-encoding'] === undefined &&
      (req.headers['content-length'] === undefined || req.headers['content-length'] === '0')
    )
      delete req.raw.headers['content-type'];
    done();
  });
}

/**
 * The request target: printable ASCII only (UTF-8 must be percent-encoded), every path segment
 * and query component valid percent-encoded UTF-8 without NUL, no segment longer than
 * MAX_PATH_SEGMENT.
 */
export function checkTarget(url: string): void {
  if (/[^\x21-\x7e]/.test(url))
    throw bad('the URL holds a raw space, control or non-ASCII character: percent-encode it as UTF-8 (RFC 3986)');
  const q = url.indexOf('?');
  const path = q < 0 ? url : url.slice(0, q);
  for (const segment of path.split('/')) {
    if (segment.length > MAX_PATH_SEGMENT)
      throw new DoorError({
        status: 414,
        fhir: 'too-costly',
        code: 'uri-too-long',
        message: `a path segment is longer than ${MAX_PATH_SEGMENT} characters`,
      });
    decodeComponent(segment, 'the URL path');
  }
  if (q >= 0) checkQuery(url.slice(q + 1), 'the query string');
}

function checkQuery(query: string, where: string): void {
  for (const pair of query.split('&')) for (const part of pair.split('=')) decodeComponent(part.replaceAll('+', ' '), where);
}

function decodeComponent(s: string, where: string): void {
  if (!s.includes('%')) return;
  let decoded: string;
  try {
    decoded = decodeURIComponent(s);
  } catch {
    throw bad(`${where} is not valid percent-encoded UTF-8`);
  }
  if (decoded.includes('\u0000')) throw bad(`${where} holds U+0000 (NUL), which is not allowed`);
}

/** Fastify options for what it answers before any hook runs (malformed URLs, too long segments, broken HTTP). */
export function doorServerOptions(): Pick<FastifyServerOptions, 'frameworkErrors' | 'clientErrorHandler' | 'return503OnClosing'> {
  const answered = new WeakSet<Socket>();
  return {
    // A closing site answers new requests itself (deadline.ts), in the route's shape.
    return503OnClosing: false,
    frameworkErrors: (err: FastifyError, req: FastifyRequest, reply: FastifyReply) => {
      const problem: Problem =
        err.code === 'FST_ERR_BAD_URL'
          ? bad('the URL is not valid percent-encoded UTF-8').problem
          : err.code === 'FST_ERR_MAX_PARAM_LENGTH'
            ? { status: 414, fhir: 'too-costly', code: 'uri-too-long', message: 'a path segment is too long' }
            : internal(req, err);
      void sendProblem(req, reply, problem);
    },
    clientErrorHandler: (err: Error & { code?: string; rawPacket?: unknown }, socket: Socket) => {
      // The parser fails again on every later chunk of a request it gave up on: answered once.
      if (err.code === 'ECONNRESET' || socket.destroyed || answered.has(socket)) return;
      answered.add(socket);
      // The request line, as far as it was read: which route was meant, and was it the URL that was too long?
      const head = Buffer.isBuffer(err.rawPacket) ? err.rawPacket.toString('latin1') : '';
      const lineEnd = head.indexOf('\r\n');
      const line = lineEnd < 0 ? head : head.slice(0, lineEnd);
      const target = line.split(' ')[1] ?? '';
      const status =
        err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? 408
          : err.code === 'HPE_HEADER_OVERFLOW'
            ? line.length > MAX_REQUEST_LINE
              ? 414
              : 431
            : 400;
      const message =
        status === 408
          ? 'the request was not received in time'
          : status === 414
            ? `the request line (the URL with its query) is longer than ${MAX_REQUEST_LINE} characters; ` +
              'send long searches as POST [type]/_search'
            : status === 431
              ? 'the request headers are too large'
              : err.code === 'HPE_INVALID_URL' || err.code === 'HPE_INVALID_METHOD'
                ? 'malformed request line: the URL must be percent-encoded (RFC 3986), raw UTF-8 and spaces included'
                : 'malformed HTTP request';
      const { contentType, body } = problemBody(target, {
        status,
        fhir: status === 408 ? 'timeout' : status === 400 ? 'structure' : 'too-costly',
        code: status === 408 ? 'timeout' : status === 400 ? 'bad-request' : 'too-large',
        message,
      });
      if (!socket.writable) return void socket.destroy();
      // Half-close after the answer and read off what the client is still sending: closing with
      // unread bytes would reset the connection, and the client could lose the answer. Bounded.
      const lines = [
        `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}`,
        `Content-Type: ${contentType}`,
        `Content-Length: ${Buffer.byteLength(body)}`,
        'Connection: close',
      ];
      socket.end(`${lines.join('\r\n')}\r\n\r\n${body}`);
      socket.resume();
      setTimeout(() => socket.destroy(), CLIENT_ERROR_LINGER_MS).unref();
    },
  };
}

/** A 500 that names only an id: the error itself goes to the log under that id. */
export function internal(req: FastifyRequest, err: unknown, what = 'internal error'): Problem {
  const errorId = randomUUID();
  req.log.error({ err, errorId }, what);
  return {
    status: 500,
    fhir: 'exception',
    code: 'internal',
    message: `${what} ${errorId}: the details are in the site's log under this id`,
  };
}

/** An error raised by a database (engine errors carry a SQLSTATE and a severity) or by the Db layer. */
export function isDatabaseError(e: unknown): boolean {
  if (e instanceof DbClosedError || e instanceof WorkAbortedError || e instanceof TransactionMisuseError) return true;
  const x = e as { code?: unknown; severity?: unknown } | null;
  return typeof x?.code === 'string' && /^[0-9A-Z]{5}$/.test(x.code) && typeof x.severity === 'string';
}

/** Every error that reaches Fastify, as the answer a client may see. */
export function problemOf(req: FastifyRequest, err: unknown, bodyLimit: number): Problem {
  if (err instanceof DoorError) return err.problem;
  if (err instanceof WorkAbortedError)
    return { status: 503, fhir: 'transient', code: 'unavailable', message: `the request was stopped: ${err.message}` };
  if (err instanceof DbClosedError)
    return { status: 503, fhir: 'transient', code: 'unavailable', message: 'the site is stopping; try again' };
  const e = err as Partial<FastifyError>;
  switch (e.code) {
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
    case 'FST_ERR_CTP_INVALID_TYPE':
      return {
        status: 415,
        fhir: 'not-supported',
        code: 'unsupported-media-type',
        message:
          `content type ${String(req.headers['content-type'])} is not supported; ` +
          'send application/fhir+json or application/json',
      };
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return {
        status: 413,
        fhir: 'too-costly',
        code: 'too-large',
        message: `the request body exceeds the limit of ${bodyLimit} bytes`,
      };
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return bad('Content-Length does not match the body', 'structure').problem;
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return bad('the request body is empty; send a JSON document', 'structure').problem;
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return bad('malformed JSON', 'structure').problem;
    case 'FST_ERR_HANDLER_TIMEOUT':
      return { status: 503, fhir: 'timeout', code: 'timeout', message: 'the request timed out' };
    default:
      break;
  }
  if (err instanceof SyntaxError) return bad(`malformed JSON: ${err.message}`, 'structure').problem;
  // A route schema refused the request: every issue, named by where it is (body.reason, querystring.day).
  if (hasZodFastifySchemaValidationErrors(err)) {
    const where = (err as { validationContext?: string }).validationContext ?? 'request';
    const issues = err.validation.map((v) => `${[where, ...v.instancePath.split('/').filter(Boolean)].join('.')}: ${v.message}`);
    return problem(400, issues.join('; '), { details: { issues } });
  }
  // Fastify's own refusals (validation, and the like) word nothing internal.
  if (typeof e.code === 'string' && e.code.startsWith('FST_ERR_') && e.statusCode && e.statusCode >= 400 && e.statusCode < 500)
    return { status: e.statusCode, fhir: 'invalid', code: 'bad-request', message: e.message ?? 'bad request' };
  return internal(req, err);
}

export function registerErrorHandling(app: FastifyInstance, bodyLimit: number): void {
  app.setNotFoundHandler((req, reply) =>
    sendProblem(req, reply, {
      status: 404,
      fhir: 'not-found',
      code: 'not-found',
      message: `no route for ${req.method} ${req.url.split('?')[0]!.slice(0, 200)}`,
    }),
  );
  app.setErrorHandler((err, req, reply) => sendProblem(req, reply, problemOf(req, err, bodyLimit)));
}
