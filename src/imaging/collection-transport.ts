// How a collector talks to a source PACS: ask what it holds for a study date, and bring one
// study over. DIMSE (C-FIND, then C-MOVE to this site's own AE, which stores what arrives) or
// DICOMweb (QIDO-RS, then WADO-RS streamed part by part into the store). The collector's
// checkpoints, retries and completeness report are the same for both.
import { Agent, fetch } from 'undici';
import { cFindStudies, cMoveStudy, type DicomPeer } from './dimse-scu.ts';
import type { ImagingStore } from './imaging-store.ts';
import { mediaParams, MultipartError, readMultipartRelated } from './multipart.ts';

export interface StudyAtSource {
  uid: string;
  /** Instances the source counts for the study; null when it does not say. */
  count: number | null;
}

export type TransportResult<T> = { ok: true; value: T } | { ok: false; error: string };

export interface CollectionTransport {
  /** The studies the source dates `day` (YYYYMMDD). */
  findStudies(day: string): Promise<TransportResult<StudyAtSource[]>>;
  /** Brings one study into this site's store; what is held afterwards is counted by the caller. */
  retrieveStudy(uid: string): Promise<TransportResult<void>>;
}

/** C-FIND by study date and C-MOVE to `localAe`, which the source must know as a destination. */
export function dimseTransport(
  source: DicomPeer,
  opts: { localAe: string; findTimeoutMs?: number; moveTimeoutMs?: number },
): CollectionTransport {
  return {
    async findStudies(day) {
      const found = await cFindStudies(
        source,
        { callingAe: opts.localAe, timeoutMs: opts.findTimeoutMs ?? 120_000 },
        { StudyDate: day, StudyInstanceUID: '', NumberOfStudyRelatedInstances: '' },
      );
      if (!found.ok) return found;
      return {
        ok: true,
        value: found.value
          .map((m) => ({ uid: text(m.StudyInstanceUID), count: countOf(text(m.NumberOfStudyRelatedInstances)) }))
          .filter((s) => s.uid),
      };
    },
    async retrieveStudy(uid) {
      const moved = await cMoveStudy(
        source,
        { callingAe: opts.localAe, timeoutMs: opts.moveTimeoutMs ?? 600_000 },
        opts.localAe,
        uid,
      );
      return moved.ok ? { ok: true, value: undefined } : moved;
    },
  };
}

export interface DicomwebSource {
  /** The service root, e.g. http://pacs.example:8042/dicom-web */
  url: string;
  /** Sent with every request (an Authorization header, for one). */
  headers?: Record<string, string>;
}

const PAGE = 500;

/**
 * The collector's HTTP client is undici from npm, pinned, not the one bundled with Node: Node
 * 24's (undici 7.x) throws an uncatchable AssertionError when a server closes a connection
 * (`Connection: close`, as Orthanc's WADO-RS answers) while the body is not being read, as
 * happens whenever the store is busy with a part (nodejs/undici#5360), and that ended the
 * site's process. Fixed in undici 8 (nodejs/undici#5474).
 */
function sourceAgent(timeoutMs: number): Agent {
  return new Agent({ connect: { timeout: 30_000 }, headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
}

/** QIDO-RS by study date (paged) and WADO-RS of the whole study, each part streamed into `store`. */
export function dicomwebTransport(
  source: DicomwebSource,
  opts: { store: ImagingStore; sourceLabel: string; timeoutMs?: number },
): CollectionTransport {
  const root = source.url.replace(/\/+$/, '');
  const timeout = () => AbortSignal.timeout(opts.timeoutMs ?? 600_000);
  const dispatcher = sourceAgent(opts.timeoutMs ?? 600_000);
  const describe = (e: unknown) =>
    e instanceof Error ? (e.cause instanceof Error ? `${e.message}: ${e.cause.message}` : e.message) : String(e);
  return {
    async findStudies(day) {
      const studies: StudyAtSource[] = [];
      try {
        for (let offset = 0; ; offset += PAGE) {
          const res = await fetch(`${root}/studies?StudyDate=${day}&includefield=00201208&limit=${PAGE}&offset=${offset}`, {
            headers: { ...source.headers, accept: 'application/dicom+json' },
            signal: timeout(),
            dispatcher,
          });
          if (res.status === 204) break;
          if (!res.ok)
            return { ok: false, error: `QIDO-RS ${root}/studies answered ${res.status}: ${(await res.text()).slice(0, 200)}` };
          const page = await res.json();
          if (!Array.isArray(page)) return { ok: false, error: `QIDO-RS ${root}/studies did not answer a JSON array` };
          for (const m of page as Array<Record<string, { Value?: unknown[] } | undefined>>) {
            const uid = text(m['0020000D']?.Value?.[0]);
            if (uid) studies.push({ uid, count: countOf(text(m['00201208']?.Value?.[0])) });
          }
          if (page.length < PAGE) break;
        }
      } catch (e) {
        return { ok: false, error: `QIDO-RS ${root}/studies: ${describe(e)}` };
      }
      return { ok: true, value: studies };
    },
    async retrieveStudy(uid) {
      const url = `${root}/studies/${uid}`;
      const refused: string[] = [];
      /** The answer's body while it may be left unread (an error answer, a malformed or failed part). */
      let unread: { cancel(): Promise<unknown> } | undefined;
      try {
        const res = await fetch(url, {
          headers: { ...source.headers, accept: 'multipart/related; type="application/dicom"' },
          signal: timeout(),
          dispatcher,
        });
        if (res.body) unread = res.body;
        if (!res.ok || !res.body)
          return { ok: false, error: `WADO-RS ${url} answered ${res.status}: ${(await res.text()).slice(0, 200)}` };
        const type = mediaParams(res.headers.get('content-type') ?? '');
        if (type.media !== 'multipart/related' || !type.boundary)
          return {
            ok: false,
            error: `WADO-RS ${url} answered ${type.media || 'no media type'}, not multipart/related with a boundary`,
          };
        // One iterator over the body, kept here so it can be cancelled whatever the parts do.
        const reader = res.body[Symbol.asyncIterator]();
        unread = { cancel: async () => reader.return?.() };
        for await (const part of readMultipartRelated({ [Symbol.asyncIterator]: () => reader }, type.boundary)) {
          const r = await opts.store.receive(part.body, { source: opts.sourceLabel, expectStudy: uid });
          if (!r.ok) refused.push(`part ${part.index}: ${r.error.message}`);
        }
        unread = undefined; // read to its end
      } catch (e) {
        return { ok: false, error: `WADO-RS ${url}: ${e instanceof MultipartError ? e.message : describe(e)}` };
      } finally {
        // A body left unread is cancelled, so no connection is left half-read.
        await unread?.cancel().catch(() => undefined);
      }
      return refused.length
        ? { ok: false, error: `the site refused ${refused.length} instance(s): ${refused.slice(0, 3).join('; ')}` }
        : { ok: true, value: undefined };
    },
  };
}

/** A DIMSE or DICOM JSON value as text ('' when absent or not a plain value). */
function text(v: unknown): string {
  return typeof v === 'string' || typeof v === 'number' ? String(v).trim() : '';
}

function countOf(s: string): number | null {
  return s === '' || !Number.isFinite(Number(s)) ? null : Number(s);
}
