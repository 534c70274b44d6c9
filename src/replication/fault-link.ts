// A faulty network link for tests: an HTTP proxy in front of one peer that drops requests
// or answers, delays them, delivers requests twice, answers with an earlier (stale) answer
// instead of the current one, or is cut. One link per direction, so "cut one way" is one
// link cut. Faults are drawn from a seeded generator: a failing run can be replayed.
import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface LinkFaults {
  /** Probability a request is dropped before it reaches the peer. */
  dropRequest?: number;
  /** Probability the peer's answer is dropped (the peer did the work, the caller never hears). */
  dropAnswer?: number;
  /** Added delay, uniformly 0..delayMs. */
  delayMs?: number;
  /** Probability the request is sent to the peer twice. */
  duplicate?: number;
  /** Probability the caller gets the previous answer on this link instead of this one. */
  reorder?: number;
  /** No traffic at all. */
  cut?: boolean;
}

export interface FaultStats {
  requests: number;
  droppedRequests: number;
  droppedAnswers: number;
  duplicated: number;
  reordered: number;
  refusedWhileCut: number;
}

interface Answer {
  status: number;
  headers: IncomingMessage['headers'];
  body: Buffer;
}

export class FaultLink {
  readonly #server: Server;
  readonly #upstream: URL;
  #faults: LinkFaults = {};
  #previous: Answer | undefined;
  #seed: number;
  readonly stats: FaultStats = {
    requests: 0,
    droppedRequests: 0,
    droppedAnswers: 0,
    duplicated: 0,
    reordered: 0,
    refusedWhileCut: 0,
  };

  private constructor(upstream: string, seed: number) {
    this.#upstream = new URL(upstream);
    this.#seed = seed >>> 0 || 1;
    this.#server = createServer((req, res) => {
      void this.#handle(req).then(
        (answer) => {
          if (!answer) return void res.socket?.destroy();
          res.writeHead(answer.status, answer.headers);
          res.end(answer.body);
        },
        () => res.socket?.destroy(),
      );
    });
  }

  /** Starts a link to `upstream` on 127.0.0.1 (random port). */
  static async open(upstream: string, opts: { seed?: number } = {}): Promise<FaultLink> {
    const link = new FaultLink(upstream, opts.seed ?? 1);
    await new Promise<void>((resolve) => link.#server.listen(0, '127.0.0.1', resolve));
    return link;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  set(faults: LinkFaults): void {
    this.#faults = faults;
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  /** xorshift32 in [0, 1): reproducible faults for a given seed. */
  #random(): number {
    let x = this.#seed;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#seed = x >>> 0;
    return this.#seed / 2 ** 32;
  }

  #chance(p: number | undefined): boolean {
    return !!p && this.#random() < p;
  }

  async #handle(req: IncomingMessage): Promise<Answer | undefined> {
    this.stats.requests++;
    const f = this.#faults;
    const body = await readAll(req);
    if (f.cut) {
      this.stats.refusedWhileCut++;
      return undefined;
    }
    if (this.#chance(f.dropRequest)) {
      this.stats.droppedRequests++;
      return undefined;
    }
    if (f.delayMs) await new Promise((r) => setTimeout(r, Math.floor(this.#random() * f.delayMs!)));
    if (this.#chance(f.duplicate)) {
      this.stats.duplicated++;
      await this.#forward(req, body).catch(() => undefined);
    }
    const answer = await this.#forward(req, body);
    if (this.#chance(f.dropAnswer)) {
      this.stats.droppedAnswers++;
      return undefined;
    }
    const stale = this.#previous;
    this.#previous = answer;
    if (stale && this.#chance(f.reorder)) {
      this.stats.reordered++;
      return stale;
    }
    return answer;
  }

  #forward(req: IncomingMessage, body: Buffer): Promise<Answer> {
    return new Promise((resolve, reject) => {
      const up = request(
        {
          hostname: this.#upstream.hostname,
          port: this.#upstream.port,
          path: req.url,
          method: req.method,
          headers: { ...req.headers, host: this.#upstream.host },
        },
        (res) => {
          const { 'transfer-encoding': _te, connection: _c, ...headers } = res.headers;
          void readAll(res).then((b) => resolve({ status: res.statusCode ?? 502, headers, body: b }), reject);
        },
      );
      up.on('error', reject);
      up.end(body);
    });
  }
}

async function readAll(stream: AsyncIterable<Buffer | string>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(typeof c === 'string' ? Buffer.from(c) : c);
  return Buffer.concat(chunks);
}
