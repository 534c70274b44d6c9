// The one place medmesh encrypts, signs and hashes: SM2 (signatures with a user ID, C1C3C2
// encryption, keys openssl reads), SM3 and HMAC-SM3, SM4 (CBC, CTR, GCM), the AES-256-GCM /
// RSA-3072 fallback behind the versioned envelope, and streamed file encryption on worker
// threads. Needs nothing else in src: no database, no state.
export { CryptoError } from './errors.ts';
export type { CryptoErrorCode } from './errors.ts';
export { canonicalBytes } from './canonical-json.ts';
export { sm3, hmacSm3, hmacSm3Keyed, equalConstantTime } from './sm3.ts';
export { sm4CbcEncrypt, sm4Ctr, sm4GcmEncrypt, sm4GcmDecrypt } from './sm4.ts';
export type { GcmSealed } from './sm4.ts';
export { Sm2PrivateKey, Sm2PublicKey } from './sm2-keys.ts';
export { sm2Sign, sm2Verify, sm2Encrypt, sm2Decrypt } from './sm2.ts';
export type { Sm2SignOptions, Sm2CipherFormat } from './sm2.ts';

export { sealEnvelope, openEnvelope, readEnvelopeHeader, algorithmFor, keyBytesFor } from './envelope.ts';
export type { EnvelopeAlgorithm, EnvelopeHeader, CryptoPolicy } from './envelope.ts';
export { createEncryptStream, encryptFile } from './file-stream.ts';
export { FileCryptoPool, openHere } from './file-crypto-pool.ts';
export type { OpenedFile } from './file-crypto-pool.ts';
export type { FileKey, FileHeader } from './file-stream.ts';
export { GcmWorker } from './sm4-gcm-parallel.ts';
