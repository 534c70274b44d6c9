// The CapabilityStatement is generated from the same tables the server runs on, so it
// states exactly what is supported.
import type { CapabilityStatement, CapabilityStatementRestResource } from '@medplum/fhirtypes';
import { SUPPORTED_TYPES, type SearchParamTable } from '../records/index.ts';

export function buildCapabilityStatement(opts: {
  searchParams: SearchParamTable;
  siteId: string;
  regionId: string;
  baseUrl: string;
  version: string;
}): CapabilityStatement {
  const resource: CapabilityStatementRestResource[] = SUPPORTED_TYPES.map((type) => ({
    type,
    interaction: ['read', 'vread', 'update', 'delete', 'history-instance', 'history-type', 'create', 'search-type'].map(
      (code) => ({ code: code as 'read' }),
    ),
    versioning: 'versioned-update',
    readHistory: true,
    updateCreate: true,
    conditionalCreate: true,
    conditionalRead: 'not-supported',
    conditionalUpdate: false,
    conditionalDelete: 'not-supported',
    searchParam: [
      { name: '_id', type: 'token' },
      { name: '_lastUpdated', type: 'date' },
      ...[...(opts.searchParams.get(type)?.values() ?? [])].map((p) => ({
        name: p.code,
        type: p.type,
        ...(p.documentation ? { documentation: p.documentation } : {}),
      })),
    ],
  }));
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    fhirVersion: '4.0.1',
    format: ['json', 'application/fhir+json'],
    software: { name: 'medmesh', version: opts.version },
    implementation: { description: `medmesh site ${opts.siteId} of region ${opts.regionId}`, url: opts.baseUrl },
    rest: [
      {
        mode: 'server',
        documentation:
          'Search: _id, _lastUpdated, _count (max 1000), _offset, ' +
          '_sort (_id, _lastUpdated, date and string parameters), _summary=count, _total. ' +
          'String modifiers :exact, :contains; token :not and system|code; reference Type modifier; ' +
          'date prefixes eq ne gt lt ge le sa eb ap. ' +
          'Not supported: _include, _revinclude, chained parameters, _elements, conditional update/delete.',
        resource,
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
      },
    ],
  };
}
