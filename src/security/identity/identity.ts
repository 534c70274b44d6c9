// Users, service accounts and tokens for one site. Access tokens are short-lived SM2-signed
// JWT-shaped tokens; refresh tokens are random, stored hashed, rotated on use and revocable.
import { randomBytes, randomUUID } from 'node:crypto';
import type { Db } from '../../db/index.ts';
import { sm3, type Sm2PrivateKey, Sm2PublicKey } from '../crypto/index.ts';
import { hashPassword, passwordProblem, verifyPassword } from './password.ts';
import { signToken, verifyToken, peekHeader, TOKEN_LEEWAY_SECONDS, type TokenClaims } from './token.ts';
import { base32, matchTotp, newTotpSecret } from './totp.ts';

/** Roles that must pass a second factor at login. */
export const SECOND_FACTOR_ROLES = new Set(['administrator', 'operator']);

export type IdentityErrorKind =
  | 'bad-request'
  | 'invalid-credentials'
  | 'second-factor-required'
  | 'second-factor-invalid'
  | 'second-factor-replayed'
  | 'user-disabled'
  | 'token-invalid'
  | 'token-expired'
  | 'token-revoked'
  | 'unknown-service'
  | 'issuer-unavailable';

export interface IdentityError {
  kind: IdentityErrorKind;
  message: string;
}

export type Principal =
  | { kind: 'user'; userId: string; username: string; roles: string[]; attributes: Record<string, string>; tokenId: string }
  | { kind: 'service'; serviceId: string; serviceKind: 'site' | 'router' | 'edge' };

type R<T> = { ok: true; value: T } | { ok: false; error: IdentityError };
const fail = (kind: IdentityErrorKind, message: string): { ok: false; error: IdentityError } => ({
  ok: false,
  error: { kind, message },
});

export interface IdentityContext {
  db: Db;
  siteId: string;
  /** The token issuer key (the site's signing key); undefined while the KMS is sealed. */
  issuer: () => { key: Sm2PrivateKey; kid: string } | undefined;
  /** Encryption of second-factor secrets at rest (the KMS in a site). */
  secrets: { seal(b: Uint8Array): Promise<Buffer>; open(b: Uint8Array): Promise<Buffer> };
  now?: () => Date;
  accessTtlSeconds?: number;
  refreshTtlSeconds?: number;
}

export interface TokenPair {
  accessToken: string;
  refreshToken: string;
  expiresIn: number;
  tokenType: 'Bearer';
}

export class IdentityService {
  readonly #c: IdentityContext;
  #verified: { issuer: object | undefined; claims: Map<string, TokenClaims> } = { issuer: undefined, claims: new Map() };
  /** Verified service assertions (keyed by registered key and assertion) and their expiry (s). */
  readonly #services = new Map<string, { exp: number }>();
  #revoked: { jtis: Map<string, number>; syncedAt: number; watermark?: Date; syncing?: Promise<void> } = {
    jtis: new Map(),
    syncedAt: -Infinity,
  };

  constructor(ctx: IdentityContext) {
    this.#c = ctx;
  }

  #nowMs(): number {
    return (this.#c.now?.() ?? new Date()).getTime();
  }

  async createUser(u: {
    username: string;
    password: string;
    roles: string[];
    attributes?: Record<string, string>;
    displayName?: string;
  }): Promise<R<{ id: string; totpSecret?: string; otpauthUri?: string }>> {
    if (!/^[a-z][a-z0-9._-]{2,63}$/.test(u.username))
      return fail('bad-request', 'username must be 3-64 lower-case letters, digits, ".", "_" or "-", starting with a letter');
    const weak = passwordProblem(u.password);
    if (weak) return fail('bad-request', weak);
    if (u.roles.length === 0) return fail('bad-request', 'a user needs at least one role');
    const needsTotp = u.roles.some((r) => SECOND_FACTOR_ROLES.has(r));
    const secret = needsTotp ? newTotpSecret() : undefined;
    const id = randomUUID();
    const inserted = await this.#c.db.query(
      `INSERT INTO iam_user (id, username, display_name, roles, attributes, password_hash, totp_secret)
       VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)
       ON CONFLICT (username) DO NOTHING RETURNING id`,
      [
        id,
        u.username,
        u.displayName ?? null,
        u.roles,
        JSON.stringify(u.attributes ?? {}),
        await hashPassword(u.password),
        secret ? await this.#c.secrets.seal(secret) : null,
      ],
    );
    if (inserted.rows.length === 0) return fail('bad-request', `user ${u.username} already exists`);
    if (!secret) return { ok: true, value: { id } };
    const b32 = base32(secret);
    return {
      ok: true,
      value: {
        id,
        totpSecret: b32,
        otpauthUri: `otpauth://totp/medmesh:${u.username}?secret=${b32}&issuer=medmesh-${this.#c.siteId}`,
      },
    };
  }

  async login(req: { username: string; password: string; totp?: string }): Promise<R<TokenPair>> {
    const { rows } = await this.#c.db.query<{
      id: string;
      username: string;
      roles: string[];
      attributes: Record<string, string>;
      password_hash: string;
      totp_secret: Uint8Array | null;
      disabled: boolean;
    }>('SELECT id, username, roles, attributes, password_hash, totp_secret, disabled FROM iam_user WHERE username = $1', [
      req.username,
    ]);
    const user = rows[0];
    // Same answer for an unknown user and a wrong password, and the same work (no timing oracle).
    const passwordOk = await verifyPassword(req.password, user?.password_hash ?? DUMMY_HASH);
    if (!user || !passwordOk) return fail('invalid-credentials', 'unknown user or wrong password');
    if (user.disabled) return fail('user-disabled', `user ${user.username} is disabled`);
    if (user.totp_secret) {
      if (!req.totp) return fail('second-factor-required', 'this account needs a one-time code (totp)');
      const secret = await this.#c.secrets.open(user.totp_secret);
      const step = matchTotp(secret, req.totp, this.#nowMs());
      if (step === undefined) return fail('second-factor-invalid', 'the one-time code is wrong or expired');
      const fresh = await this.#c.db.query(
        'INSERT INTO iam_totp_used (user_id, step) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1',
        [user.id, step],
      );
      if (fresh.rows.length === 0) return fail('second-factor-replayed', 'this one-time code was already used');
    }
    return this.#issue({ id: user.id, username: user.username, roles: user.roles, attributes: user.attributes });
  }

  async refresh(refreshToken: string): Promise<R<TokenPair>> {
    const [id, secret] = refreshToken.split('.');
    if (!id || !secret || !/^[0-9a-f-]{36}$/.test(id)) return fail('token-invalid', 'malformed refresh token');
    const { rows } = await this.#c.db.query<{
      user_id: string;
      token_hash: Uint8Array;
      expires_at: Date;
      revoked_at: Date | null;
    }>(
      `UPDATE iam_refresh_token SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL
       RETURNING user_id, token_hash, expires_at, revoked_at`,
      [id],
    );
    const row = rows[0];
    if (!row || !sm3(Buffer.from(secret)).equals(Buffer.from(row.token_hash)))
      return fail('token-revoked', 'refresh token is unknown, already used or revoked');
    if (new Date(row.expires_at).getTime() < this.#nowMs()) return fail('token-expired', 'refresh token expired; log in again');
    const u = await this.#c.db.query<{
      id: string;
      username: string;
      roles: string[];
      attributes: Record<string, string>;
      disabled: boolean;
    }>('SELECT id, username, roles, attributes, disabled FROM iam_user WHERE id = $1', [row.user_id]);
    if (!u.rows[0] || u.rows[0].disabled) return fail('user-disabled', 'the user is disabled');
    return this.#issue(u.rows[0]);
  }

  /** Revokes an access token (by its id, until it expires) or a refresh token. */
  async revoke(token: string): Promise<R<void>> {
    if (token.split('.').length === 2) {
      const id = token.split('.')[0]!;
      if (!/^[0-9a-f-]{36}$/.test(id)) return fail('token-invalid', 'malformed refresh token');
      await this.#c.db.query('UPDATE iam_refresh_token SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL', [id]);
      return { ok: true, value: undefined };
    }
    const v = this.#verify(token);
    if (!v.ok && v.error.kind !== 'token-expired') return v;
    if (v.ok) {
      await this.#c.db.query(
        'INSERT INTO iam_revoked_token (jti, expires_at) VALUES ($1, to_timestamp($2)) ON CONFLICT DO NOTHING',
        [v.value.jti, v.value.exp],
      );
      this.#revoked.jtis.set(v.value.jti, v.value.exp);
    }
    return { ok: true, value: undefined };
  }

  /** A user's roles and attributes by username (for the access decision endpoint). */
  async findUser(
    username: string,
  ): Promise<{ userId: string; username: string; roles: string[]; attributes: Record<string, string> } | undefined> {
    const { rows } = await this.#c.db.query<{ id: string; roles: string[]; attributes: Record<string, string> }>(
      'SELECT id, roles, attributes FROM iam_user WHERE username = $1',
      [username],
    );
    const u = rows[0];
    return u ? { userId: u.id, username, roles: u.roles, attributes: u.attributes } : undefined;
  }

  /** Resolves a bearer access token to the user it names. */
  async authenticate(token: string): Promise<R<Principal>> {
    const v = this.#verify(token);
    if (!v.ok) return v;
    const c = v.value;
    if (c.typ !== 'access') return fail('token-invalid', 'not an access token');
    if (await this.#isRevoked(c.jti)) return fail('token-revoked', 'this token was revoked');
    return {
      ok: true,
      value: {
        kind: 'user',
        userId: c.sub,
        username: c.attrs?.username ?? c.sub,
        roles: c.roles ?? [],
        attributes: Object.fromEntries(Object.entries(c.attrs ?? {}).filter(([k]) => k !== 'username')),
        tokenId: c.jti,
      },
    };
  }

  async registerService(s: { id: string; kind: 'site' | 'router' | 'edge'; publicKey: Sm2PublicKey }): Promise<void> {
    await this.#c.db.query(
      `INSERT INTO iam_service (id, kind, public_key) VALUES ($1, $2, $3)
       ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, public_key = excluded.public_key`,
      [s.id, s.kind, s.publicKey.toPem()],
    );
  }

  /** A registered service's public key (a peer site's, to seal replication pages to it). */
  async servicePublicKey(serviceId: string): Promise<Sm2PublicKey | undefined> {
    const { rows } = await this.#c.db.query<{ public_key: string }>('SELECT public_key FROM iam_service WHERE id = $1', [
      serviceId,
    ]);
    return rows[0] ? Sm2PublicKey.fromPem(rows[0].public_key) : undefined;
  }

  /** Site-to-site calls present an assertion signed with the calling service's own SM2 key. */
  async authenticateService(assertion: string): Promise<R<Principal>> {
    const header = peekHeader(assertion);
    const serviceId = header?.kid;
    if (!serviceId) return fail('token-invalid', 'service assertion names no service (kid)');
    const { rows } = await this.#c.db.query<{ kind: 'site' | 'router' | 'edge'; public_key: string }>(
      'SELECT kind, public_key FROM iam_service WHERE id = $1',
      [serviceId],
    );
    if (!rows[0]) return fail('unknown-service', `service ${serviceId} is not registered here`);
    const nowS = Math.floor(this.#nowMs() / 1000);
    // A peer reuses its assertion for a while (one SM2 verification per assertion, not per
    // call); the cache is keyed by the registered key too, so re-registering a key takes effect at once.
    const cacheKey = `${rows[0].public_key}\u0000${assertion}`;
    const cached = this.#services.get(cacheKey);
    if (cached && cached.exp > nowS) return { ok: true, value: { kind: 'service', serviceId, serviceKind: rows[0].kind } };
    const v = verifyServiceAssertion(assertion, Sm2PublicKey.fromPem(rows[0].public_key), {
      audience: this.#c.siteId,
      nowSeconds: nowS,
    });
    if (!v.ok) return v;
    if (this.#services.size >= VERIFIED_CACHE) this.#services.delete(this.#services.keys().next().value!);
    this.#services.set(cacheKey, { exp: v.value.exp });
    return { ok: true, value: { kind: 'service', serviceId, serviceKind: rows[0].kind } };
  }

  /** The issuer's public key, published for verifiers. */
  publicKey(): { kid: string; pem: string } | undefined {
    const i = this.#c.issuer();
    return i ? { kid: i.kid, pem: i.key.publicKey.toPem() } : undefined;
  }

  /**
   * Revoked access tokens, kept in memory and topped up from the database at most once per
   * REVOCATION_SYNC_MS: a revocation here takes effect at once, one made through another API
   * node of the site within that interval.
   */
  async #isRevoked(jti: string): Promise<boolean> {
    const r = this.#revoked;
    if (this.#nowMs() - r.syncedAt > REVOCATION_SYNC_MS) {
      r.syncing ??= this.#syncRevocations().finally(() => {
        r.syncing = undefined;
      });
      await r.syncing;
    }
    return r.jtis.has(jti);
  }

  async #syncRevocations(): Promise<void> {
    const r = this.#revoked;
    const started = this.#nowMs();
    // Overlap the last look by a margin: a revocation's timestamp is its transaction's start.
    const since = r.watermark ? new Date(r.watermark.getTime() - 10_000).toISOString() : '-infinity';
    const { rows } = await this.#c.db.query<{ jti: string; exp: number; revoked_at: Date }>(
      `SELECT jti, extract(epoch FROM expires_at)::float8 AS exp, revoked_at FROM iam_revoked_token
        WHERE revoked_at >= $1::timestamptz AND expires_at > now()`,
      [since],
    );
    for (const row of rows) {
      r.jtis.set(row.jti, row.exp);
      if (!r.watermark || row.revoked_at > r.watermark) r.watermark = new Date(row.revoked_at);
    }
    const nowS = started / 1000;
    for (const [jti, exp] of r.jtis) if (exp + 60 < nowS) r.jtis.delete(jti);
    r.syncedAt = started;
  }

  #verify(token: string): R<TokenClaims> {
    const issuer = this.#c.issuer();
    if (!issuer) return fail('issuer-unavailable', 'this site cannot verify tokens while its KMS is sealed');
    const nowS = Math.floor(this.#nowMs() / 1000);
    // An SM2 verification costs ~0.7 ms of CPU; a token already verified under the same key
    // is taken from the cache (expiry is still checked; revocation is checked by the caller).
    if (this.#verified.issuer !== issuer.key) this.#verified = { issuer: issuer.key, claims: new Map() };
    const cached = this.#verified.claims.get(token);
    if (cached)
      return cached.exp + TOKEN_LEEWAY_SECONDS < nowS ? fail('token-expired', 'token expired') : { ok: true, value: cached };
    const v = verifyToken(token, issuer.key.publicKey, nowS);
    if (!v.ok) return fail(v.error.kind === 'expired' ? 'token-expired' : 'token-invalid', v.error.message);
    const claims = this.#verified.claims;
    if (claims.size >= VERIFIED_CACHE) claims.delete(claims.keys().next().value!);
    claims.set(token, v.claims);
    return { ok: true, value: v.claims };
  }

  async #issue(u: { id: string; username: string; roles: string[]; attributes: Record<string, string> }): Promise<R<TokenPair>> {
    const issuer = this.#c.issuer();
    if (!issuer) return fail('issuer-unavailable', 'this site cannot issue tokens while its KMS is sealed');
    const now = Math.floor(this.#nowMs() / 1000);
    const ttl = this.#c.accessTtlSeconds ?? 600;
    const accessToken = signToken(
      {
        iss: this.#c.siteId,
        sub: u.id,
        typ: 'access',
        iat: now,
        exp: now + ttl,
        jti: randomUUID(),
        roles: u.roles,
        attrs: { ...u.attributes, username: u.username },
      },
      issuer.key,
      issuer.kid,
    );
    const refreshId = randomUUID();
    const secret = randomBytes(32).toString('base64url');
    await this.#c.db.query(
      'INSERT INTO iam_refresh_token (id, user_id, token_hash, expires_at) VALUES ($1, $2, $3, to_timestamp($4))',
      [refreshId, u.id, sm3(Buffer.from(secret)), now + (this.#c.refreshTtlSeconds ?? 8 * 3600)],
    );
    return { ok: true, value: { accessToken, refreshToken: `${refreshId}.${secret}`, expiresIn: ttl, tokenType: 'Bearer' } };
  }
}

/** A service signs its own short-lived assertion for a call to `site`. */
export function serviceAssertion(opts: { serviceId: string; key: Sm2PrivateKey; site: string; nowSeconds?: number }): string {
  const now = opts.nowSeconds ?? Math.floor(Date.now() / 1000);
  return signToken(
    {
      iss: opts.serviceId,
      sub: opts.serviceId,
      typ: 'service',
      iat: now,
      exp: now + ASSERTION_SECONDS,
      jti: randomUUID(),
      site: opts.site,
    },
    opts.key,
    opts.serviceId,
  );
}

const ASSERTION_SECONDS = 60;

/** The service a service assertion says it is from (its key id), unverified: to pick the key to verify it with. */
export function assertionIssuer(assertion: string): string | undefined {
  const kid = peekHeader(assertion)?.kid;
  return typeof kid === 'string' && kid.length > 0 ? kid : undefined;
}

/**
 * Checks a service assertion against the issuer's registered key: signature, lifetime (with the
 * leeway), a service assertion (not an access token), from `assertionIssuer` and for `audience`
 * (the site, or 'witness', being called). The one check for sites and the witness.
 */
export function verifyServiceAssertion(
  assertion: string,
  key: Sm2PublicKey,
  o: { audience: string; nowSeconds?: number },
): R<{ serviceId: string; exp: number }> {
  const serviceId = assertionIssuer(assertion);
  if (!serviceId) return fail('token-invalid', 'service assertion names no service (kid)');
  const v = verifyToken(assertion, key, o.nowSeconds ?? Math.floor(Date.now() / 1000));
  if (!v.ok) return fail(v.error.kind === 'expired' ? 'token-expired' : 'token-invalid', v.error.message);
  if (v.claims.typ !== 'service' || v.claims.sub !== serviceId || v.claims.site !== o.audience)
    return fail('token-invalid', `service assertion is not for ${o.audience} or not a service assertion`);
  return { ok: true, value: { serviceId, exp: v.claims.exp } };
}

/**
 * Service assertions for calls to other services, each reused for half its lifetime: a
 * replication link signs one every 30 s instead of one per request.
 */
export class AssertionCache {
  readonly #cache = new Map<string, { token: string; key: Sm2PrivateKey; renewAt: number }>();

  for(opts: { serviceId: string; key: Sm2PrivateKey; site: string }): string {
    const now = Date.now();
    const hit = this.#cache.get(opts.site);
    if (hit && hit.key === opts.key && hit.renewAt > now) return hit.token;
    const token = serviceAssertion(opts);
    this.#cache.set(opts.site, { token, key: opts.key, renewAt: now + (ASSERTION_SECONDS / 2) * 1000 });
    return token;
  }
}

/** How stale this node's view of revocations made elsewhere may get. */
const REVOCATION_SYNC_MS = 1000;
/** Verified access tokens kept (oldest evicted first). */
const VERIFIED_CACHE = 10_000;

// Verified against when the user does not exist, so both paths cost one scrypt.
const DUMMY_HASH = 'scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=';
