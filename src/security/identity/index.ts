export { IdentityService, serviceAssertion, AssertionCache, SECOND_FACTOR_ROLES } from './identity.ts';
export type { IdentityContext, IdentityError, IdentityErrorKind, Principal, TokenPair } from './identity.ts';
export { hashPassword, verifyPassword, passwordProblem } from './password.ts';
export { hotp, matchTotp, totpStep, base32, base32Decode, newTotpSecret } from './totp.ts';
export type { OtpAlgorithm } from './totp.ts';
export { signToken, verifyToken, peekHeader } from './token.ts';
export type { TokenClaims, TokenError } from './token.ts';
