// The record store: FHIR create/read/vread/update/delete/history/search over PostgreSQL.
// Writes run in a transaction; within a Bundle transaction the caller passes its own.
import { randomUUID } from 'node:crypto';
import type { Bundle, BundleEntry, Resource } from '@medplum/fhirtypes';
import { hlcToHex, unpackHlc } from '../clock/index.ts';
import type { Queryable } from '../db/index.ts';
import { patientInScope, rowScopeSql, statementName, type AccessFilter } from './access-filter.ts';
import type { RecordsContext } from './context.ts';
import { fail, FencedError, ok, RollbackWith, type RecordError, type Result } from './errors.ts';
import { checkBody, checkResidency, FHIR_ID, prepareWrite, type PreparedWrite } from './prepare-write.ts';
import { isSupportedType } from './resource-types.ts';
import { EMPTY_INDEX, extractIndex } from './search-index.ts';
import { parseSearch, type SearchRequest } from './search-query.ts';
import { buildSearchSql } from './search-sql.ts';
import { CreateBatcher } from './create-batcher.ts';
import { HomeLookup } from './home-lookup.ts';
import { writeVersions } from './write-version.ts';
import { lockResources } from './apply-versions.ts';

export interface WriteOutcome {
  resource: Resource;
  /** created: new resource; updated: new version; existing: conditional create matched. */
  status: 'created' | 'updated' | 'existing';
}

export interface CurrentRow {
  version_id: string;
  hlc: bigint;
  origin_site: string;
  deleted: boolean;
  shard: string | null;
  patient_id: string | null;
  data_class: string;
}

export interface HistoryOptions {
  count?: number;
  offset?: number;
  since?: Date;
  baseUrl: string;
  access?: AccessFilter;
}

export class RecordStore {
  readonly #ctx: RecordsContext;
  readonly #batcher: CreateBatcher;
  readonly #homes: HomeLookup;

  constructor(ctx: RecordsContext) {
    this.#ctx = ctx;
    this.#batcher = new CreateBatcher(ctx.db, { fenced: ctx.leases !== undefined });
    this.#homes = new HomeLookup(ctx.db);
  }

  /** Runs `fn` in one transaction; a RollbackWith thrown inside becomes the error result. */
  async inTransaction<T>(fn: (tx: Queryable) => Promise<Result<T>>): Promise<Result<T>> {
    try {
      return await this.#ctx.db.transaction(async (tx) => {
        const r = await fn(tx);
        if (!r.ok) throw new RollbackWith(r.error);
        return r;
      });
    } catch (e) {
      if (e instanceof RollbackWith) return { ok: false, error: e.error };
      throw e;
    }
  }

  create(type: string, body: unknown, opts: { ifNoneExist?: string; access?: AccessFilter } = {}): Promise<Result<WriteOutcome>> {
    // A plain create is one statement (atomic by itself), grouped with concurrent creates.
    if (opts.ifNoneExist === undefined)
      return this.createIn(this.#ctx.db, type, body, {
        id: undefined,
        batch: true,
        ...(opts.access ? { access: opts.access } : {}),
      }).catch((e: unknown) => {
        // Outside a transaction a refusal thrown by #write (a fenced shard) is still an answer.
        if (e instanceof RollbackWith) return { ok: false, error: e.error };
        throw e;
      });
    return this.inTransaction((tx) => this.createIn(tx, type, body, { ...opts, id: undefined }));
  }

  /** Create inside the caller's transaction. `id` pre-assigns the id (Bundle urn:uuid resolution). */
  async createIn(
    tx: Queryable,
    type: string,
    body: unknown,
    opts: { ifNoneExist?: string; id: string | undefined; batch?: boolean; access?: AccessFilter },
  ): Promise<Result<WriteOutcome>> {
    const checked = checkBody(body, type);
    if (!checked.ok) return checked;
    if (!isSupportedType(type)) return unknownType(type);
    if (opts.ifNoneExist !== undefined) {
      const match = await this.conditionalMatch(tx, type, opts.ifNoneExist, opts.access);
      if (!match.ok) return match;
      if (match.value) return ok({ resource: match.value, status: 'existing' });
    }
    const id = opts.id ?? randomUUID();
    const admitted = opts.access?.admitWrite
      ? opts.access.admitWrite({ ...checked.value, id }, undefined)
      : ok({ ...checked.value, id });
    if (!admitted.ok) return admitted;
    // A plain create runs in no transaction: its patient's home comes from the batched lookup.
    const prepared = await prepareWrite(
      this.#ctx,
      tx,
      admitted.value,
      'new',
      opts.batch ? (p) => this.#homes.find(p) : undefined,
      scopeCheck(tx, opts.access),
    );
    if (!prepared.ok) return prepared;
    const resource = await this.#write(tx, prepared.value, {
      parent: undefined,
      replacesCurrent: false,
      batch: opts.batch ?? false,
    });
    return ok({ resource, status: 'created' });
  }

  /** Resolves If-None-Exist: undefined when nothing matches, the match when one does. */
  async conditionalMatch(
    tx: Queryable,
    type: string,
    criteria: string,
    access?: AccessFilter,
  ): Promise<Result<Resource | undefined>> {
    const query = criteria.replace(new RegExp(`^${type}\\?`), '').replace(/^\?/, '');
    const pairs = [...new URLSearchParams(query)];
    if (pairs.length === 0) return fail('bad-request', 'If-None-Exist has no search criteria', { code: 'invalid' });
    const parsed = parseSearch(type, pairs, this.#params(type));
    if (!parsed.ok) return parsed;
    // Serialize identical conditional creates so two racing requests cannot both create.
    await tx.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`${type}?${query}`]);
    const { text, params } = buildSearchSql(
      { ...parsed.value, count: 2, offset: 0, sort: [], ...(access ? { rows: access.rows } : {}) },
      'page',
    );
    const { rows } = await tx.query<{ content: Resource }>(text, params);
    if (rows.length > 1)
      return fail('precondition-failed', `If-None-Exist criteria ${query} match more than one ${type}`, { code: 'conflict' });
    return ok(rows[0]?.content);
  }

  update(
    type: string,
    id: string,
    body: unknown,
    opts: { ifMatch?: string; access?: AccessFilter } = {},
  ): Promise<Result<WriteOutcome>> {
    return this.inTransaction((tx) => this.updateIn(tx, type, id, body, opts));
  }

  async updateIn(
    tx: Queryable,
    type: string,
    id: string,
    body: unknown,
    opts: { ifMatch?: string; access?: AccessFilter },
  ): Promise<Result<WriteOutcome>> {
    if (!isSupportedType(type)) return unknownType(type);
    if (!FHIR_ID.test(id)) return badId(id);
    const checked = checkBody(body, type, id);
    if (!checked.ok) return checked;
    const { access } = opts;
    const current = await this.#lockCurrent(tx, type, id, { withContent: access?.admitWrite !== undefined, orCreate: true });
    if (access && current && !(await patientInScope(tx, access.rows, current.patient_id)))
      return fail('forbidden', access.denied, { code: 'forbidden' });
    if (opts.ifMatch !== undefined && current?.version_id !== opts.ifMatch) {
      return fail(
        'version-conflict',
        current ? `version ${opts.ifMatch} is not current (current is ${current.version_id})` : `${type}/${id} does not exist`,
        { code: 'conflict' },
      );
    }
    const admitted = access?.admitWrite ? access.admitWrite(checked.value, current?.content ?? undefined) : ok(checked.value);
    if (!admitted.ok) return admitted;
    const prepared = await prepareWrite(
      this.#ctx,
      tx,
      admitted.value,
      current ? { shard: current.shard, patientId: current.patient_id } : undefined,
      undefined,
      scopeCheck(tx, access),
    );
    if (!prepared.ok) return prepared;
    const resource = await this.#write(tx, prepared.value, {
      parent: current,
      replacesCurrent: current !== undefined,
    });
    return ok({ resource, status: current && !current.deleted ? 'updated' : 'created' });
  }

  delete(type: string, id: string, opts: { access?: AccessFilter } = {}): Promise<Result<{ deleted: boolean }>> {
    return this.inTransaction((tx) => this.deleteIn(tx, type, id, opts));
  }

  async deleteIn(
    tx: Queryable,
    type: string,
    id: string,
    opts: { access?: AccessFilter } = {},
  ): Promise<Result<{ deleted: boolean }>> {
    if (!isSupportedType(type)) return unknownType(type);
    if (!FHIR_ID.test(id)) return badId(id);
    const current = await this.#lockCurrent(tx, type, id);
    if (!current) return fail('not-found', `${type}/${id} does not exist`, { code: 'not-found' });
    if (opts.access && !(await patientInScope(tx, opts.access.rows, current.patient_id)))
      return fail('forbidden', opts.access.denied, { code: 'forbidden' });
    if (current.deleted) return ok({ deleted: false });
    const dataClass = this.#ctx.region.classOf(type);
    const residency = checkResidency(this.#ctx, dataClass, current.shard);
    if (!residency.ok) return residency;
    const tombstone: PreparedWrite = {
      resource: { resourceType: type, id } as Resource,
      dataClass,
      shard: current.shard,
      patientId: current.patient_id,
    };
    await this.#write(tx, tombstone, { parent: current, replacesCurrent: true, deleted: true });
    return ok({ deleted: true });
  }

  async read(type: string, id: string, opts: { q?: Queryable; access?: AccessFilter } = {}): Promise<Result<Resource>> {
    if (!isSupportedType(type)) return unknownType(type);
    if (!FHIR_ID.test(id)) return badId(id);
    const params: unknown[] = [type, id];
    const scope =
      opts.access && opts.access.rows.kind !== 'all' ? rowScopeSql(opts.access.rows, 'c', (v) => `$${params.push(v)}`) : 'true';
    const sql = `SELECT deleted, content, version_id, ${scope} AS visible
                   FROM resource_current c WHERE resource_type = $1 AND id = $2`;
    const { rows } = await (opts.q ?? this.#ctx.db).query<{
      deleted: boolean;
      content: Resource | null;
      version_id: string;
      visible: boolean;
    }>(sql, params, { name: statementName(sql) });
    const row = rows[0];
    if (!row) return fail('not-found', `${type}/${id} not found`, { code: 'not-found' });
    if (!row.visible) return fail('forbidden', opts.access?.denied ?? 'not visible', { code: 'forbidden' });
    if (row.deleted || !row.content)
      return fail('gone', `${type}/${id} was deleted (version ${row.version_id})`, { code: 'deleted' });
    return ok(row.content);
  }

  async vread(
    type: string,
    id: string,
    versionId: string,
    opts: { q?: Queryable; access?: AccessFilter } = {},
  ): Promise<Result<Resource>> {
    if (!isSupportedType(type)) return unknownType(type);
    if (!FHIR_ID.test(id)) return badId(id);
    if (!FHIR_ID.test(versionId))
      return fail('bad-request', `${JSON.stringify(versionId.slice(0, 80))} is not a valid version id`, { code: 'value' });
    const params: unknown[] = [type, id, versionId];
    const scope =
      opts.access && opts.access.rows.kind !== 'all' ? rowScopeSql(opts.access.rows, 'c', (v) => `$${params.push(v)}`) : 'true';
    const sql = `SELECT h.deleted, h.content, ${scope} AS visible FROM resource_history h
       LEFT JOIN resource_current c ON c.resource_type = h.resource_type AND c.id = h.id
       WHERE h.resource_type = $1 AND h.id = $2 AND h.version_id = $3`;
    const { rows } = await (opts.q ?? this.#ctx.db).query<{ deleted: boolean; content: Resource | null; visible: boolean }>(
      sql,
      params,
      { name: statementName(sql) },
    );
    const row = rows[0];
    if (!row) return fail('not-found', `${type}/${id} has no version ${versionId}`, { code: 'not-found' });
    if (!row.visible) return fail('forbidden', opts.access?.denied ?? 'not visible', { code: 'forbidden' });
    if (row.deleted || !row.content)
      return fail('gone', `version ${versionId} of ${type}/${id} is a deletion`, { code: 'deleted' });
    return ok(row.content);
  }

  async history(type: string, id: string | undefined, opts: HistoryOptions): Promise<Result<Bundle>> {
    if (!isSupportedType(type)) return unknownType(type);
    if (id !== undefined && !FHIR_ID.test(id)) return badId(id);
    const rowScope = opts.access && opts.access.rows.kind !== 'all' ? opts.access.rows : undefined;
    if (id !== undefined) {
      const p: unknown[] = [type, id];
      const scope = rowScope ? rowScopeSql(rowScope, 'c', (v) => `$${p.push(v)}`) : 'true';
      const exists = await this.#ctx.db.query<{ visible: boolean }>(
        `SELECT ${scope} AS visible FROM resource_current c WHERE resource_type = $1 AND id = $2`,
        p,
      );
      if (exists.rows.length === 0) return fail('not-found', `${type}/${id} not found`, { code: 'not-found' });
      if (!exists.rows[0]!.visible) return fail('forbidden', opts.access?.denied ?? 'not visible', { code: 'forbidden' });
    }
    const count = opts.count ?? 20;
    const offset = opts.offset ?? 0;
    const params: unknown[] = [type];
    let where = 'h.resource_type = $1';
    if (id !== undefined) where += ` AND h.id = $${params.push(id)}`;
    if (opts.since) where += ` AND h.last_updated >= $${params.push(opts.since.toISOString())}::timestamptz`;
    // Type history is no side door: versions of records outside the caller's scope are not listed.
    if (rowScope && id === undefined)
      where +=
        ' AND EXISTS (SELECT 1 FROM resource_current c WHERE c.resource_type = h.resource_type AND c.id = h.id' +
        ` AND ${rowScopeSql(rowScope, 'c', (v) => `$${params.push(v)}`)})`;
    const { rows } = await this.#ctx.db.query<{
      id: string;
      version_id: string;
      deleted: boolean;
      parent_hlc: bigint | null;
      last_updated: Date;
      content: Resource | null;
    }>(
      `SELECT h.id, h.version_id, h.deleted, h.parent_hlc, h.last_updated, h.content FROM resource_history h WHERE ${where}
       ORDER BY h.hlc DESC, h.origin_site DESC LIMIT $${params.push(count + 1)} OFFSET $${params.push(offset)}`,
      params,
    );
    const page = rows.slice(0, count);
    const self = `${opts.baseUrl}/${type}${id ? `/${id}` : ''}/_history`;
    const q = (o: number) =>
      `${self}?_count=${count}&_offset=${o}${opts.since ? `&_since=${encodeURIComponent(opts.since.toISOString())}` : ''}`;
    const link = [{ relation: 'self', url: q(offset) }];
    if (rows.length > count) link.push({ relation: 'next', url: q(offset + count) });
    if (offset > 0) link.push({ relation: 'previous', url: q(Math.max(0, offset - count)) });
    const entry: BundleEntry[] = page.map((r) => ({
      fullUrl: `${opts.baseUrl}/${type}/${r.id}`,
      ...(r.content && !r.deleted ? { resource: r.content } : {}),
      request: {
        method: r.deleted ? 'DELETE' : r.parent_hlc === null ? 'POST' : 'PUT',
        url: r.parent_hlc === null && !r.deleted ? type : `${type}/${r.id}`,
      },
      response: {
        status: r.deleted ? '204' : r.parent_hlc === null ? '201' : '200',
        etag: `W/"${r.version_id}"`,
        lastModified: new Date(r.last_updated).toISOString(),
      },
    }));
    return ok({
      resourceType: 'Bundle',
      type: 'history',
      link,
      entry,
      ...(offset === 0 && rows.length <= count ? { total: page.length } : {}),
    });
  }

  parseSearch(type: string, query: ReadonlyArray<readonly [string, string]>): Result<SearchRequest> {
    if (!isSupportedType(type)) return unknownType(type);
    return parseSearch(type, query, this.#params(type));
  }

  async search(
    type: string,
    query: ReadonlyArray<readonly [string, string]>,
    opts: { baseUrl: string; q?: Queryable; access?: AccessFilter },
  ): Promise<Result<Bundle>> {
    const parsed = this.parseSearch(type, query);
    if (!parsed.ok) return parsed;
    const req: SearchRequest = opts.access
      ? {
          ...parsed.value,
          rows: opts.access.rows,
          ...(opts.access.orderSalt !== undefined ? { orderSalt: opts.access.orderSalt } : {}),
        }
      : parsed.value;
    const q = opts.q ?? this.#ctx.db;
    const countOnly = req.summaryCount || req.count === 0;
    let total: number | undefined;
    if (countOnly || req.total === 'accurate') {
      const c = buildSearchSql(req, 'count');
      total = (await q.query<{ n: number }>(c.text, c.params)).rows[0]?.n ?? 0;
    }
    if (countOnly) return ok({ resourceType: 'Bundle', type: 'searchset', total });
    const s = buildSearchSql(req, 'page');
    const { rows } = await q.query<{ id: string; content: Resource }>(s.text, s.params);
    const page = rows.slice(0, req.count);
    if (total === undefined && req.offset === 0 && rows.length <= req.count) total = page.length;
    const base = query.filter(([k]) => k !== '_offset' && k !== '_count');
    const pageUrl = (offset: number) => {
      const usp = new URLSearchParams([
        ...base.map(([k, v]) => [k, v] as [string, string]),
        ['_count', String(req.count)],
        ['_offset', String(offset)],
      ]);
      return `${opts.baseUrl}/${type}?${usp.toString()}`;
    };
    const link = [{ relation: 'self', url: pageUrl(req.offset) }];
    if (rows.length > req.count) link.push({ relation: 'next', url: pageUrl(req.offset + req.count) });
    if (req.offset > 0) link.push({ relation: 'previous', url: pageUrl(Math.max(0, req.offset - req.count)) });
    return ok({
      resourceType: 'Bundle',
      type: 'searchset',
      ...(total !== undefined ? { total } : {}),
      link,
      entry: page.map((r) => ({
        fullUrl: `${opts.baseUrl}/${type}/${r.id}`,
        resource: r.content,
        search: { mode: 'match' as const },
      })),
    });
  }

  /** Blind indexes of a patient's regional identifiers (resident ID, insurance card) for the EMPI directory. */
  #blindIndexes(resource: Resource): string[] {
    if (!this.#ctx.blindIndex || resource.resourceType !== 'Patient') return [];
    const systems = new Set(Object.values(this.#ctx.region.config.identifierSystems));
    const ids = (resource.identifier ?? []).flatMap((i) =>
      i.system && i.value && systems.has(i.system) ? [{ system: i.system, value: i.value }] : [],
    );
    return ids.length ? this.#ctx.blindIndex(ids) : [];
  }

  #params(type: string) {
    return this.#ctx.searchParams.get(type) ?? new Map();
  }

  /**
   * The current row, locked for this transaction. `orCreate`: when there is none, the write
   * will create the resource under an id its client chose, so it takes the resource's apply
   * lock first (apply-versions.ts) and looks again: a version of that id being applied from
   * another site meanwhile is then seen, and the two are ordered, never written blind.
   */
  async #lockCurrent(
    tx: Queryable,
    type: string,
    id: string,
    opts: { withContent?: boolean; orCreate?: boolean } = {},
  ): Promise<(CurrentRow & { content?: Resource | null }) | undefined> {
    const select = () =>
      tx.query<CurrentRow & { content?: Resource | null }>(
        `SELECT version_id, hlc, origin_site, deleted, shard, patient_id, data_class${opts.withContent ? ', content' : ''}
           FROM resource_current WHERE resource_type = $1 AND id = $2 FOR UPDATE`,
        [type, id],
      );
    const { rows } = await select();
    if (rows[0] || !opts.orCreate) return rows[0];
    await lockResources(tx, [{ resourceType: type, id }]);
    return (await select()).rows[0];
  }

  async #write(
    tx: Queryable,
    w: PreparedWrite,
    opts: {
      /** The version written over (absent for a new resource). */
      parent: Pick<CurrentRow, 'hlc' | 'origin_site'> | undefined;
      replacesCurrent: boolean;
      deleted?: boolean;
      batch?: boolean;
    },
  ): Promise<Resource> {
    const { clock, siteId } = this.#ctx;
    let hlc: bigint;
    if (!opts.parent) hlc = await clock.now();
    else {
      // The new version must order after its parent, whichever site wrote the parent.
      const r = await clock.receive(opts.parent.hlc);
      if (!r.ok)
        throw new RollbackWith({
          kind: 'conflict',
          issues: [
            { message: `the current version carries a clock ${r.error.message}; refusing to write after it`, code: 'conflict' },
          ],
        });
      hlc = r.hlc;
    }
    const versionId = `${hlcToHex(hlc)}-${siteId}`;
    const lastUpdated = new Date(unpackHlc(hlc).physicalMs).toISOString();
    const deleted = opts.deleted ?? false;
    const resource: Resource = { ...w.resource, meta: { ...w.resource.meta, versionId, lastUpdated } };
    const index = deleted ? EMPTY_INDEX : extractIndex(resource, this.#params(resource.resourceType));
    const row = {
      resourceType: resource.resourceType,
      id: resource.id!,
      versionId,
      hlc,
      parentHlc: opts.parent?.hlc ?? null,
      parentOrigin: opts.parent?.origin_site ?? null,
      originSite: siteId,
      // Under write leases the statement takes the epoch from the shard's lease (write-version.ts).
      epoch: 0n,
      shard: w.shard,
      dataClass: w.dataClass,
      patientId: w.patientId,
      deleted,
      lastUpdated,
      content: deleted ? null : resource,
    };
    const empi =
      w.placement && w.patientId ? { patientId: w.patientId, ...w.placement, blind: this.#blindIndexes(resource) } : undefined;
    const pending = { row, index, ...(empi ? { empi } : {}) };
    const fenced = this.#ctx.leases !== undefined;
    try {
      if (opts.batch && !opts.replacesCurrent) await this.#batcher.write(pending);
      else await writeVersions(tx, [pending], { replace: opts.replacesCurrent, fenced });
    } catch (e) {
      if (e instanceof FencedError) throw new RollbackWith(fencedRefusal(this.#ctx, e));
      throw e;
    }
    return resource;
  }
}

/** The row check prepareWrite runs on the write's patient before it says anything about that patient's home. */
function scopeCheck(
  tx: Queryable,
  access: AccessFilter | undefined,
): ((patientId: string | null) => Promise<Result<void>>) | undefined {
  if (!access) return undefined;
  return async (patientId) =>
    (await patientInScope(tx, access.rows, patientId)) ? ok(undefined) : fail('forbidden', access.denied, { code: 'forbidden' });
}

/** The answer to a write its shard's lease refused: where to write instead, or try again shortly. */
function fencedRefusal(ctx: RecordsContext, e: FencedError): RecordError {
  if (e.holder && e.holder !== ctx.siteId) {
    const url = ctx.siteUrl?.(e.holder) ?? ctx.region.site(e.holder)?.url;
    return {
      kind: 'misdirected',
      issues: [
        {
          message:
            `shard ${e.shard} is written at site ${e.holder}${url ? ` (${url})` : ''} under epoch ${e.epoch ?? '?'}, ` +
            `not at site ${ctx.siteId}; retry there`,
          code: 'business-rule',
        },
      ],
      ...(url ? { activeSite: { id: e.holder, url } } : {}),
    };
  }
  const why = e.expired ? 'its write lease at this site has run out' : 'this site holds no write lease of it';
  return {
    kind: 'fenced',
    issues: [
      { message: `shard ${e.shard}: ${why} (the witness decides who writes it); retry in a few seconds`, code: 'processing' },
    ],
  };
}

/** An id no resource can have (FHIR ids: 1-64 of A-Z a-z 0-9 - .). */
function badId(id: string): { ok: false; error: RecordError } {
  return fail('bad-request', `${JSON.stringify(id.slice(0, 80))} is not a valid FHIR id`, { code: 'value' });
}

function unknownType(type: string): { ok: false; error: RecordError } {
  return fail('not-found', `resource type ${type} is not served here`, { code: 'not-supported' });
}
