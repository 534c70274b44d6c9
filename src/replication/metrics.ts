// What a site knows about its replication links, for /metrics (Prometheus text) and health:
// per peer, whether the link works, the lag (wall clock minus the HLC of the newest change
// applied; 0 when a pull found nothing new), and totals of applied, conflicting, refused
// and parked changes.
import { unpackHlc } from '../clock/index.ts';
import type { ApplyReport } from './apply-batch.ts';
import { divergentResources, type VerifyReport } from './verify.ts';

export interface LinkState {
  peer: string;
  up: boolean;
  lagMs: number;
  lastPullAt?: string;
  lastError?: string;
  applied: number;
  conflicts: number;
  rejectedClockSkew: number;
  rejectedResidency: number;
  parked: number;
  /** Changes the peer had ready after the last page (capped, see the feed). */
  backlog: number;
  /** The last consistency check against the peer. */
  verify?: { at: string; divergent: number; accuracy: number; resources: number };
}

export class ReplicationMetrics {
  readonly #links = new Map<string, LinkState>();

  #link(peer: string): LinkState {
    let l = this.#links.get(peer);
    if (!l)
      this.#links.set(
        peer,
        (l = {
          peer,
          up: false,
          lagMs: 0,
          applied: 0,
          conflicts: 0,
          rejectedClockSkew: 0,
          rejectedResidency: 0,
          parked: 0,
          backlog: 0,
        }),
      );
    return l;
  }

  /** After a pull: `newest` is the greatest HLC among the changes it carried. */
  pulled(peer: string, r: ApplyReport, newest: bigint | undefined, now = Date.now(), backlog = 0): void {
    const l = this.#link(peer);
    l.backlog = backlog;
    l.up = true;
    l.lastPullAt = new Date(now).toISOString();
    delete l.lastError;
    l.lagMs = newest === undefined ? 0 : Math.max(0, now - unpackHlc(newest).physicalMs);
    l.applied += r.applied;
    l.conflicts += r.conflicts.length;
    l.parked += r.parked.filter((p) => p.status === 'parked').length;
    for (const x of r.rejected) {
      if (x.reason.startsWith('clock skew')) l.rejectedClockSkew++;
      else l.rejectedResidency++;
    }
  }

  failed(peer: string, message: string): void {
    const l = this.#link(peer);
    l.up = false;
    l.lastError = message.slice(0, 300);
  }

  verified(report: VerifyReport, now = Date.now()): void {
    this.#link(report.peer).verify = {
      at: new Date(now).toISOString(),
      divergent: divergentResources(report),
      accuracy: report.accuracy,
      resources: report.resources,
    };
  }

  links(): LinkState[] {
    return [...this.#links.values()].sort((a, b) => a.peer.localeCompare(b.peer));
  }

  /** Prometheus text exposition (version 0.0.4). */
  prometheus(site: string): string {
    const lines: string[] = [];
    const metric = (name: string, type: 'gauge' | 'counter', help: string, value: (l: LinkState) => number) => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const l of this.links()) lines.push(`${name}{site="${site}",peer="${l.peer}"} ${value(l)}`);
    };
    metric('medmesh_replication_link_up', 'gauge', 'Whether the last pull from the peer succeeded.', (l) => (l.up ? 1 : 0));
    metric(
      'medmesh_replication_lag_ms',
      'gauge',
      'Wall clock minus the HLC of the newest change applied from the peer (0 when caught up).',
      (l) => l.lagMs,
    );
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
    const verified = this.links().filter((l) => l.verify);
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
    return `${lines.join('\n')}\n`;
  }
}
