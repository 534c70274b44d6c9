// FHIR batch and transaction Bundles. A transaction is one database transaction: every
// entry commits or none does, and urn:uuid references are rewritten to the ids assigned.
import { randomUUID } from 'node:crypto';
import type { Bundle, BundleEntry, BundleEntryResponse, Resource } from '@medplum/fhirtypes';
import type { Queryable } from '../db/index.ts';
import { fail, ok, type RecordError, type Result } from './errors.ts';
import type { RecordStore, WriteOutcome } from './record-store.ts';

export const MAX_BUNDLE_ENTRIES = 1000;

type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';
interface ParsedEntry {
  index: number;
  method: Method;
  type: string;
  id?: string;
  versionId?: string;
  query?: string;
  resource?: Resource;
  ifNoneExist?: string;
  ifMatch?: string;
  fullUrl?: string;
  /** Batch only: the entry could not be parsed; it is answered with this error. */
  invalid?: RecordError;
}

/** What Bundle processing needs of a store: the record store itself, or its access-controlled view. */
export type BundleStore = Pick<
  RecordStore,
  'inTransaction' | 'conditionalMatch' | 'createIn' | 'updateIn' | 'deleteIn' | 'read' | 'vread' | 'search'
>;

/** Maps a RecordError to the HTTP status the entry reports (mirrors the HTTP layer). */
export type StatusOf = (e: RecordError) => number;

export async function processBundle(
  store: BundleStore,
  body: unknown,
  opts: { baseUrl: string; statusOf: StatusOf },
): Promise<Result<Bundle>> {
  if (typeof body !== 'object' || body === null || (body as Resource).resourceType !== 'Bundle')
    return fail('bad-request', 'POST to the base URL takes a Bundle', { code: 'structure' });
  const bundle = body as Bundle;
  if (bundle.type !== 'batch' && bundle.type !== 'transaction')
    return fail('bad-request', `Bundle.type must be batch or transaction, not ${String(bundle.type)}`, {
      code: 'value',
      expression: 'Bundle.type',
    });
  if (
    bundle.entry !== undefined &&
    (!Array.isArray(bundle.entry) || bundle.entry.some((e) => typeof e !== 'object' || e === null || Array.isArray(e)))
  ) {
    return fail('bad-request', 'Bundle.entry must be an array of objects', { code: 'structure', expression: 'Bundle.entry' });
  }
  const entries = bundle.entry ?? [];
  if (entries.length > MAX_BUNDLE_ENTRIES)
    return fail('bad-request', `a Bundle may have at most ${MAX_BUNDLE_ENTRIES} entries`, {
      code: 'too-costly',
      expression: 'Bundle.entry',
    });
  const parsed: ParsedEntry[] = [];
  for (const [i, e] of entries.entries()) {
    const p = parseEntry(e, i);
    if (!p.ok) {
      if (bundle.type === 'transaction') return p;
      parsed.push({ index: i, method: 'GET', type: '', invalid: p.error });
    } else parsed.push(p.value);
  }
  return bundle.type === 'transaction' ? transaction(store, parsed, opts) : batch(store, parsed, opts);
}

function parseEntry(e: BundleEntry, i: number): Result<ParsedEntry> {
  const where = `Bundle.entry[${i}]`;
  const method: unknown = e.request?.method;
  const url: unknown = e.request?.url;
  if (typeof method !== 'string' || typeof url !== 'string' || !method || !url)
    return fail('bad-request', `${where}.request needs method and url`, { code: 'required', expression: `${where}.request` });
  if (method !== 'GET' && method !== 'POST' && method !== 'PUT' && method !== 'DELETE')
    return fail('not-supported', `${where}: method ${method} is not supported in Bundles`, {
      code: 'not-supported',
      expression: `${where}.request.method`,
    });
  const [path = '', query] = url.replace(/^\/+/, '').split('?', 2) as [string, string | undefined];
  const parts = path.split('/');
  const type = parts[0] ?? '';
  const entry: ParsedEntry = { index: i, method, type, ...(e.fullUrl ? { fullUrl: e.fullUrl } : {}) };
  if (query !== undefined) entry.query = query;
  if (parts.length >= 2) entry.id = parts[1];
  if (parts.length === 4 && parts[2] === '_history') entry.versionId = parts[3];
  else if (parts.length > 2)
    return fail('bad-request', `${where}: unsupported url ${url}`, { code: 'invalid', expression: `${where}.request.url` });
  if ((method === 'PUT' || method === 'DELETE') && (entry.id === undefined || query !== undefined)) {
    return fail('not-supported', `${where}: ${method} needs Type/id (conditional ${method.toLowerCase()} is not supported)`, {
      code: 'not-supported',
      expression: `${where}.request.url`,
    });
  }
  if (method === 'POST' && (parts.length !== 1 || query !== undefined))
    return fail('bad-request', `${where}: POST url must be the resource type`, {
      code: 'invalid',
      expression: `${where}.request.url`,
    });
  if (method === 'POST' || method === 'PUT') {
    if (!e.resource)
      return fail('bad-request', `${where}: ${method} needs a resource`, { code: 'required', expression: `${where}.resource` });
    entry.resource = e.resource;
  }
  if (typeof e.request?.ifNoneExist === 'string') entry.ifNoneExist = e.request.ifNoneExist;
  if (typeof e.request?.ifMatch === 'string') entry.ifMatch = stripEtag(e.request.ifMatch);
  return ok(entry);
}

/** FHIR processing order for transactions: DELETE, POST, PUT, GET; patients first so their records can find them. */
function order(e: ParsedEntry): number {
  const rank = { DELETE: 0, POST: 1, PUT: 2, GET: 3 }[e.method];
  return rank * 2 + (e.type === 'Patient' ? 0 : 1);
}

async function transaction(
  store: BundleStore,
  entries: ParsedEntry[],
  opts: { baseUrl: string; statusOf: StatusOf },
): Promise<Result<Bundle>> {
  const responses = new Array<BundleEntry>(entries.length);
  const result = await store.inTransaction(async (tx) => {
    // 1. Resolve ids for creates (conditional creates may map to an existing resource).
    const idFor = new Map<string, string>();
    const assigned = new Map<number, { id: string; existing?: Resource }>();
    for (const e of entries) {
      if (e.method !== 'POST') continue;
      let id: string = randomUUID();
      let existing: Resource | undefined;
      if (e.ifNoneExist) {
        const m = await store.conditionalMatch(tx, e.type, e.ifNoneExist);
        if (!m.ok) return entryError(m.error, e.index);
        if (m.value) {
          existing = m.value;
          id = m.value.id!;
        }
      }
      assigned.set(e.index, { id, ...(existing ? { existing } : {}) });
      if (e.fullUrl) idFor.set(e.fullUrl, `${e.type}/${id}`);
    }
    for (const e of entries)
      if (e.method === 'PUT' && e.fullUrl?.startsWith('urn:uuid:')) idFor.set(e.fullUrl, `${e.type}/${e.id!}`);
    // 2. Execute in FHIR order with references rewritten.
    for (const e of [...entries].sort((a, b) => order(a) - order(b) || a.index - b.index)) {
      const resource = e.resource ? rewriteReferences(e.resource, idFor) : undefined;
      const r = await execute(store, tx, e, resource, assigned.get(e.index), opts);
      if (!r.ok) return entryError(r.error, e.index);
      responses[e.index] = r.value;
    }
    return ok(undefined);
  });
  if (!result.ok) return result;
  return ok({ resourceType: 'Bundle', type: 'transaction-response', entry: responses });
}

async function batch(
  store: BundleStore,
  entries: ParsedEntry[],
  opts: { baseUrl: string; statusOf: StatusOf },
): Promise<Result<Bundle>> {
  const out: BundleEntry[] = [];
  for (const e of entries) {
    if (e.invalid) {
      out.push(errorEntry(e.invalid, opts.statusOf));
      continue;
    }
    // Each batch entry is its own transaction: one failing entry does not undo the others.
    const r = await store.inTransaction((tx) => execute(store, tx, e, e.resource, undefined, opts));
    out.push(r.ok ? r.value : errorEntry(r.error, opts.statusOf));
  }
  return ok({ resourceType: 'Bundle', type: 'batch-response', entry: out });
}

async function execute(
  store: BundleStore,
  tx: Queryable,
  e: ParsedEntry,
  resource: Resource | undefined,
  assigned: { id: string; existing?: Resource } | undefined,
  opts: { baseUrl: string },
): Promise<Result<BundleEntry>> {
  switch (e.method) {
    case 'POST': {
      if (assigned?.existing) return ok(writeResponse({ resource: assigned.existing, status: 'existing' }));
      const r = await store.createIn(tx, e.type, resource, {
        id: assigned?.id,
        ...(e.ifNoneExist && !assigned ? { ifNoneExist: e.ifNoneExist } : {}),
      });
      return r.ok ? ok(writeResponse(r.value)) : r;
    }
    case 'PUT': {
      const r = await store.updateIn(tx, e.type, e.id!, resource, e.ifMatch !== undefined ? { ifMatch: e.ifMatch } : {});
      return r.ok ? ok(writeResponse(r.value)) : r;
    }
    case 'DELETE': {
      const r = await store.deleteIn(tx, e.type, e.id!);
      return r.ok ? ok({ response: { status: '204' } }) : r;
    }
    case 'GET': {
      if (e.id !== undefined) {
        // Inside the entry's transaction, only its connection (tx) reaches the database.
        const r = e.versionId
          ? await store.vread(e.type, e.id, e.versionId, { q: tx })
          : await store.read(e.type, e.id, { q: tx });
        return r.ok ? ok({ resource: r.value, response: { status: '200', etag: `W/"${r.value.meta?.versionId ?? ''}"` } }) : r;
      }
      const r = await store.search(e.type, [...new URLSearchParams(e.query ?? '')], { baseUrl: opts.baseUrl, q: tx });
      return r.ok ? ok({ resource: r.value, response: { status: '200' } }) : r;
    }
  }
}

function writeResponse(w: WriteOutcome): BundleEntry {
  const { resource } = w;
  const response: BundleEntryResponse = {
    status: w.status === 'created' ? '201 Created' : '200 OK',
    location: `${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`,
    etag: `W/"${resource.meta?.versionId}"`,
    ...(resource.meta?.lastUpdated ? { lastModified: resource.meta.lastUpdated } : {}),
  };
  return { fullUrl: `${resource.resourceType}/${resource.id}`, resource, response };
}

function errorEntry(error: RecordError, statusOf: StatusOf): BundleEntry {
  return {
    response: {
      status: String(statusOf(error)),
      outcome: {
        resourceType: 'OperationOutcome',
        issue: error.issues.map((i) => ({
          severity: 'error',
          code: i.code ?? 'processing',
          diagnostics: i.message,
          ...(i.expression ? { expression: [i.expression] } : {}),
        })),
      },
    },
  };
}

function entryError(error: RecordError, index: number): { ok: false; error: RecordError } {
  return {
    ok: false,
    error: { ...error, issues: error.issues.map((i) => ({ ...i, message: `Bundle.entry[${index}]: ${i.message}` })) },
  };
}

/** Replaces every `reference` that names a Bundle-local fullUrl with the assigned Type/id. */
export function rewriteReferences<T>(value: T, idFor: ReadonlyMap<string, string>): T {
  if (idFor.size === 0) return value;
  if (Array.isArray(value)) return value.map((v: unknown) => rewriteReferences(v, idFor)) as T;
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value))
      out[k] = k === 'reference' && typeof v === 'string' && idFor.has(v) ? idFor.get(v) : rewriteReferences(v, idFor);
    return out as T;
  }
  return value;
}

export function stripEtag(etag: string): string {
  return etag.replace(/^W\//, '').replace(/^"|"$/g, '');
}
