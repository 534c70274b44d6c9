// What a site knows about its replication links, for /metrics (Prometheus text) and health.
// Per peer: the link's state on this API node, the lag and totals of applied, conflicting,
// refused and parked changes. The lag is wall clock minus the HLC of the newest change
// applied (0 when a pull found nothing new) while the link works; while it does not, it
// grows with the time since the peer was last heard from (DESIGN.md §5), so an outage shows
// as a rising lag rather than the last good figure. Figures are computed when read.
import { unpackHlc } from '../clock/index.ts';
import type { ApplyReport } from './apply-batch.ts';
import { divergentResources, type VerifyReport } from './verify.ts';

/**
 * idle: this API node does not pull the peer (another node of the site holds the lease, or no
 * puller runs here); connecting: the first pull is on its way; up: the last pull succeeded;
 * down: the last pull failed (peer unreachable, failing, or its page could not be applied).
 */
export type LinkStatus = 'idle' | 'connecting' | 'up' | 'down';

export interface LinkState {
  peer: string;
  state: LinkStatus;
  up: boolean;
  lagMs: number;
  lastPullAt?: string;
  /** When the peer last answered a pull with a page that was applied. */
  lastContactAt?: string;
  /** Since when the link is down (its first failure after the last success). */
  downSince?: string;
  lastError?: string;
  applied: number;
  conflicts: number;
  rejectedClockSkew: number;
  rejectedResidency: number;
  parked: number;
  /** Changes the peer had ready after the last page (capped, see the feed). */
  backlog: number;
  /** Failed pulls since this node started. */
  failures: number;
  /** The last consistency check against the peer. */
  verify?: { at: string; divergent: number; accuracy: number; resources: number };
  /** The last scheduled consistency check that could not run, and why. */
  verifyError?: { at: string; message: string };
}

interface Link {
  peer: string;
  state: LinkStatus;
  /** The puller whose reports this node shows (tests run several in one process). */
  by?: string;
  /** Lag measured at the last contact. */
  lagAtContact: number;
  lastPullMs?: number;
  lastContactMs?: number;
  /** When this node began pulling (lag reference for a peer never heard from). */
  connectingMs?: number;
  downSinceMs?: number;
  lastError?: string;
  applied: number;
  conflicts: number;
  rejectedClockSkew: number;
  rejectedResidency: number;
  parked: number;
  backlog: number;
  failures: number;
  verify?: LinkState['verify'];
  verifyError?: LinkState['verifyError'];
}

export interface PulledReport {
  report: ApplyReport;
  /** The greatest HLC among the changes the page carried. */
  newest: bigint | undefined;
  /** Changes the peer said were ready after the page. */
  backlog?: number;
  now?: number;
  /** The puller reporting (its lease holder id). */
  by?: string;
}

export class ReplicationMetrics {
  readonly #links = new Map<string, Link>();
  /** Own changes this node parked (or withheld behind a parked one) because they could not be sent. */
  #feedParked = 0;

  /** The feed parked `n` of this site's own changes (sender-side dead letters). */
  feedParked(n: number): void {
    this.#feedParked += n;
  }

  #link(peer: string): Link {
    let l = this.#links.get(peer);
    if (!l)
      this.#links.set(
        peer,
        (l = {
          peer,
          state: 'idle',
          lagAtContact: 0,
          applied: 0,
          conflicts: 0,
          rejectedClockSkew: 0,
          rejectedResidency: 0,
          parked: 0,
          backlog: 0,
          failures: 0,
        }),
      );
    return l;
  }

  /** A puller took the link on this node (started, or won the lease from another node). */
  connecting(peer: string, o: { by?: string; now?: number } = {}): void {
    const l = this.#link(peer);
    if (l.state !== 'idle' && l.by !== undefined && l.by !== o.by) return;
    l.by = o.by;
    if (l.state === 'idle') {
      l.state = 'connecting';
      l.connectingMs = o.now ?? Date.now();
    }
  }

  /** Another API node of this site pulls the peer (or this node stopped pulling it). */
  idle(peer: string, o: { by?: string } = {}): void {
    const l = this.#link(peer);
    if (l.by !== undefined && l.by !== o.by) return; // another puller of this process reports it
    l.state = 'idle';
    delete l.by;
    delete l.downSinceMs;
  }

  /** After a pull whose page was applied. */
  pulled(peer: string, p: PulledReport): void {
    const now = p.now ?? Date.now();
    const l = this.#link(peer);
    l.by = p.by;
    l.backlog = p.backlog ?? 0;
    l.state = 'up';
    l.lastPullMs = now;
    l.lastContactMs = now;
    delete l.downSinceMs;
    delete l.lastError;
    l.lagAtContact = p.newest === undefined ? 0 : Math.max(0, now - unpackHlc(p.newest).physicalMs);
    const r = p.report;
    l.applied += r.applied;
    l.conflicts += r.conflicts.length;
    l.parked += r.parked.filter((x) => x.status === 'parked').length;
    for (const x of r.rejected) {
      if (x.reason.startsWith('clock skew')) l.rejectedClockSkew++;
      else l.rejectedResidency++;
    }
  }

  /** A pull failed: the link is down from now (or since its first failure), with the reason. */
  failed(peer: string, message: string, o: { by?: string; now?: number } = {}): void {
    const now = o.now ?? Date.now();
    const l = this.#link(peer);
    l.by = o.by;
    if (l.state !== 'down') l.downSinceMs = now;
    l.state = 'down';
    l.lastPullMs = now;
    l.failures++;
    l.lastError = message.slice(0, 300);
  }

  verified(report: VerifyReport, now = Date.now()): void {
    const l = this.#link(report.peer);
    l.verify = {
      at: new Date(now).toISOString(),
      divergent: divergentResources(report),
      accuracy: report.accuracy,
      resources: report.resources,
    };
    delete l.verifyError;
  }

  /** A scheduled consistency check against the peer could not run. */
  verifyFailed(peer: string, message: string, now = Date.now()): void {
    this.#link(peer).verifyError = { at: new Date(now).toISOString(), message: message.slice(0, 300) };
  }

  links(now = Date.now()): LinkState[] {
    const iso = (ms: number | undefined) => (ms === undefined ? undefined : new Date(ms).toISOString());
    return [...this.#links.values()]
      .sort((a, b) => a.peer.localeCompare(b.peer))
      .map((l) => {
        // Down: the lag at the last contact plus the time since (since this node began trying if never).
        const since = l.lastContactMs ?? l.connectingMs ?? now;
        const lagMs = l.state === 'down' ? l.lagAtContact + Math.max(0, now - since) : l.state === 'up' ? l.lagAtContact : 0;
        const s: LinkState = {
          peer: l.peer,
          state: l.state,
          up: l.state === 'up',
          lagMs,
          applied: l.applied,
          conflicts: l.conflicts,
          rejectedClockSkew: l.rejectedClockSkew,
          rejectedResidency: l.rejectedResidency,
          parked: l.parked,
          backlog: l.backlog,
          failures: l.failures,
        };
        const set = <K extends keyof LinkState>(k: K, v: LinkState[K] | undefined) => {
          if (v !== undefined) s[k] = v;
        };
        set('lastPullAt', iso(l.lastPullMs));
        set('lastContactAt', iso(l.lastContactMs));
        set('downSince', iso(l.downSinceMs));
        set('lastError', l.lastError);
        set('verify', l.verify);
        set('verifyError', l.verifyError);
        return s;
      });
  }

  /** Links this node pulls that are down: what health reports as degraded. */
  degraded(now = Date.now()): LinkState[] {
    return this.links(now).filter((l) => l.state === 'down');
  }

  /** Prometheus text exposition (version 0.0.4). */
  prometheus(site: string, now = Date.now()): string {
    const lines: string[] = [];
    const all = this.links(now);
    // An idle link is pulled by another API node of the site: its figures are that node's.
    const pulled = all.filter((l) => l.state !== 'idle');
    const metric = (
      name: string,
      type: 'gauge' | 'counter',
      help: string,
      value: (l: LinkState) => number,
      links: LinkState[] = pulled,
    ) => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const l of links) lines.push(`${name}{site="${site}",peer="${l.peer}"} ${value(l)}`);
    };
    metric(
      'medmesh_replication_link_pulling',
      'gauge',
      'Whether this API node pulls the peer (0: another node of the site holds the lease).',
      (l) => (l.state === 'idle' ? 0 : 1),
      all,
    );
    metric('medmesh_replication_link_up', 'gauge', 'Whether the last pull from the peer succeeded.', (l) => (l.up ? 1 : 0));
    metric('medmesh_replication_link_down_seconds', 'gauge', 'How long the link has been down (0 while it works).', (l) =>
      l.downSince ? Math.max(0, Math.round((now - Date.parse(l.downSince)) / 1000)) : 0,
    );
    metric(
      'medmesh_replication_lag_ms',
      'gauge',
      'Wall clock minus the HLC of the newest change applied from the peer (0 when caught up); ' +
        'while the link is down it grows with the time since the peer last answered.',
      (l) => l.lagMs,
    );
    metric(
      'medmesh_replication_last_contact_seconds',
      'gauge',
      'When the peer last answered a pull that was applied (Unix time; 0: never since this node started).',
      (l) => (l.lastContactAt ? Math.floor(Date.parse(l.lastContactAt) / 1000) : 0),
    );
    metric('medmesh_replication_pull_failures_total', 'counter', 'Pulls from the peer that failed.', (l) => l.failures);
    metric('medmesh_replication_applied_total', 'counter', 'Changes applied from the peer.', (l) => l.applied);
    metric('medmesh_replication_conflicts_total', 'counter', 'Concurrent versions detected while applying.', (l) => l.conflicts);
    metric(
      'medmesh_replication_clock_skew_rejections_total',
      'counter',
      'Changes refused because their clock was too far ahead.',
      (l) => l.rejectedClockSkew,
    );
    metric(
      'medmesh_replication_residency_rejections_total',
      'counter',
      'Changes refused because this site may not hold them.',
      (l) => l.rejectedResidency,
    );
    metric('medmesh_replication_parked_total', 'counter', 'Changes parked in the dead-letter table.', (l) => l.parked);
    metric(
      'medmesh_replication_backlog',
      'gauge',
      'Changes the peer had ready after the last page (capped at 100000, recounted at most every 5 s).',
      (l) => l.backlog,
    );
    const verified = all.filter((l) => l.verify);
    const vmetric = (name: string, help: string, value: (v: NonNullable<LinkState['verify']>) => number) => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} gauge`);
      for (const l of verified) lines.push(`${name}{site="${site}",peer="${l.peer}"} ${value(l.verify!)}`);
    };
    vmetric(
      'medmesh_replication_verify_divergent_resources',
      'Resources that differ from the peer at the last consistency check.',
      (v) => v.divergent,
    );
    vmetric(
      'medmesh_replication_verify_accuracy',
      'Share of resources identical at both sites at the last consistency check (0-1).',
      (v) => v.accuracy,
    );
    vmetric(
      'medmesh_replication_verify_last_run_seconds',
      'When the last consistency check against the peer ran (Unix time).',
      (v) => Math.floor(Date.parse(v.at) / 1000),
    );
    metric(
      'medmesh_replication_verify_failing',
      'gauge',
      'Whether the last scheduled consistency check against the peer could not run.',
      (l) => (l.verifyError ? 1 : 0),
      all.filter((l) => l.verify || l.verifyError),
    );
    lines.push(
      '# HELP medmesh_replication_feed_parked_total ' +
        'Own changes this node parked because they could not be sent (or withheld behind one).',
      '# TYPE medmesh_replication_feed_parked_total counter',
      `medmesh_replication_feed_parked_total{site="${site}"} ${this.#feedParked}`,
    );
    return `${lines.join('\n')}\n`;
  }
}
