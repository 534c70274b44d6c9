// What the DIMSE provider counts for /metrics (Prometheus text): associations accepted and
// refused, aborts (by the peer, or by the site after an error), and the errors it contained —
// a peer's malformed PDUs, dropped or silent connections (network), and failures inside an
// operation that were answered with a failure status instead of ending the process.

/** network: the connection; operation: our code under an operation; storage: the blob store or KMS could not keep an instance. */
export type DimseErrorKind = 'network' | 'operation' | 'storage';

export class DimseMetrics {
  readonly #associations = { accepted: 0, rejected: 0 };
  readonly #aborts = { peer: 0, site: 0 };
  readonly #errors: Record<DimseErrorKind, number> = { network: 0, operation: 0, storage: 0 };
  #lastError: string | undefined;

  readonly #active: () => number;

  constructor(active: () => number) {
    this.#active = active;
  }

  association(outcome: 'accepted' | 'rejected'): void {
    this.#associations[outcome]++;
  }

  aborted(by: 'peer' | 'site'): void {
    this.#aborts[by]++;
  }

  error(kind: DimseErrorKind, e: unknown): void {
    this.#errors[kind]++;
    this.#lastError = `${kind}: ${e instanceof Error ? e.message : String(e)}`.slice(0, 300);
  }

  snapshot(): {
    active: number;
    associations: { accepted: number; rejected: number };
    aborts: { peer: number; site: number };
    errors: Record<DimseErrorKind, number>;
    lastError?: string;
  } {
    return {
      active: this.#active(),
      associations: { ...this.#associations },
      aborts: { ...this.#aborts },
      errors: { ...this.#errors },
      ...(this.#lastError ? { lastError: this.#lastError } : {}),
    };
  }

  prometheus(site: string): string {
    const s = this.snapshot();
    const l = (extra: string) => `{site="${site}"${extra ? `,${extra}` : ''}}`;
    return [
      '# HELP medmesh_dimse_active_associations DICOM associations open now.',
      '# TYPE medmesh_dimse_active_associations gauge',
      `medmesh_dimse_active_associations${l('')} ${s.active}`,
      '# HELP medmesh_dimse_associations_total DICOM associations accepted or refused.',
      '# TYPE medmesh_dimse_associations_total counter',
      ...Object.entries(s.associations).map(([k, v]) => `medmesh_dimse_associations_total${l(`outcome="${k}"`)} ${v}`),
      '# HELP medmesh_dimse_aborts_total DICOM associations aborted, by the peer or by this site after an error.',
      '# TYPE medmesh_dimse_aborts_total counter',
      ...Object.entries(s.aborts).map(([k, v]) => `medmesh_dimse_aborts_total${l(`by="${k}"`)} ${v}`),
      '# HELP medmesh_dimse_errors_total Errors contained on DICOM associations (answered with a failure status or an abort).',
      '# TYPE medmesh_dimse_errors_total counter',
      ...Object.entries(s.errors).map(([k, v]) => `medmesh_dimse_errors_total${l(`kind="${k}"`)} ${v}`),
      '',
    ].join('\n');
  }
}
