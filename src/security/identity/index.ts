// Who is calling: users with scrypt passwords and TOTP second factors, SM2-signed access and
// refresh tokens with revocation, and service assertions between sites. Needs db and crypto.
export {
  IdentityService,
  serviceAssertion,
  verifyServiceAssertion,
  assertionIssuer,
  AssertionCache,
  SECOND_FACTOR_ROLES,
} from './identity.ts';
export type { IdentityContext, IdentityError, IdentityErrorKind, Principal, TokenPair } from './identity.ts';

export { hotp, totpStep, base32, base32Decode } from './totp.ts';
export type { OtpAlgorithm } from './totp.ts';
export { signToken } from './token.ts';
export type { TokenClaims, TokenError } from './token.ts';
