// The coordination store contract on etcd: a real etcd server (Debian etcd-server) on 127.0.0.1
// with free ports and a temporary data directory, killed after. Also: etcd killed with SIGKILL
// under a store that leads, watches and campaigns: calls fail as `unavailable` within their
// deadline, the leadership is given up, nothing crashes, and all of it works again when etcd is back.
// Without etcd installed the file is skipped with a message, except under CI where it must run.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { Etcd3 } from 'etcd3';
import { LogCounts, silentLogger } from '../common/index.ts';
import { CoordinationError, type CoordinationStore, type WatchEvent } from './coordination.ts';
import { coordinationContract } from './coordination.contract.ts';
import { openEtcdStore } from './etcd-store.ts';
import { etcdBinary, eventually, spawnCampaigner, startEtcd, TcpLink, type EtcdServer } from './testing.ts';

const binary = etcdBinary();
const ci = process.env.CI === 'true' || process.env.CI === '1';

if (!binary && !ci) {
  describe('etcd coordination store', () => {
    it('needs an etcd server', (t) => {
      t.skip('SKIPPED: etcd is not installed (no /usr/bin/etcd, no etcd on PATH): apt-get install etcd-server to run it');
    });
  });
} else {
  let etcd: EtcdServer;
  let admin: Etcd3;
  const links: TcpLink[] = [];
  const figures: Record<string, number> = {};
  const log = silentLogger();

  before(async () => {
    if (!binary) throw new Error('etcd is not installed, and under CI the etcd tests must run (.ci/run installs etcd-server)');
    etcd = await startEtcd(binary);
    admin = new Etcd3({ hosts: etcd.endpoint });
  });

  after(async () => {
    console.log(`coordination figures (etcd): ${JSON.stringify(figures)}`);
    admin?.close();
    await Promise.all(links.map((l) => l.close()));
    await etcd?.stop();
  });

  const namespace = `test-${randomBytes(4).toString('hex')}/`;

  coordinationContract({
    label: 'etcd',
    ttlMs: 1000,
    open: () => Promise.resolve(openEtcdStore({ endpoints: [etcd.endpoint], namespace, log })),
    async openCuttable() {
      const link = await TcpLink.open(etcd.endpoint);
      links.push(link);
      return {
        store: openEtcdStore({ endpoints: [link.url], namespace, log, callTimeoutMs: 500 }),
        cut: () => link.cut(),
        restore: () => link.restore(),
      };
    },
    async revokeLeader(name) {
      const election = `${namespace}election/${name}/`;
      const leader = (await admin.getAll().prefix(election).sort('Create', 'Ascend').limit(1).exec()).kvs[0];
      assert.ok(leader, `no leader of ${name}`);
      await admin.leaseClient.leaseRevoke({ ID: leader.lease });
    },
    spawnCampaigner: (o) => spawnCampaigner({ backend: 'etcd', endpoints: [etcd.endpoint], namespace }, o),
    record: (name, value) => (figures[name] = value),
  });

  describe('etcd coordination store faults', () => {
    it('etcd killed under a leader, a watch and a campaign: calls fail as unavailable, no crash, all recovers', async () => {
      const counts = new LogCounts();
      const unhandled: unknown[] = [];
      const onUnhandled = (e: unknown) => unhandled.push(e);
      process.on('unhandledRejection', onUnhandled);
      const ns = `kill-${randomBytes(4).toString('hex')}/`;
      const open = (): CoordinationStore =>
        openEtcdStore({ endpoints: [etcd.endpoint], namespace: ns, log: silentLogger(counts), callTimeoutMs: 1000 });
      const [s, other] = [open(), open()];
      try {
        const seen: WatchEvent[] = [];
        const w = await s.watch('w/', (e) => seen.push(e));
        assert.ok((await s.put('w/before', '1')).ok);
        await eventually('the change before the kill', () => seen.length === 1);
        const leader = await s.campaign('boss', { candidate: 's', ttlMs: 1000 });
        const waiting = other.campaign('boss', { candidate: 'other', ttlMs: 1000 });
        let waitingDone = false;
        void waiting.finally(() => (waitingDone = true)).catch(() => undefined);

        const killedAt = performance.now();
        await etcd.kill('SIGKILL');
        const t0 = performance.now();
        await assert.rejects(s.get('w/before'), (e: unknown) => e instanceof CoordinationError && e.code === 'unavailable');
        figures['call-while-etcd-dead-failed-after-ms'] = Math.round(performance.now() - t0);
        await eventually('the leader to give up', () => leader.lost.aborted, 5000);
        figures['etcd-killed-to-leader-gave-up-ms'] = Math.round(performance.now() - killedAt);
        assert.equal(waitingDone, false, 'a campaign keeps trying while etcd is away');

        await etcd.restart();
        await eventually(
          'a put after the restart',
          async () => (await s.put('w/after', '2').catch(() => undefined))?.ok === true,
          30_000,
          200,
        );
        await eventually(
          'the watch to resume with the change after the restart',
          () => seen.some((e) => e.key === 'w/after'),
          30_000,
        );
        const next = await waiting;
        assert.ok(next.fence > leader.fence);
        assert.equal(next.candidate, 'other');
        figures['etcd-killed-to-new-leader-ms'] = Math.round(performance.now() - killedAt);
        await next.resign();
        await w.close();
        assert.deepEqual(unhandled, []);
        const problems = counts.entries().filter((e) => e.component === 'coordination');
        assert.ok(
          problems.some((e) => e.level === 'warn' && e.count > 0),
          'failures are logged and counted',
        );
      } finally {
        process.off('unhandledRejection', onUnhandled);
        await Promise.all([s.close(), other.close()]);
      }
    });

    it('refuses bad endpoints and a store closed under a waiting campaign rejects it as closed', async () => {
      assert.throws(() => openEtcdStore({ endpoints: [], log }), /at least one endpoint/);
      assert.throws(() => openEtcdStore({ endpoints: ['https://x:2379'], log }), /http:\/\/host:port/);
      const s = openEtcdStore({ endpoints: [etcd.endpoint], namespace, log });
      const t = openEtcdStore({ endpoints: [etcd.endpoint], namespace, log });
      const name = `closing-${randomBytes(4).toString('hex')}`;
      const l = await s.campaign(name, { candidate: 's', ttlMs: 30_000 });
      const waiting = t.campaign(name, { candidate: 't', ttlMs: 30_000 });
      await t.close();
      await assert.rejects(waiting, (e: unknown) => e instanceof CoordinationError && e.code === 'closed');
      await l.resign();
      assert.equal(await s.leader(name), undefined);
      await s.close();
    });
  });
}
