// Destroying key versions: only on a request that at least two custodians of the site's master
// key signed with their own keys; the wrapped material is set to NULL, the certificate (with
// the request and the approvals in it) is stored in the same transaction, and afterwards the
// table is rewritten so the old row versions holding the material leave the live table file.
// What PostgreSQL keeps elsewhere (WAL, backups, freed disk blocks) is in docs/keys.md.
import { randomUUID } from 'node:crypto';
import type { Db, Queryable } from '../../db/index.ts';
import { Sm2PublicKey, type Sm2PrivateKey } from '../crypto/index.ts';
import {
  approvalSigned,
  canonicalRequest,
  parseRequest,
  signCertificate,
  type DestructionApproval,
  type DestructionCertificate,
  type DestructionRequest,
} from './certificate.ts';
import { KmsError } from './errors.ts';

export interface DestroyContext {
  db: Db;
  siteId: string;
  now: Date;
  cmkId: string;
  signing: Sm2PrivateKey;
  /** The custodians of the current master key: name -> key, from the shares the site signed at init. */
  custodians: ReadonlyMap<string, Sm2PublicKey>;
  /** Zeroes this process's copy of a version's material. */
  forget: (name: string, version: number) => void;
  /** The key's row, locked for the transaction (unknown-key otherwise). */
  lockKey: (tx: Queryable, name: string) => Promise<{ latest_version: number }>;
}

/** How long an approved request may wait to be acted on, at most. */
export const MAX_REQUEST_DAYS = 30;

/** The canonical text of a new request to destroy versions of `key` (as `describeKey` gives it). */
export function makeDestructionRequest(o: {
  site: string;
  cmkId: string;
  /** The key's versions (as `Kms.describeKey` lists them). */
  key: { versions: ReadonlyArray<{ version: number; destroyedAt: string | null }> };
  keyName: string;
  versions: number[];
  reason: string;
  validHours?: number;
  now: Date;
}): string {
  const versions = [...new Set(o.versions)].sort((a, b) => a - b);
  if (versions.length === 0) throw new KmsError('bad-request', 'name at least one version to destroy');
  const missing = versions.filter((v) => !o.key.versions.some((x) => x.version === v));
  if (missing.length) throw new KmsError('bad-request', `key ${o.keyName} has no version ${missing.join(', ')}`);
  const gone = versions.filter((v) => o.key.versions.some((x) => x.version === v && x.destroyedAt));
  if (gone.length) throw new KmsError('version-destroyed', `version ${gone.join(', ')} of key ${o.keyName} is already destroyed`);
  if (!o.reason.trim()) throw new KmsError('bad-request', 'a reason is required');
  const hours = o.validHours ?? 72;
  if (!Number.isInteger(hours) || hours < 1 || hours > MAX_REQUEST_DAYS * 24)
    throw new KmsError('bad-request', `a request is valid for 1 to ${MAX_REQUEST_DAYS * 24} hours`);
  return canonicalRequest({
    type: 'medmesh-key-destruction-request/1',
    id: randomUUID(),
    site: o.site,
    cmkId: o.cmkId,
    keyName: o.keyName,
    versions,
    reason: o.reason.trim(),
    requestedAt: o.now.toISOString(),
    expiresAt: new Date(o.now.getTime() + hours * 3_600_000).toISOString(),
  });
}

/** The approvals that count: signed over this request, each by a distinct custodian with that custodian's own key. */
export function checkApprovals(
  r: DestructionRequest,
  approvals: readonly DestructionApproval[],
  custodians: ReadonlyMap<string, Sm2PublicKey>,
): { counted: DestructionApproval[]; problems: string[] } {
  const counted: DestructionApproval[] = [];
  const problems: string[] = [];
  for (const a of approvals) {
    const custodian = custodians.get(a.approver);
    if (!custodian) problems.push(`${a.approver} is not a custodian of this site's master key`);
    else if (!approvalSigned(a, r)) problems.push(`the approval of ${a.approver} is not a valid signature over this request`);
    else if (!samePem(a.publicKey, custodian))
      problems.push(`the approval of ${a.approver} is not made with ${a.approver}'s key`);
    else if (counted.some((c) => c.approver === a.approver)) problems.push(`${a.approver} approved twice`);
    else counted.push(a);
  }
  return { counted, problems };
}

export async function destroyKeyVersions(
  c: DestroyContext,
  o: { request: string; approvals: readonly DestructionApproval[] },
): Promise<{ certificate: DestructionCertificate; xid: string }> {
  const r = parseRequest(o.request);
  if (r.site !== c.siteId) throw new KmsError('bad-request', `the request is for site ${r.site}, not ${c.siteId}`);
  if (r.cmkId !== c.cmkId)
    throw new KmsError(
      'not-approved',
      `the request names master key ${r.cmkId}; site ${c.siteId} uses ${c.cmkId}: its custodians must approve a new request`,
    );
  const now = c.now.getTime();
  if (Date.parse(r.requestedAt) > now + 5 * 60_000) throw new KmsError('bad-request', 'the request is dated in the future');
  if (Date.parse(r.expiresAt) - Date.parse(r.requestedAt) > MAX_REQUEST_DAYS * 86_400_000)
    throw new KmsError('bad-request', `a request may be valid for ${MAX_REQUEST_DAYS} days at most`);
  if (now > Date.parse(r.expiresAt))
    throw new KmsError('not-approved', `the request expired at ${r.expiresAt}: make a new one and have it approved again`);
  const { counted, problems } = checkApprovals(r, o.approvals, c.custodians);
  if (counted.length < 2)
    throw new KmsError(
      'not-approved',
      'destroying key material needs the signed approval of at least two custodians; ' +
        `${counted.length} valid${problems.length ? ` (${problems.join('; ')})` : ''}`,
    );
  const versions = [...new Set(r.versions)].sort((a, b) => a - b);
  const name = r.keyName;
  return c.db.transaction(async (tx) => {
    const row = await c.lockKey(tx, name);
    const { rows } = await tx.query<{ version: number; destroyed_at: Date | null }>(
      'SELECT version, destroyed_at FROM kms_key_version WHERE name = $1 AND version = ANY($2::int[])',
      [name, versions],
    );
    const missing = versions.filter((v) => !rows.some((x) => x.version === v));
    if (missing.length) throw new KmsError('bad-request', `key ${name} has no version ${missing.join(', ')}`);
    const already = rows.filter((x) => x.destroyed_at).map((x) => x.version);
    if (already.length)
      throw new KmsError('version-destroyed', `version ${already.join(', ')} of key ${name} is already destroyed`);
    const issuedAt = c.now.toISOString();
    await tx.query(
      'UPDATE kms_key_version SET material_wrapped = NULL, destroyed_at = $3 WHERE name = $1 AND version = ANY($2::int[])',
      [name, versions, issuedAt],
    );
    const { rows: xid } = await tx.query<{ xid: string }>('SELECT txid_current()::text AS xid');
    for (const v of versions) c.forget(name, v);
    // Without an encryption version left the key only decrypts what survives; rotate to use it again.
    if (versions.includes(row.latest_version))
      await tx.query('UPDATE kms_key SET min_encryption_version = 0 WHERE name = $1', [name]);
    const certificate = signCertificate(
      {
        type: 'medmesh-key-destruction/2',
        id: randomUUID(),
        site: c.siteId,
        keyName: name,
        versions,
        issuedAt,
        approvers: counted.map((a) => a.approver),
        reason: r.reason,
        request: canonicalRequest(r),
        approvals: counted,
        confirmations: [
          {
            site: c.siteId,
            wipedAt: issuedAt,
            how:
              'wrapped material set to NULL in kms_key_version; copies in memory zeroed ' +
              '(at every other API node of the site on its next use of the key, or within 5 s); ' +
              'the table is then rewritten (VACUUM FULL) so no old row version keeps the material in the live table',
          },
        ],
      },
      c.signing,
    );
    const id = (JSON.parse(certificate.document) as { id: string }).id;
    await tx.query(
      `INSERT INTO kms_destruction_certificate (id, key_name, versions, issued_at, document, signature)
       VALUES ($1, $2, $3, $4, $5, $6)`,
      [id, name, versions, issuedAt, certificate.document, Buffer.from(certificate.signature, 'base64')],
    );
    return { certificate, xid: xid[0]!.xid };
  });
}

export interface WipeReport {
  /** The table was rewritten into a new file (VACUUM FULL ran). */
  rewritten: boolean;
  /** No transaction that could still see the old row versions was open when it ran: none was copied along. */
  complete: boolean;
  waitedMs: number;
  note: string;
}

/**
 * Rewrites kms_key_version after a destruction committed (VACUUM cannot run in a transaction).
 * A plain VACUUM only marks the dead row versions free, and their bytes stay in the page until
 * overwritten; VACUUM FULL writes the live rows to a new file and drops the old one. A row
 * version still visible to a transaction older than the destruction is copied along, so this
 * first waits (up to `waitMs`) for such transactions to end; it does not wait for locks
 * (SKIP_LOCKED) but retries until the table was rewritten or the time is up.
 */
export async function rewriteKeyVersions(db: Db, o: { afterXid: string; waitMs?: number }): Promise<WipeReport> {
  const xid = (BigInt(o.afterXid) % 4_294_967_296n).toString();
  const waitMs = o.waitMs ?? 30_000;
  const t0 = Date.now();
  const filenode = async () =>
    (await db.query<{ f: string | null }>("SELECT pg_relation_filenode('kms_key_version')::text AS f")).rows[0]?.f ?? null;
  for (;;) {
    const holders = await olderTransactions(db, xid);
    const late = Date.now() - t0 >= waitMs;
    if (holders === 0 || late) {
      const before = await filenode();
      await db.query('VACUUM (FULL, SKIP_LOCKED) kms_key_version');
      if ((await filenode()) !== before)
        return {
          rewritten: true,
          complete: holders === 0,
          waitedMs: Date.now() - t0,
          note:
            holders === 0
              ? 'kms_key_version rewritten: the destroyed material is in no row version of the live table'
              : `kms_key_version rewritten, but ${holders} transaction(s) older than the destruction were still open: ` +
                'the old row versions they could see were kept; run VACUUM FULL kms_key_version once they end',
        };
      if (late)
        return {
          rewritten: false,
          complete: false,
          waitedMs: Date.now() - t0,
          note:
            'kms_key_version could not be locked to rewrite it: ' +
            'the old row versions stay in the table file until VACUUM FULL kms_key_version runs',
        };
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Sessions of this database (and prepared transactions, replication slots) that may still see row versions deleted by `xid`. */
async function olderTransactions(q: Queryable, xid: string): Promise<number> {
  const { rows } = await q.query<{ n: number }>(
    `SELECT ((SELECT count(*) FROM pg_stat_activity
               WHERE pid <> pg_backend_pid() AND datname = current_database()
                 AND ((backend_xmin IS NOT NULL AND age(backend_xmin) >= age($1::text::xid))
                   OR (backend_xid IS NOT NULL AND age(backend_xid) >= age($1::text::xid))))
           + (SELECT count(*) FROM pg_prepared_xacts
               WHERE database = current_database() AND age(transaction) >= age($1::text::xid))
           + (SELECT count(*) FROM pg_replication_slots WHERE xmin IS NOT NULL AND age(xmin) >= age($1::text::xid)))::int AS n`,
    [xid],
  );
  return rows[0]?.n ?? 0;
}

function samePem(pem: string, key: Sm2PublicKey): boolean {
  try {
    return Sm2PublicKey.fromPem(pem).hex === key.hex;
  } catch {
    return false;
  }
}
