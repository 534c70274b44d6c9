// No request can hold a site forever, and none is cut off by a closing database.
//  - Every request runs as work bound to an AbortSignal (Db.withSignal). After the route's
//    timeout (config.timeoutMs, else the site's, DEFAULT_REQUEST_TIMEOUT_MS) the client is
//    answered 503 if no answer has started, and the signal aborts: the work's open transaction
//    is rolled back and its connection given back (the single PGlite connection included).
//  - Closing the server (every close path: Fastify's preClose/onClose) answers new requests
//    503, lets requests in flight finish for a grace period, then stops what is left the same
//    way, and resolves only once every handler has returned, so the database can be closed
//    under no request (no "Cannot use a pool after calling end on the pool").
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Db } from '../db/index.ts';
import { sendProblem } from './outcome.ts';

/** The site's request timeout unless a route says otherwise. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 60_000;

declare module 'fastify' {
  interface FastifyContextConfig {
    /** This route's request timeout in ms (instead of the site's). */
    timeoutMs?: number;
  }
  interface FastifyRequest {
    /** The request's work: its signal, its timer, whether its handler still runs. */
    work: Work | null;
  }
}

export interface DeadlineOptions {
  db: Db;
  timeoutMs: number;
  /** On close: how long requests in flight may take before they are stopped (default 2 s). */
  closeGraceMs?: number;
  /** On close: how long stopped requests have to return, and answers to be written (default 1 s). */
  stopGraceMs?: number;
}

class Work {
  readonly controller = new AbortController();
  /** An answer is on its way (onSend ran): nobody else may start one. */
  answering = false;
  #pending = 1; // the response; +1 while the handler runs
  #timer: NodeJS.Timeout | undefined;
  /** Aborts the work and answers 503 with `message` if no answer has started. */
  stop: (reason: string, message: string) => void = (reason) => this.controller.abort(new Error(reason));
  readonly #onIdle: (w: Work) => void;
  readonly #onBusy: (w: Work) => void;

  constructor(onIdle: (w: Work) => void, onBusy: (w: Work) => void) {
    this.#onIdle = onIdle;
    this.#onBusy = onBusy;
  }

  arm(ms: number, onTimeout: () => void): void {
    this.#timer = setTimeout(onTimeout, ms);
  }

  enter(): void {
    if (this.#pending++ === 0) this.#onBusy(this);
  }

  leave(): void {
    if (--this.#pending > 0) return;
    clearTimeout(this.#timer);
    this.#onIdle(this);
  }
}

export class InFlight {
  readonly #all = new Set<Work>();
  #idle: Array<() => void> = [];
  closing = false;

  get size(): number {
    return this.#all.size;
  }

  start(): Work {
    const w = new Work(
      (x) => {
        this.#all.delete(x);
        if (this.#all.size === 0) for (const resolve of this.#idle.splice(0)) resolve();
      },
      (x) => this.#all.add(x),
    );
    this.#all.add(w);
    return w;
  }

  /** Resolves once no request is in flight, or after `ms`. */
  async idle(ms: number): Promise<void> {
    if (this.#all.size === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      this.#idle.push(resolve);
      timer = setTimeout(resolve, ms);
    });
    clearTimeout(timer);
  }

  /** Stops every request in flight (aborted, answered 503 if not answered yet). */
  stopAll(reason: string): void {
    for (const w of this.#all) w.stop(reason, `${reason}; retry the request`);
  }
}

/**
 * Registers the deadline hooks; call it before any other hook and any route (it wraps every
 * route's handler to know when the handler has returned).
 */
export function registerDeadlines(app: FastifyInstance, opts: DeadlineOptions): InFlight {
  const inflight = new InFlight();
  app.decorateRequest('work', null);
  app.addHook('onRequest', (req, reply, done) => {
    if (inflight.closing) {
      reply.header('connection', 'close');
      sendProblem(req, reply, { status: 503, fhir: 'transient', code: 'unavailable', message: 'the site is stopping' });
      return;
    }
    const work = inflight.start();
    req.work = work;
    reply.raw.once('close', () => work.leave());
    // One answer per request. After the timeout answered (or a hook did, and Fastify went on
    // because the client had gone), the handler's late answer and status are dropped: a second
    // answer writes headers twice, and Fastify's path for that error ends the process (5.12).
    const send = reply.send.bind(reply);
    const code = reply.code.bind(reply);
    reply.send = (payload?: unknown) => (work.answering ? reply : send(payload));
    reply.code = reply.status = (status: number) => (work.answering ? reply : code(status));
    work.stop = (reason, message) => {
      work.controller.abort(new Error(reason));
      if (work.answering || reply.sent || reply.raw.headersSent || reply.raw.destroyed) return;
      reply.header('retry-after', '1');
      sendProblem(req, reply, { status: 503, fhir: 'transient', code: 'unavailable', message });
    };
    const ms = req.routeOptions.config?.timeoutMs ?? opts.timeoutMs;
    // Armed here, outside the request's scope: the 503 (and its audit entry) is not aborted work.
    work.arm(ms, () =>
      work.stop(
        `the request took longer than ${ms} ms`,
        `the request did not finish within ${ms} ms and was stopped (request timeout); retry it`,
      ),
    );
    opts.db.withSignal(work.controller.signal, done);
  });
  app.addHook('onSend', (req, _reply, payload, done) => {
    if (req.work) req.work.answering = true;
    done(null, payload);
  });
  app.addHook('onRoute', (route) => {
    const handler = route.handler;
    route.handler = function (this: FastifyInstance, req: FastifyRequest, reply: FastifyReply) {
      const work = req.work;
      if (!work) return handler.call(this, req, reply);
      // A hook has answered already (Fastify goes on to the handler when the client has gone).
      if (work.answering || reply.sent) return reply;
      work.enter();
      let out: unknown;
      try {
        // The handler's own context is bound too: body parsing may have run elsewhere.
        out = opts.db.withSignal(work.controller.signal, () => handler.call(this, req, reply));
      } catch (e) {
        work.leave();
        throw e;
      }
      if (out instanceof Promise) return out.finally(() => work.leave());
      work.leave();
      return out;
    };
  });
  // Every close path goes through here: new requests are refused, those in flight get a grace
  // period, then are stopped and answered 503; the server closes once their handlers returned.
  const closeGrace = opts.closeGraceMs ?? 2000;
  const stopGrace = opts.stopGraceMs ?? 1000;
  let stopping: Promise<void> | undefined;
  app.addHook('preClose', (done) => {
    inflight.closing = true;
    stopping = (async () => {
      await inflight.idle(closeGrace);
      if (inflight.size > 0) {
        inflight.stopAll('the site is stopping');
        await inflight.idle(stopGrace);
      }
      // Connections still open (keep-alive sockets, answers nobody reads) do not hold shutdown.
      app.server.closeAllConnections();
    })();
    done();
  });
  app.addHook('onClose', async () => {
    await stopping;
    // A handler that ignored its signal (waiting on something that is not the database) has
    // one more grace period; after it the database may close under it (DbClosedError).
    await inflight.idle(stopGrace);
  });
  return inflight;
}
