// JWT-shaped tokens signed with SM2 (alg "SM2-SM3", user ID 1234567812345678): header,
// claims and signature in base64url. Verified with the issuer's published public key.
import { sm2Sign, sm2Verify, type Sm2PrivateKey, type Sm2PublicKey } from '../crypto/index.ts';

export interface TokenClaims {
  iss: string;
  sub: string;
  typ: 'access' | 'service';
  iat: number;
  exp: number;
  jti: string;
  roles?: string[];
  attrs?: Record<string, string>;
  site?: string;
}

export type TokenError = {
  kind: 'malformed' | 'bad-signature' | 'expired' | 'not-yet-valid' | 'wrong-algorithm';
  message: string;
};

const b64u = (b: Buffer | string) => Buffer.from(b).toString('base64url');

export function signToken(claims: TokenClaims, key: Sm2PrivateKey, kid: string): string {
  const header = b64u(JSON.stringify({ alg: 'SM2-SM3', typ: 'JWT', kid }));
  const payload = b64u(JSON.stringify(claims));
  const sig = sm2Sign(key, Buffer.from(`${header}.${payload}`), { format: 'raw' });
  return `${header}.${payload}.${b64u(sig)}`;
}

/** Header without verification (to pick the issuer key by kid). */
export function peekHeader(token: string): { alg?: string; kid?: string } | undefined {
  const [h] = token.split('.');
  try {
    return JSON.parse(Buffer.from(h ?? '', 'base64url').toString('utf8')) as { alg?: string; kid?: string };
  } catch {
    return undefined;
  }
}

/**
 * Clock difference tolerated between the signer and this site: a token is accepted up to this
 * long after its `exp` and from this long before its `iat` (docs/security.md).
 */
export const TOKEN_LEEWAY_SECONDS = 30;

export function verifyToken(
  token: string,
  key: Sm2PublicKey,
  nowSeconds: number,
  skewSeconds = TOKEN_LEEWAY_SECONDS,
): { ok: true; claims: TokenClaims } | { ok: false; error: TokenError } {
  const parts = token.split('.');
  if (parts.length !== 3 || parts.some((p) => !/^[A-Za-z0-9_-]+$/.test(p)))
    return { ok: false, error: { kind: 'malformed', message: 'token must be three base64url parts' } };
  const header = peekHeader(token);
  if (header?.alg !== 'SM2-SM3')
    return {
      ok: false,
      error: { kind: 'wrong-algorithm', message: `token algorithm ${String(header?.alg)} is not accepted (SM2-SM3 only)` },
    };
  if (!sm2Verify(key, Buffer.from(`${parts[0]}.${parts[1]}`), Buffer.from(parts[2]!, 'base64url'), { format: 'raw' })) {
    return { ok: false, error: { kind: 'bad-signature', message: 'token signature does not verify with the issuer key' } };
  }
  let claims: TokenClaims;
  try {
    claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as TokenClaims;
  } catch {
    return { ok: false, error: { kind: 'malformed', message: 'token claims are not JSON' } };
  }
  if (
    typeof claims.exp !== 'number' ||
    typeof claims.iat !== 'number' ||
    typeof claims.sub !== 'string' ||
    typeof claims.jti !== 'string'
  )
    return { ok: false, error: { kind: 'malformed', message: 'token lacks sub, iat, exp or jti' } };
  if (claims.exp + skewSeconds < nowSeconds) return { ok: false, error: { kind: 'expired', message: 'token expired' } };
  if (claims.iat - skewSeconds > nowSeconds)
    return { ok: false, error: { kind: 'not-yet-valid', message: 'token issued in the future' } };
  return { ok: true, claims };
}
