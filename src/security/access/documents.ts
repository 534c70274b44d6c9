// Policies and masking rules as versioned documents in the database. Every change is a new
// version (nothing is overwritten); the newest version of each is in force. Each API node
// keeps them in memory and reloads when it changes them or when its copy is a few seconds old.
import { reasonOf, type Logger } from '../../common/index.ts';
import type { Db } from '../../db/index.ts';
import { DEFAULT_MASKING_RULES, DEFAULT_POLICIES } from './defaults.ts';
import { accessPolicySchema, describeIssues, maskingRulesSchema, type AccessPolicy, type MaskingRules } from './policy.ts';

export type DocumentKind = 'policy' | 'masking';
export const MASKING_NAME = 'default';

export interface DocumentVersion {
  kind: DocumentKind;
  name: string;
  version: number;
  author: string;
  createdAt: string;
  body: AccessPolicy | MaskingRules;
}

export type DocumentError = { kind: 'invalid'; issues: string[] } | { kind: 'not-found'; message: string };

interface Loaded {
  policies: Map<string, AccessPolicy>;
  versions: Map<string, number>;
  masking: MaskingRules;
  maskingVersion: number;
  at: number;
}

export class AccessDocuments {
  readonly #db: Db;
  readonly #maxAgeMs: number;
  readonly #log: Logger;
  #loaded: Loaded | undefined;
  #reloading: Promise<void> | undefined;

  private constructor(db: Db, maxAgeMs: number, log: Logger) {
    this.#db = db;
    this.#maxAgeMs = maxAgeMs;
    this.#log = log;
  }

  /** Seeds version 1 of every default document that does not exist yet, then loads. */
  static async open(opts: { db: Db; log: Logger; maxAgeMs?: number }): Promise<AccessDocuments> {
    const d = new AccessDocuments(opts.db, opts.maxAgeMs ?? 3000, opts.log);
    const seed = [
      ...DEFAULT_POLICIES.map((p) => ['policy', p.name, p] as const),
      ['masking', MASKING_NAME, DEFAULT_MASKING_RULES] as const,
    ];
    for (const [kind, name, body] of seed) {
      await opts.db.query(
        `INSERT INTO access_document (kind, name, version, body, author) SELECT $1, $2, 1, $3::jsonb, 'medmesh-defaults'
         WHERE NOT EXISTS (SELECT 1 FROM access_document WHERE kind = $1 AND name = $2)`,
        [kind, name, JSON.stringify(body)],
      );
    }
    await d.reload();
    return d;
  }

  /** The policies in force, by role. Triggers a background reload when the copy is stale. */
  policies(): ReadonlyMap<string, AccessPolicy> {
    return this.#current().policies;
  }

  masking(): MaskingRules {
    return this.#current().masking;
  }

  versionOf(kind: DocumentKind, name: string): number | undefined {
    const l = this.#current();
    return kind === 'masking' ? l.maskingVersion : l.versions.get(name);
  }

  #current(): Loaded {
    const l = this.#loaded!;
    if (Date.now() - l.at > this.#maxAgeMs && !this.#reloading) {
      // In the background, outside whatever transaction the caller is in; a failed reload keeps
      // the copy in force (decisions go on) and is logged, and the next call tries again.
      this.#reloading = this.#db
        .background(() => this.reload())
        .catch((e: unknown) =>
          this.#log.warn({ err: e }, `access documents not reloaded, the copy in force stays: ${reasonOf(e)}`),
        )
        .finally(() => {
          this.#reloading = undefined;
        });
    }
    return l;
  }

  async reload(): Promise<void> {
    const { rows } = await this.#db.query<{ kind: DocumentKind; name: string; version: number; body: unknown }>(
      `SELECT DISTINCT ON (kind, name) kind, name, version, body FROM access_document ORDER BY kind, name, version DESC`,
    );
    const policies = new Map<string, AccessPolicy>();
    const versions = new Map<string, number>();
    let masking = DEFAULT_MASKING_RULES;
    let maskingVersion = 0;
    for (const r of rows) {
      if (r.kind === 'masking' && r.name === MASKING_NAME) {
        masking = maskingRulesSchema.parse(r.body);
        maskingVersion = r.version;
      } else if (r.kind === 'policy') {
        const p = accessPolicySchema.parse(r.body);
        policies.set(p.role, p);
        versions.set(p.name, r.version);
      }
    }
    this.#loaded = { policies, versions, masking, maskingVersion, at: Date.now() };
  }

  async list(kind: DocumentKind): Promise<DocumentVersion[]> {
    const { rows } = await this.#db.query<Row>(
      `SELECT DISTINCT ON (name) kind, name, version, author, created_at, body FROM access_document
        WHERE kind = $1 ORDER BY name, version DESC`,
      [kind],
    );
    return rows.map(toVersion);
  }

  async history(kind: DocumentKind, name: string): Promise<DocumentVersion[]> {
    const { rows } = await this.#db.query<Row>(
      `SELECT kind, name, version, author, created_at, body FROM access_document
        WHERE kind = $1 AND name = $2 ORDER BY version DESC`,
      [kind, name],
    );
    return rows.map(toVersion);
  }

  /** Validates and stores a new version; the old ones stay for the record. */
  async put(
    kind: DocumentKind,
    name: string,
    body: unknown,
    author: string,
  ): Promise<{ ok: true; value: DocumentVersion } | { ok: false; error: DocumentError }> {
    const parsed = kind === 'policy' ? accessPolicySchema.safeParse(body) : maskingRulesSchema.safeParse(body);
    if (!parsed.success) return { ok: false, error: { kind: 'invalid', issues: describeIssues(parsed.error) } };
    if (kind === 'policy' && (parsed.data as AccessPolicy).name !== name)
      return { ok: false, error: { kind: 'invalid', issues: [`name: must equal the policy name in the URL (${name})`] } };
    if (kind === 'masking' && name !== MASKING_NAME)
      return { ok: false, error: { kind: 'not-found', message: `there is one masking rule set, named ${MASKING_NAME}` } };
    const { rows } = await this.#db.query<Row>(
      `INSERT INTO access_document (kind, name, version, body, author)
       SELECT $1, $2, coalesce(max(version), 0) + 1, $3::jsonb, $4 FROM access_document WHERE kind = $1 AND name = $2
       RETURNING kind, name, version, author, created_at, body`,
      [kind, name, JSON.stringify(parsed.data), author],
    );
    await this.reload();
    return { ok: true, value: toVersion(rows[0]!) };
  }
}

interface Row {
  kind: DocumentKind;
  name: string;
  version: number;
  author: string;
  created_at: Date;
  body: AccessPolicy | MaskingRules;
}

function toVersion(r: Row): DocumentVersion {
  return {
    kind: r.kind,
    name: r.name,
    version: r.version,
    author: r.author,
    createdAt: new Date(r.created_at).toISOString(),
    body: r.body,
  };
}
