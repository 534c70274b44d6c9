// Destruction certificates: a canonical JSON document signed with the site's SM2 key.
import { sm2Sign, sm2Verify, Sm2PublicKey, type Sm2PrivateKey } from '../crypto/index.ts';

export interface SiteWipe {
  site: string;
  wipedAt: string;
  /** What was wiped, e.g. "material_wrapped set to NULL in kms_key_version". */
  how: string;
}

export interface DestructionDocument {
  type: 'medmesh-key-destruction/1';
  id: string;
  site: string;
  keyName: string;
  versions: number[];
  issuedAt: string;
  approvers: string[];
  reason: string;
  confirmations: SiteWipe[];
}

export interface DestructionCertificate {
  document: string;
  signature: string;
  signingPublicKey: string;
}

/** Canonical: fixed key order, no whitespace, so the signed bytes are reproducible. */
export function canonicalDocument(d: DestructionDocument): string {
  return JSON.stringify({
    type: d.type,
    id: d.id,
    site: d.site,
    keyName: d.keyName,
    versions: d.versions,
    issuedAt: d.issuedAt,
    approvers: d.approvers,
    reason: d.reason,
    confirmations: d.confirmations.map((c) => ({ site: c.site, wipedAt: c.wipedAt, how: c.how })),
  });
}

export function signCertificate(d: DestructionDocument, key: Sm2PrivateKey): DestructionCertificate {
  const document = canonicalDocument(d);
  return { document, signature: sm2Sign(key, Buffer.from(document)).toString('base64'), signingPublicKey: key.publicKey.toPem() };
}

export function verifyCertificate(
  c: DestructionCertificate,
  trusted?: Sm2PublicKey,
): { valid: boolean; document?: DestructionDocument } {
  let key: Sm2PublicKey;
  try {
    key = trusted ?? Sm2PublicKey.fromPem(c.signingPublicKey);
  } catch {
    return { valid: false };
  }
  if (!sm2Verify(key, Buffer.from(c.document), Buffer.from(c.signature, 'base64'))) return { valid: false };
  return { valid: true, document: JSON.parse(c.document) as DestructionDocument };
}
