// The package ladder (docs/architecture.md), checked by `npm run lint`: no import cycles
// anywhere, and each folder of src/ imports only the folders below it. A folder not listed
// here may not import any other (add it to the ladder when it is created).
/** folder -> the folders it may import (besides itself). */
const ladder = {
  common: [],
  region: [],
  clock: [],
  'security/crypto': [],
  db: ['clock'],
  'security/kms': ['security/crypto', 'db', 'clock'],
  'security/identity': ['security/crypto', 'db', 'clock'],
  'security/audit': ['security/crypto', 'db', 'clock'],
  records: ['region', 'clock', 'db', 'security/crypto'],
  'security/access': ['region', 'clock', 'db', 'security/crypto', 'security/identity', 'records'],
  replication: ['region', 'clock', 'db', 'security/crypto', 'security/identity', 'records'],
  imaging: ['region', 'clock', 'db', 'security/crypto', 'security/kms', 'security/audit', 'records'],
  // The witness: votes and lease decisions (pure logic), its coordination store (on the Db or etcd),
  // the witness service and its client (service assertions from security/identity).
  failover: ['region', 'clock', 'db', 'security/crypto', 'security/identity'],
  http: [
    'region',
    'clock',
    'db',
    'security/crypto',
    'security/kms',
    'security/identity',
    'security/audit',
    'security/access',
    'records',
    'replication',
    'imaging',
    'failover',
  ],
};
// Each floor above http may use everything below it.
ladder.site = [...ladder.http, 'http'];
ladder.cli = [...ladder.site, 'site'];

/** Entries other folders may use besides index.ts: sm3.ts alone keeps worker threads quick to start. */
const lightEntries = {
  'security/crypto': ['sm3'],
  // Synthetic patients for the demo, `medmesh seed` and benchmarks: kept out of the records API.
  records: ['synthetic'],
};

const esc = (s) => s.replace(/[/]/g, '\\/');
// The bottom of the ladder: every folder may use it.
for (const folder of Object.keys(ladder)) if (folder !== 'common') ladder[folder].unshift('common');
const folders = Object.keys(ladder).sort((a, b) => b.length - a.length); // security/x before security

module.exports = {
  forbidden: [
    {
      name: 'no-cycles',
      severity: 'error',
      comment: 'An import cycle ties modules together: split the shared part out.',
      from: {},
      to: { circular: true },
    },
    ...folders.map((folder) => ({
      name: `ladder-${folder.replace('/', '-')}`,
      severity: 'error',
      comment:
        `src/${folder} may import only ${ladder[folder].length ? ladder[folder].join(', ') : 'nothing else in src'} ` +
        '(the ladder in docs/architecture.md).',
      // Tests may assemble what they test from above (a route test opens a whole site).
      from: { path: `^src/${esc(folder)}/`, pathNot: '\\.test\\.ts$' },
      to: {
        path: '^src/',
        pathNot: `^src/(${[folder, ...ladder[folder]].map(esc).join('|')})/`,
      },
    })),
    ...folders.map((folder) => ({
      name: `public-face-${folder.replace('/', '-')}`,
      severity: 'error',
      comment: `Other folders use src/${folder} through its index.ts (tests and test helpers may also use its testing.ts).`,
      from: { path: '^src/', pathNot: [`^src/${esc(folder)}/`, '\\.test\\.ts$', '/testing[a-z-]*\\.ts$', '/test-db\\.ts$'] },
      to: {
        path: `^src/${esc(folder)}/[^/]+$`,
        pathNot:
          `^src/${esc(folder)}/` + `(${['index', 'testing[a-z-]*', 'test-db', ...(lightEntries[folder] ?? [])].join('|')})\\.ts$`,
      },
    })),
    {
      name: 'no-unknown-folder',
      severity: 'error',
      comment: 'Every folder under src/ has a place on the ladder (.dependency-cruiser.cjs).',
      from: { path: '^src/', pathNot: `^src/(${folders.map(esc).join('|')})/` },
      to: { path: '^src/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '(^|/)node_modules/' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { extensions: ['.ts', '.js'] },
  },
};
