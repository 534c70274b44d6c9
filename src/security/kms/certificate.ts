// Key destruction: a request (what to destroy, why, until when it may be acted on), each
// approver's SM2 signature over it, and the certificate the site signs once the material is
// gone. The certificate carries the request and the approvals themselves, so anyone holding
// it and the approvers' public keys can check who approved, without trusting the site's word.
import { z } from 'zod';
import { sm2Sign, sm2Verify, sm3, Sm2PublicKey, type Sm2PrivateKey } from '../crypto/index.ts';
import { KmsError } from './errors.ts';

export interface SiteWipe {
  site: string;
  wipedAt: string;
  /** What was wiped, e.g. "material_wrapped set to NULL in kms_key_version". */
  how: string;
}

export interface DestructionRequest {
  type: 'medmesh-key-destruction-request/1';
  id: string;
  site: string;
  /** The master key whose custodians approve (a request made under an earlier one does not count). */
  cmkId: string;
  keyName: string;
  versions: number[];
  reason: string;
  requestedAt: string;
  /** Approvals of an old request are not acted on after this. */
  expiresAt: string;
}

/** One approver's signature over a request (made on the approver's own machine with their key). */
export interface DestructionApproval {
  format: 'medmesh-key-destruction-approval/1';
  /** SM3 of the canonical request (hex). */
  request: string;
  approver: string;
  /** The approver's SM2 public key (PEM): a custodian of the site's master key. */
  publicKey: string;
  approvedAt: string;
  signature: string;
}

export interface DestructionDocument {
  type: 'medmesh-key-destruction/1' | 'medmesh-key-destruction/2';
  id: string;
  site: string;
  keyName: string;
  versions: number[];
  issuedAt: string;
  approvers: string[];
  reason: string;
  /** /2: the canonical request the approvals sign. */
  request?: string;
  approvals?: DestructionApproval[];
  confirmations: SiteWipe[];
}

export interface DestructionCertificate {
  document: string;
  signature: string;
  signingPublicKey: string;
}

const iso = z.iso.datetime({ offset: true });
const requestSchema = z.strictObject({
  type: z.literal('medmesh-key-destruction-request/1'),
  id: z.uuid(),
  site: z.string().min(1).max(100),
  cmkId: z.uuid(),
  keyName: z.string().regex(/^[a-z][a-z0-9._-]{0,63}$/),
  versions: z.array(z.number().int().min(1)).min(1).max(1000),
  reason: z.string().trim().min(1).max(2000),
  requestedAt: iso,
  expiresAt: iso,
});
const approvalSchema = z.strictObject({
  format: z.literal('medmesh-key-destruction-approval/1'),
  request: z.string().regex(/^[0-9a-f]{64}$/),
  approver: z.string().min(1).max(64),
  publicKey: z.string().max(1000),
  approvedAt: iso,
  signature: z.string().max(400),
});

/** Canonical: fixed key order, no whitespace (what is hashed and signed). */
export function canonicalRequest(r: DestructionRequest): string {
  return JSON.stringify({
    type: r.type,
    id: r.id,
    site: r.site,
    cmkId: r.cmkId,
    keyName: r.keyName,
    versions: r.versions,
    reason: r.reason,
    requestedAt: r.requestedAt,
    expiresAt: r.expiresAt,
  });
}

export function parseRequest(text: string): DestructionRequest {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new KmsError('bad-request', 'the destruction request is not JSON');
  }
  const p = requestSchema.safeParse(raw);
  if (!p.success) {
    const i = p.error.issues[0];
    throw new KmsError('bad-request', `destruction request: ${i?.path.join('.') || '(root)'}: ${i?.message ?? 'invalid'}`);
  }
  return p.data;
}

export function parseApproval(text: string): DestructionApproval {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new KmsError('bad-request', 'the approval is not JSON');
  }
  const p = approvalSchema.safeParse(raw);
  if (!p.success) {
    const i = p.error.issues[0];
    throw new KmsError('bad-request', `approval: ${i?.path.join('.') || '(root)'}: ${i?.message ?? 'invalid'}`);
  }
  return p.data;
}

export function requestDigest(r: DestructionRequest): string {
  return sm3(Buffer.from(canonicalRequest(r))).toString('hex');
}

function approvalStatement(a: Omit<DestructionApproval, 'signature' | 'format'>): Buffer {
  return Buffer.from(
    JSON.stringify({
      type: 'medmesh-key-destruction-approval/1',
      request: a.request,
      approver: a.approver,
      publicKey: Sm2PublicKey.fromPem(a.publicKey).hex,
      approvedAt: a.approvedAt,
    }),
  );
}

/** An approver signs a request with their own key. */
export function approveRequest(
  r: DestructionRequest,
  o: { approver: string; key: Sm2PrivateKey; now?: Date },
): DestructionApproval {
  const unsigned = {
    request: requestDigest(r),
    approver: o.approver,
    publicKey: o.key.publicKey.toPem(),
    approvedAt: (o.now ?? new Date()).toISOString(),
  };
  return {
    format: 'medmesh-key-destruction-approval/1',
    ...unsigned,
    signature: sm2Sign(o.key, approvalStatement(unsigned)).toString('base64'),
  };
}

/** Whether `a` is a signature over this request by the key it names (who that key belongs to is checked elsewhere). */
export function approvalSigned(a: DestructionApproval, r: DestructionRequest): boolean {
  if (a.request !== requestDigest(r)) return false;
  try {
    return sm2Verify(Sm2PublicKey.fromPem(a.publicKey), approvalStatement(a), Buffer.from(a.signature, 'base64'));
  } catch {
    return false;
  }
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
    ...(d.request !== undefined ? { request: d.request } : {}),
    ...(d.approvals !== undefined
      ? {
          approvals: d.approvals.map((a) => ({
            format: a.format,
            request: a.request,
            approver: a.approver,
            publicKey: a.publicKey,
            approvedAt: a.approvedAt,
            signature: a.signature,
          })),
        }
      : {}),
    confirmations: d.confirmations.map((c) => ({ site: c.site, wipedAt: c.wipedAt, how: c.how })),
  });
}

export function signCertificate(d: DestructionDocument, key: Sm2PrivateKey): DestructionCertificate {
  const document = canonicalDocument(d);
  return { document, signature: sm2Sign(key, Buffer.from(document)).toString('base64'), signingPublicKey: key.publicKey.toPem() };
}

export interface CertificateCheck {
  /** The site's signature holds, and at least two distinct approvers' signatures over the request it names. */
  valid: boolean;
  document?: DestructionDocument;
  /** Each approval: its signature over the request, and (when keys were given) whether the key is that approver's. */
  approvals: Array<{ approver: string; signed: boolean; keyMatches?: boolean }>;
  problems: string[];
}

/**
 * Checks a destruction certificate with public keys alone: the site's signature (against
 * `siteKey` when given, else the key it carries), the request inside it matches what was
 * destroyed, and the approvals are signatures over that request. With `approverKeys` (name ->
 * key, e.g. the custodians' published keys) an approval counts only when made with that key.
 */
export function verifyCertificate(
  c: DestructionCertificate,
  o: { siteKey?: Sm2PublicKey; approverKeys?: ReadonlyMap<string, Sm2PublicKey>; minApprovers?: number } = {},
): CertificateCheck {
  const out: CertificateCheck = { valid: false, approvals: [], problems: [] };
  let key: Sm2PublicKey;
  try {
    key = o.siteKey ?? Sm2PublicKey.fromPem(c.signingPublicKey);
  } catch {
    return { ...out, problems: ['the certificate carries no readable signing key'] };
  }
  if (!sm2Verify(key, Buffer.from(c.document), Buffer.from(c.signature, 'base64')))
    return { ...out, problems: ["the site's signature does not verify (changed, or signed by another key)"] };
  let d: DestructionDocument;
  try {
    d = JSON.parse(c.document) as DestructionDocument;
  } catch {
    return { ...out, problems: ['the certificate document is not JSON'] };
  }
  out.document = d;
  if (d.type !== 'medmesh-key-destruction/2' || d.request === undefined || !d.approvals) {
    out.problems.push('made before approvals were signed: its approvers are names only and cannot be checked');
    return out;
  }
  let r: DestructionRequest;
  try {
    r = parseRequest(d.request);
  } catch (e) {
    out.problems.push(e instanceof Error ? e.message : String(e));
    return out;
  }
  if (
    r.site !== d.site ||
    r.keyName !== d.keyName ||
    r.reason !== d.reason ||
    JSON.stringify([...r.versions].sort((a, b) => a - b)) !== JSON.stringify(d.versions)
  )
    out.problems.push('the approved request is not for what the certificate says was destroyed');
  const counted = new Set<string>();
  for (const a of d.approvals) {
    const signed = approvalSigned(a, r);
    const given = o.approverKeys?.get(a.approver);
    const keyMatches = o.approverKeys ? given !== undefined && samePem(a.publicKey, given) : undefined;
    out.approvals.push({ approver: a.approver, signed, ...(keyMatches !== undefined ? { keyMatches } : {}) });
    if (!signed) out.problems.push(`the approval of ${a.approver} does not verify`);
    else if (keyMatches === false)
      out.problems.push(
        given
          ? `the approval of ${a.approver} is not made with the key given for ${a.approver}`
          : `no key was given for ${a.approver}: that approval is not counted`,
      );
    else counted.add(a.approver);
  }
  const need = o.minApprovers ?? 2;
  if (counted.size < need) out.problems.push(`${counted.size} verified approver(s), ${need} needed`);
  out.valid = out.problems.length === 0;
  return out;
}

function samePem(pem: string, key: Sm2PublicKey): boolean {
  try {
    return Sm2PublicKey.fromPem(pem).hex === key.hex;
  } catch {
    return false;
  }
}
