// Custodian shares of a site's customer master key (CMK). The CMK is split with Shamir
// (k of n); each share is sealed with SM4-GCM under a fresh key that is itself SM2-encrypted
// to the custodian's (or a site's) public key. Only the custodian can open their share.
import { randomBytes } from 'node:crypto';
import {
  openEnvelope,
  sealEnvelope,
  sm2Decrypt,
  sm2Encrypt,
  sm2Sign,
  sm2Verify,
  Sm2PublicKey,
  type Sm2PrivateKey,
} from '../crypto/index.ts';
import type { Queryable } from '../../db/index.ts';
import { KmsError } from './errors.ts';

export interface Custodian {
  name: string;
  publicKey: Sm2PublicKey;
}

/** What a custodian keeps (a file); safe to store anywhere, including at other sites. */
export interface WrappedShare {
  format: 'medmesh-cmk-share/1';
  site: string;
  cmkId: string;
  index: number;
  threshold: number;
  custodian: string;
  custodianPublicKey: string;
  /** SM2 (C1C3C2) encryption of the SM4 key that seals the share. */
  wrappedKey: string;
  /** SM4-GCM envelope of the share token, bound to site, cmkId and index. */
  sealed: string;
  /**
   * SM2 signature by the owner site's service (KMS signing) key over the fields above: another
   * site keeps a deposit only when it verifies, so nobody can take a share's slot first.
   */
  ownerSignature?: string;
}

/** An opened share as submitted for unsealing: `mmshare1.<cmkId>.<index>.<hex>`. */
export interface ShareToken {
  cmkId: string;
  index: number;
  share: Uint8Array;
}

export function encodeShareToken(t: ShareToken): string {
  return `mmshare1.${t.cmkId}.${t.index}.${Buffer.from(t.share).toString('hex')}`;
}

export function decodeShareToken(s: string): ShareToken {
  const m = /^mmshare1\.([0-9a-f-]{36})\.(\d{1,3})\.([0-9a-f]+)$/.exec(s.trim());
  if (!m) throw new KmsError('bad-share', 'not a medmesh master key share (expected mmshare1.<key id>.<index>.<hex>)');
  return { cmkId: m[1]!, index: Number(m[2]), share: Buffer.from(m[3]!, 'hex') };
}

function binding(site: string, cmkId: string, index: number): Buffer {
  return Buffer.from(`medmesh-cmk-share|${site}|${cmkId}|${index}`);
}

export function wrapShare(opts: {
  site: string;
  cmkId: string;
  index: number;
  threshold: number;
  custodian: Custodian;
  token: ShareToken;
}): WrappedShare {
  const k = randomBytes(16);
  const sealed = sealEnvelope(
    { alg: 'SM4-GCM', keyId: `share:${opts.cmkId}`, keyVersion: opts.index, key: k },
    Buffer.from(encodeShareToken(opts.token)),
    binding(opts.site, opts.cmkId, opts.index),
  );
  return {
    format: 'medmesh-cmk-share/1',
    site: opts.site,
    cmkId: opts.cmkId,
    index: opts.index,
    threshold: opts.threshold,
    custodian: opts.custodian.name,
    custodianPublicKey: opts.custodian.publicKey.toPem(),
    wrappedKey: sm2Encrypt(opts.custodian.publicKey, k).toString('base64'),
    sealed: sealed.toString('base64'),
  };
}

function depositStatement(w: WrappedShare): Buffer {
  return Buffer.from(
    [
      'medmesh-cmk-share-deposit/1',
      w.format,
      w.site,
      w.cmkId,
      w.index,
      w.threshold,
      w.custodian,
      w.custodianPublicKey,
      w.wrappedKey,
      w.sealed,
    ].join('\n'),
  );
}

/** The share signed by its site's service key (made at init, while the key is in hand). */
export function signShare(w: WrappedShare, ownerKey: Sm2PrivateKey): WrappedShare {
  const { ownerSignature: _, ...unsigned } = w;
  return { ...unsigned, ownerSignature: sm2Sign(ownerKey, depositStatement(unsigned)).toString('base64') };
}

/** Whether the share carries a valid signature by this (the owner site's registered) key. */
export function shareSignedBy(w: WrappedShare, ownerKey: Sm2PublicKey): boolean {
  return (
    typeof w.ownerSignature === 'string' && sm2Verify(ownerKey, depositStatement(w), Buffer.from(w.ownerSignature, 'base64'))
  );
}

/** Opens a wrapped share with the custodian's private key; tampering fails here. */
export function unwrapShare(w: WrappedShare, custodianKey: Sm2PrivateKey): ShareToken {
  if (w.format !== 'medmesh-cmk-share/1') throw new KmsError('bad-share', `unknown share format ${String(w.format)}`);
  if (custodianKey.publicKey.hex !== Sm2PublicKey.fromPem(w.custodianPublicKey).hex)
    throw new KmsError('bad-share', `this share is wrapped for custodian ${w.custodian}, not for the key given`);
  const k = sm2Decrypt(custodianKey, Buffer.from(w.wrappedKey, 'base64'));
  const token = decodeShareToken(openEnvelope(Buffer.from(w.sealed, 'base64'), k, binding(w.site, w.cmkId, w.index)).toString());
  if (token.cmkId !== w.cmkId || token.index !== w.index)
    throw new KmsError('bad-share', 'share contents do not match its label');
  return token;
}

export function parseWrappedShare(json: string): WrappedShare {
  let w: unknown;
  try {
    w = JSON.parse(json);
  } catch {
    throw new KmsError('bad-share', 'share file is not valid JSON');
  }
  const o = w as Partial<WrappedShare>;
  if (
    o.format !== 'medmesh-cmk-share/1' ||
    typeof o.cmkId !== 'string' ||
    typeof o.sealed !== 'string' ||
    typeof o.wrappedKey !== 'string' ||
    typeof o.index !== 'number' ||
    typeof o.site !== 'string' ||
    typeof o.custodianPublicKey !== 'string'
  ) {
    throw new KmsError('bad-share', 'share file lacks format, site, cmkId, index, custodianPublicKey, wrappedKey or sealed');
  }
  if (o.ownerSignature !== undefined && typeof o.ownerSignature !== 'string')
    throw new KmsError('bad-share', 'ownerSignature: must be base64 text');
  return o as WrappedShare;
}

/**
 * Keeps another site's wrapped share, signed by that site's service key (`ownerKey`: the key
 * registered here for it, none when it is not). Deposits are write-once: a different share
 * under the same slot is refused.
 */
export async function depositShare(
  db: Queryable,
  siteId: string,
  w: WrappedShare,
  ownerKey: Sm2PublicKey | undefined,
): Promise<void> {
  if (w.site === siteId) throw new KmsError('bad-request', 'a site does not keep deposits of its own shares');
  if (!ownerKey)
    throw new KmsError(
      'untrusted-owner',
      `site ${w.site} is not trusted here: register its service key first (medmesh peers trust)`,
    );
  if (!shareSignedBy(w, ownerKey))
    throw new KmsError(
      'bad-share',
      `the share is not signed by site ${w.site}'s service key (altered, or made before medmesh signed its shares)`,
    );
  const inserted = await db.query(
    `INSERT INTO kms_deposited_share (owner_site, cmk_id, share_index, wrapped) VALUES ($1, $2, $3, $4::jsonb)
     ON CONFLICT (owner_site, cmk_id, share_index) DO NOTHING RETURNING 1`,
    [w.site, w.cmkId, w.index, JSON.stringify(w)],
  );
  if (inserted.rows.length) return;
  const { rows } = await db.query<{ same: boolean }>(
    'SELECT wrapped = $4::jsonb AS same FROM kms_deposited_share WHERE owner_site = $1 AND cmk_id = $2 AND share_index = $3',
    [w.site, w.cmkId, w.index, JSON.stringify(w)],
  );
  if (!rows[0]?.same)
    throw new KmsError(
      'duplicate-share',
      `site ${w.site} already deposited a different share ${w.index} of master key ${w.cmkId} here`,
    );
}
