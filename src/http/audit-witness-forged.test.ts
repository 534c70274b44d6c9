// A peer that presents forged or inconsistent audit checkpoints, over real HTTP to a real site
// C: each is refused (not kept, not cosigned) and alarmed; an honest checkpoint that extends
// what C holds is accepted again and clears the alarm.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { testBackend } from '../db/test-db.ts';
import { seededRandom } from '../records/synthetic.ts';
import { checkpointStatement, consistencyProof, latestHeld, leafHash, rootOf } from '../security/audit/index.ts';
import { sm2Sign, sm2Verify, Sm2PrivateKey } from '../security/crypto/index.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

const SEED = Number(process.env.MEDMESH_TEST_SEED ?? Date.now() % 1_000_000_000);
const replay = `(seed ${SEED}; MEDMESH_TEST_SEED=${SEED} replays it)`;

/** Site A as an attacker runs it: whatever log and checkpoint the test sets, signed with any key. */
class FakePeer {
  leaves: Buffer[] = [];
  size = 0;
  key = Sm2PrivateKey.generate();
  /** Changes the checkpoint after signing (fields no longer match the statement). */
  tamper: ((c: Record<string, unknown>) => void) | undefined;
  refuseProofs = false;
  cosignatures: Array<{ treeSize: number; signature: string }> = [];
  authorizations: string[] = [];
  readonly server: Server;
  base = '';

  constructor() {
    this.server = createServer((req, res) => {
      this.authorizations.push(String(req.headers.authorization ?? ''));
      const url = new URL(req.url ?? '/', 'http://x');
      const send = (status: number, body: unknown) =>
        res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
      if (url.pathname === '/audit/checkpoint') {
        const root = rootOf(this.leaves, this.size);
        const issuedAt = new Date().toISOString();
        const statement = checkpointStatement({ site: 'A', treeSize: this.size, root, issuedAt });
        const c: Record<string, unknown> = {
          treeSize: this.size,
          root: root.toString('hex'),
          issuedAt,
          statement,
          signature: sm2Sign(this.key, Buffer.from(statement)).toString('base64'),
          signerSite: 'A',
        };
        this.tamper?.(c);
        return send(200, c);
      }
      if (url.pathname === '/audit/proof/consistency') {
        if (this.refuseProofs) return send(404, { code: 'not-found', message: 'no proof today' });
        const proof = consistencyProof(this.leaves, Number(url.searchParams.get('from')), Number(url.searchParams.get('to')));
        return send(200, { proof: proof.map((p) => p.toString('hex')) });
      }
      if (url.pathname === '/audit/cosignatures') {
        let body = '';
        req.on('data', (d: Buffer) => (body += d.toString()));
        req.on('end', () => {
          this.cosignatures.push(JSON.parse(body) as { treeSize: number; signature: string });
          send(201, {});
        });
        return;
      }
      send(404, {});
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.base = `http://127.0.0.1:${(this.server.address() as { port: number }).port}`;
  }
}

describe(`a peer presenting forged or inconsistent audit checkpoints (${testBackend()})`, () => {
  const rnd = seededRandom(SEED);
  const entry = () => leafHash(Buffer.from(`entry ${Math.floor(rnd() * 1e12)}`));
  let c: TestServer;
  let fake: FakePeer;
  const check = () => c.site.witness.checkPeer('A');
  const alarms = async () =>
    (
      await c.db.query<{ detail: string }>(
        "SELECT convert_from(entry, 'UTF8')::jsonb ->> 'detail' AS detail FROM audit_entry WHERE entity = 'Site/A' ORDER BY seq",
      )
    ).rows.map((r) => r.detail);

  before(async () => {
    fake = new FakePeer();
    await fake.listen();
    c = await startTestServer({ siteId: 'C' });
    c.site.peers.clear();
    c.site.peers.set('A', fake.base);
    await c.site.identity.registerService({ id: 'A', kind: 'site', publicKey: fake.key.publicKey });
    fake.leaves = Array.from({ length: 30 }, entry);
  });
  after(async () => {
    await c.close();
    await new Promise((r) => fake.server.close(r));
  });

  it('refuses a checkpoint not signed with the peer registered key, or whose fields differ from what is signed', async () => {
    const registered = fake.key;
    fake.size = 8;
    fake.key = Sm2PrivateKey.generate();
    let s = await check();
    assert.equal(s.state, 'alarm');
    assert.equal(s.alarm?.kind, 'forged');
    assert.match(s.alarm.message, /not by site A's registered key/);
    fake.key = registered;
    fake.tamper = (cp) => void (cp.root = rootOf(fake.leaves, 9).toString('hex'));
    s = await check();
    assert.equal(s.alarm?.kind, 'forged');
    assert.match(s.alarm.message, /does not say what the checkpoint fields say/);
    fake.tamper = undefined;
    assert.equal(await latestHeld(c.db, 'A'), undefined, 'nothing refused is kept');
    assert.deepEqual(fake.cosignatures, [], 'nothing refused is cosigned');
    assert.ok(
      fake.authorizations.every((a) => a.startsWith('MedmeshService ')),
      'C calls with its service credentials',
    );
    assert.equal((await alarms()).filter((d) => d.startsWith('forged')).length, 2);
  });

  it('keeps and cosigns an honest first checkpoint; refuses a fork, a second root for one size, a missing proof', async () => {
    fake.size = 8 + Math.floor(rnd() * 8);
    const first = fake.size;
    let s = await check();
    assert.equal(s.state, 'ok', `${s.lastError ?? ''} ${replay}`);
    assert.equal((await latestHeld(c.db, 'A'))!.treeSize, first);
    const handed = fake.cosignatures.at(-1)!;
    const statement = (await latestHeld(c.db, 'A'))!.statement;
    assert.equal(handed.treeSize, first);
    assert.ok(sm2Verify(c.site.kms.signingKey()!.key.publicKey, Buffer.from(statement), Buffer.from(handed.signature, 'base64')));
    const honest = fake.leaves;
    // A fork: an entry inside what C holds is replaced, the log grows, and the proof is honest for the new log.
    fake.leaves = honest.map((l, i) => (i === first - 3 ? entry() : l));
    fake.size = first + 4;
    s = await check();
    assert.deepEqual([s.state, s.alarm?.kind], ['alarm', 'inconsistent']);
    assert.match(s.alarm!.message, /does not extend the \d+ held here/);
    // The same size with another root.
    fake.size = first;
    s = await check();
    assert.equal(s.alarm?.kind, 'inconsistent');
    assert.match(s.alarm.message, /signed two different logs/);
    // A longer honest log whose peer will not prove it.
    fake.leaves = honest;
    fake.size = first + 5;
    fake.refuseProofs = true;
    s = await check();
    assert.equal(s.alarm?.kind, 'inconsistent');
    assert.match(s.alarm.message, /cannot prove/);
    assert.equal((await latestHeld(c.db, 'A'))!.treeSize, first, 'none of them was kept');
    assert.equal(fake.cosignatures.length, 1, 'none of them was cosigned');
    const metrics = await (await fetch(`${c.base}/metrics`)).text();
    assert.match(metrics, /medmesh_audit_witness_alarm\{site="C",peer="A"\} 1/);
    assert.match(metrics, /medmesh_audit_witness_alarms_total\{site="C",peer="A",kind="inconsistent"\} 3/);
    // The honest log, proved: accepted, and the alarm clears (the counts stay).
    fake.refuseProofs = false;
    s = await check();
    assert.equal(s.state, 'ok', s.lastError);
    assert.equal((await latestHeld(c.db, 'A'))!.treeSize, first + 5);
    assert.match(await (await fetch(`${c.base}/metrics`)).text(), /medmesh_audit_witness_alarm\{site="C",peer="A"\} 0/);
    const status = (await (
      await fetch(`${c.base}/audit/witness`, { headers: c.as(['auditor'], {}, { purpose: 'audit' }) })
    ).json()) as {
      peers: Array<{ peer: string; state: string; heldTreeSize: number }>;
    };
    assert.deepEqual(
      status.peers.map((p) => [p.peer, p.state, p.heldTreeSize]),
      [['A', 'ok', first + 5]],
    );
  });
});
