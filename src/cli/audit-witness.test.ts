// Three sites over real HTTP witness each other's audit logs: each checks, cosigns and keeps
// the others' checkpoints and hands its cosignature back; newest entries and checkpoints cut
// at B (by SQL, with the append-only triggers off, as an attacker with database access would)
// are found by `medmesh audit verify` at B, which asks its peers, and by the peers' own checks,
// which alarm (metric, log line, an entry in their own audit log); a peer that is down or does
// not answer holds up nobody else's cosigning.
import { createLogger } from '../common/index.ts';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { BIN, ENV, EXAMPLE } from './testing.ts';
import type { Db } from '../db/index.ts';
import { openPglite, openPostgres, quoteIdent } from '../db/index.ts';
import { TEST_POSTGRES_URL, testBackend } from '../db/test-db.ts';
import { seededRandom } from '../records/synthetic.ts';
import { AuditWitness, cosign, latestHeld, verifyAuditLog } from '../security/audit/index.ts';
import { APPEND_LOCK } from '../security/audit/appender.ts';
import { sm2Verify, Sm2PrivateKey, Sm2PublicKey } from '../security/crypto/index.ts';
import { serviceAssertion } from '../security/identity/index.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

const SEED = Number(process.env.MEDMESH_TEST_SEED ?? Date.now() % 1_000_000_000);
const replay = `(seed ${SEED}; MEDMESH_TEST_SEED=${SEED} replays it)`;

/** What an attacker with database superuser rights does: the append-only triggers are off for these statements. */
async function asAttacker(db: Db, statements: Array<[string, unknown[]]>): Promise<void> {
  await db.transaction(async (tx) => {
    await tx.query('SET LOCAL session_replication_role = replica');
    for (const [sql, params] of statements) await tx.query(sql, params);
  });
}

/** A database the CLI can open after the site closes it: a PGlite folder, or a schema of its own on the server. */
async function ownDb(dir: string): Promise<{ db: Db; flags: string[]; drop: () => Promise<void> }> {
  if (testBackend() === 'pglite') {
    return {
      db: await openPglite({ dataDir: join(dir, 'data', 'B') }),
      flags: ['--data', join(dir, 'data')],
      drop: async () => {},
    };
  }
  const schema = `t_${Math.floor(Math.random() * 2 ** 48).toString(16)}`;
  const url = new URL(TEST_POSTGRES_URL);
  url.searchParams.set('options', `-c search_path=${schema}`);
  return {
    db: await openPostgres({ connectionString: TEST_POSTGRES_URL, schema, maxConnections: 8, applicationName: schema }),
    flags: ['--database-url', url.toString()],
    drop: async () => {
      const admin = new pg.Client({ connectionString: TEST_POSTGRES_URL });
      await admin.connect();
      await admin.query(`DROP SCHEMA IF EXISTS ${quoteIdent(schema)} CASCADE`);
      await admin.end();
    },
  };
}

/** Runs the CLI without blocking this process (the peers it asks live here). */
function medmeshAsync(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: ENV, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('error', reject);
    child.on('exit', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

describe(`audit witnessing between sites over HTTP (${testBackend()})`, () => {
  const rnd = seededRandom(SEED);
  let dir: string;
  let own: Awaited<ReturnType<typeof ownDb>>;
  const sites = {} as Record<'A' | 'B' | 'C', TestServer>;
  const logs: Record<string, string[]> = { A: [], B: [], C: [] };
  const custodians = { alice: Sm2PrivateKey.generate(), bob: Sm2PrivateKey.generate() };
  const keyOf = (s: TestServer) => s.site.kms.signingKey()!.key;
  const logging = (id: string) =>
    createLogger({ level: 'error', destination: { write: (line: string) => void logs[id]!.push(line) } });
  /** `n` audited requests at a site (each FHIR search is one entry). */
  const touch = async (s: TestServer, n: number) => {
    for (let i = 0; i < n; i++) {
      const r = await fetch(`${s.fhir}/Patient?_count=1`, { headers: s.auth });
      assert.equal(r.status, 200);
      await r.arrayBuffer();
    }
  };
  const checkpoint = async (s: TestServer) => (await s.site.audit()!.checkpoint())!;
  const metrics = async (s: TestServer) => (await fetch(`${s.base}/metrics`)).text();

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'medmesh-witness-'));
    own = await ownDb(dir);
    sites.B = await startTestServer({
      siteId: 'B',
      db: own.db,
      custodians: Object.entries(custodians).map(([name, k]) => ({ name, publicKey: k.publicKey })),
      logging: logging('B'),
    });
    sites.C = await startTestServer({ siteId: 'C', logging: logging('C') });
    sites.A = await startTestServer({ siteId: 'A', logging: logging('A') });
    const all = Object.values(sites);
    for (const me of all) {
      me.site.peers.clear();
      for (const peer of all) {
        if (peer === me) continue;
        await me.site.identity.registerService({ id: peer.site.siteId, kind: 'site', publicKey: keyOf(peer).publicKey });
        me.site.peers.set(peer.site.siteId, peer.base);
      }
    }
    // The custodians' shares and keys, for `medmesh audit verify --unseal` at B.
    for (const [name, k] of Object.entries(custodians)) await writeFile(join(dir, `${name}.key.pem`), k.toPem());
    for (const w of await sites.B.site.kms.ownShares())
      await writeFile(join(dir, `share-${w.custodian}.json`), JSON.stringify(w));
  });
  after(async () => {
    for (const s of Object.values(sites)) await s.close().catch(() => undefined);
    await own.drop();
    await rm(dir, { recursive: true, force: true });
  });

  it('checks, cosigns and keeps every peer checkpoint, and hands the cosignature back', async () => {
    for (const s of Object.values(sites)) {
      await touch(s, 2 + Math.floor(rnd() * 6));
      await checkpoint(s);
    }
    for (const s of Object.values(sites)) {
      const states = await s.site.witness.round();
      assert.deepEqual(
        states.map((x) => [x.peer, x.state, x.lastError]),
        Object.keys(sites)
          .filter((id) => id !== s.site.siteId)
          .sort()
          .map((id) => [id, 'ok', undefined]),
        replay,
      );
    }
    for (const me of Object.values(sites)) {
      for (const peer of Object.values(sites)) {
        if (peer === me) continue;
        const held = (await latestHeld(me.db, peer.site.siteId))!;
        const { rows } = await peer.db.query<{ root: Uint8Array; statement: string }>(
          'SELECT root, statement FROM audit_checkpoint WHERE tree_size = $1',
          [held.treeSize],
        );
        assert.ok(Buffer.from(rows[0]!.root).equals(held.root), `${me.site.siteId} holds ${peer.site.siteId}'s own root`);
        // The peer keeps the cosignature under the cosigner's name, made with its registered key.
        const cos = await peer.db.query<{ signature: Uint8Array }>(
          'SELECT signature FROM audit_cosignature WHERE tree_size = $1 AND site = $2',
          [held.treeSize, me.site.siteId],
        );
        assert.ok(sm2Verify(keyOf(me).publicKey, Buffer.from(rows[0]!.statement), Buffer.from(cos.rows[0]!.signature)));
      }
    }
    // The next round checks the consistency proof from the held checkpoint to the new one.
    const before = (await latestHeld(sites.C.db, 'B'))!.treeSize;
    await touch(sites.B, 3);
    const next = await checkpoint(sites.B);
    const c = (await sites.C.site.witness.round()).find((x) => x.peer === 'B')!;
    assert.equal(c.state, 'ok', c.lastError);
    assert.ok(next.treeSize > before);
    assert.equal((await latestHeld(sites.C.db, 'B'))!.treeSize, next.treeSize);
    assert.equal(c.cosigned, 2);
  });

  it('finds newest entries and checkpoints cut at B: at B (asking the peers) and at the peers (alarm)', async () => {
    const b = sites.B;
    const kept = await checkpoint(b); // what the attacker leaves: a checkpoint consistent with what stays
    await touch(b, 40 + Math.floor(rnd() * 20));
    const signed = await checkpoint(b);
    // What each peer now holds of B (B's own timer may have signed a later checkpoint meanwhile).
    const held = new Map<string, number>();
    for (const peer of [sites.C, sites.A]) {
      const s = (await peer.site.witness.round()).find((x) => x.peer === 'B')!;
      assert.equal(s.state, 'ok', s.lastError);
      assert.ok(s.heldTreeSize! >= signed.treeSize);
      held.set(peer.site.siteId, s.heldTreeSize!);
    }
    // (The locks only make the cut clean against B's own appends and checkpoints running meanwhile.)
    await asAttacker(b.db, [
      ['SELECT pg_advisory_xact_lock($1), pg_advisory_xact_lock($2)', [APPEND_LOCK, APPEND_LOCK + 1]],
      ['DELETE FROM audit_cosignature WHERE tree_size > $1', [kept.treeSize]],
      ['DELETE FROM audit_checkpoint WHERE tree_size > $1', [kept.treeSize]],
      ['DELETE FROM audit_entry WHERE seq >= $1', [kept.treeSize]],
    ]);
    // The log alone still looks intact: every remaining entry and checkpoint checks out.
    const macKey = b.site.kms.deriveSecret('audit-entry-mac');
    const local = await verifyAuditLog(b.db, { macKey, signers: [keyOf(b).publicKey] });
    assert.equal(local.ok, true, JSON.stringify(local));
    // Verify at B asks its peers, and fails.
    const auditor = b.as(['auditor'], {}, { purpose: 'audit' });
    const verified = (await (await fetch(`${b.base}/audit/verify`, { headers: auditor })).json()) as {
      report: {
        ok: boolean;
        missing: Array<{ from: number; to: number }>;
        witnesses: Array<{ peer: string; consistent: boolean }>;
      };
    };
    assert.equal(verified.report.ok, false);
    assert.deepEqual(verified.report.witnesses.map((w) => [w.peer, w.consistent]).sort(), [
      ['A', false],
      ['C', false],
    ]);
    assert.ok(
      verified.report.missing.some((m) => m.to === Math.max(...held.values()) - 1),
      JSON.stringify(verified.report.missing),
    );
    // The peers' checks refuse B's shorter log and alarm: state, metric, log line, their own audit log.
    await checkpoint(b);
    for (const peer of [sites.C, sites.A]) {
      const id = peer.site.siteId;
      const s = (await peer.site.witness.round()).find((x) => x.peer === 'B')!;
      assert.equal(s.state, 'alarm');
      assert.equal(s.alarm?.kind, 'truncated', s.alarm?.message);
      assert.equal((await latestHeld(peer.db, 'B'))!.treeSize, held.get(id), 'the shorter checkpoint is not kept');
      assert.match(await metrics(peer), new RegExp(`medmesh_audit_witness_alarm\\{site="${id}",peer="B"\\} 1`));
      assert.match(
        await metrics(peer),
        new RegExp(`medmesh_audit_witness_alarms_total\\{site="${id}",peer="B",kind="truncated"\\} 1`),
      );
      assert.ok(
        logs[id]!.some((l) => /AUDIT ALARM for site B/.test(l) && /entries were deleted/.test(l)),
        logs[id]!.join('\n'),
      );
      const { rows } = await peer.db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM audit_entry
          WHERE entity = 'Site/B' AND convert_from(entry, 'UTF8') LIKE '%audit-peer-alarm%'`,
      );
      assert.equal(rows[0]!.n, 1);
      // The same finding next round is counted, not logged or recorded again.
      await peer.site.witness.round();
      assert.equal(logs[id]!.filter((l) => /AUDIT ALARM for site B/.test(l)).length, 1);
    }
  });

  it('medmesh audit verify at B asks its peers and exits 1; --offline alone would not see the cut', async () => {
    await sites.B.close(); // the CLI opens B's database itself
    const args = [
      'audit',
      'verify',
      '--region',
      EXAMPLE,
      '--site',
      'B',
      ...own.flags,
      '--unseal',
      `${join(dir, 'share-alice.json')}:${join(dir, 'alice.key.pem')}`,
      '--unseal',
      `${join(dir, 'share-bob.json')}:${join(dir, 'bob.key.pem')}`,
    ];
    const r = await medmeshAsync([...args, '--peer-url', `C=${sites.C.base}`, '--peer-url', `A=${sites.A.base}`]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /AUDIT LOG TAMPERED/);
    assert.match(
      r.stderr,
      /site C cosigned a checkpoint of \d+ entries that this log no longer reaches: its newest entries were cut/,
    );
    const offline = await medmeshAsync([...args, '--offline']);
    assert.equal(offline.status, 0, offline.stderr);
    assert.match(offline.stderr, /local audit log intact.*entries cut from the end would not show/);
  });

  it('keeps cosigning the peers that answer while one is down or never answers', async () => {
    // B is down (its port refuses); C's scheduled checks still cosign A.
    const c = sites.C;
    const heldA = (await latestHeld(c.db, 'A'))!.treeSize;
    await touch(sites.A, 2);
    const fresh = await checkpoint(sites.A);
    c.site.witness.start(200);
    try {
      const until = Date.now() + 20_000;
      while ((await latestHeld(c.db, 'A'))!.treeSize < fresh.treeSize) {
        assert.ok(Date.now() < until, `C did not cosign A while B was down ${replay}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    } finally {
      await c.site.witness.stop();
    }
    assert.ok(fresh.treeSize > heldA);
    const b = c.site.witness.states().find((x) => x.peer === 'B')!;
    assert.equal(b.state, 'alarm', 'a peer in alarm stays flagged while it cannot be checked');
    assert.match(b.lastError ?? '', /fetch failed|ECONNREFUSED/);
    // A peer that accepts connections and never answers: the round ends at the timeout, A is cosigned.
    const held: Socket[] = [];
    const hole: Server = createServer((socket) => void held.push(socket));
    await new Promise<void>((r) => hole.listen(0, '127.0.0.1', r));
    const port = (hole.address() as { port: number }).port;
    try {
      await touch(sites.A, 2);
      const later = await checkpoint(sites.A);
      const witness = new AuditWitness({
        db: c.db,
        siteId: 'C',
        peers: () =>
          new Map([
            ['A', sites.A.base],
            ['B', `http://127.0.0.1:${port}`],
          ]),
        key: () => keyOf(c),
        peerKey: (id) => c.site.identity.servicePublicKey(id),
        authorization: (peer, key) => `MedmeshService ${serviceAssertion({ serviceId: 'C', key, site: peer })}`,
        timeoutMs: 500,
      });
      const t0 = Date.now();
      const states = await witness.round();
      assert.ok(Date.now() - t0 < 5000, 'the silent peer holds the round only up to the timeout');
      assert.deepEqual(
        states.map((s) => [s.peer, s.state]),
        [
          ['A', 'ok'],
          ['B', 'unreachable'],
        ],
      );
      assert.match(states[1]!.lastError ?? '', /timeout|aborted/i);
      assert.equal((await latestHeld(c.db, 'A'))!.treeSize, later.treeSize);
    } finally {
      for (const socket of held) socket.destroy();
      await new Promise((r) => hole.close(r));
    }
  });

  it('keeps a cosignature only under the name of the site whose registered key made it', async () => {
    const a = sites.A;
    const cp = (await a.site.audit()!.latestCheckpoint())!;
    const post = (caller: string, key: Sm2PrivateKey, body: Record<string, unknown>) =>
      fetch(`${a.base}/audit/cosignatures`, {
        method: 'POST',
        headers: {
          authorization: `MedmeshService ${serviceAssertion({ serviceId: caller, key, site: 'A' })}`,
          'content-type': 'application/json',
        },
        body: JSON.stringify(body),
      });
    const other = Sm2PrivateKey.generate();
    const sig = (k: Sm2PrivateKey) => cosign(cp.statement, k).toString('base64');
    // C signs with a key of its choosing and names it: refused (it is not C's registered key).
    const forged = await post('C', keyOf(sites.C), {
      treeSize: cp.treeSize,
      signature: sig(other),
      publicKey: other.publicKey.toPem(),
    });
    assert.equal(forged.status, 400);
    assert.equal((await post('C', keyOf(sites.C), { treeSize: cp.treeSize, signature: sig(other) })).status, 400);
    assert.equal((await post('C', keyOf(sites.C), { treeSize: cp.treeSize, signature: sig(keyOf(sites.C)) })).status, 201);
    const { rows } = await a.db.query<{ public_key: string }>(
      'SELECT public_key FROM audit_cosignature WHERE tree_size = $1 AND site = $2',
      [cp.treeSize, 'C'],
    );
    assert.equal(Sm2PublicKey.fromPem(rows[0]!.public_key).hex, keyOf(sites.C).publicKey.hex);
  });
});
