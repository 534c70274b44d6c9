// A byte relay between a TCP port on 127.0.0.1 and a Unix socket, either way round. Unix
// sockets cross network namespaces (they live in the filesystem), so a peer confined to a
// namespace whose only interface is loopback (Orthanc in tests) and this host's loopback can
// reach each other without anything listening beyond 127.0.0.1.
//   node relay.ts tcp:PORT=unix:/path ...   (listen on 127.0.0.1:PORT, connect to the socket)
//   node relay.ts unix:/path=tcp:PORT ...   (listen on the socket, connect to 127.0.0.1:PORT)
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { rmSync } from 'node:fs';

export type Endpoint = { tcp: number } | { unix: string };

export function parseEndpoint(spec: string): Endpoint {
  if (spec.startsWith('tcp:')) return { tcp: Number(spec.slice(4)) };
  if (spec.startsWith('unix:')) return { unix: spec.slice(5) };
  throw new Error(`endpoint ${spec}: expected tcp:PORT or unix:/path`);
}

/** Listens on `from` and pipes every connection to `to`; resolves once listening. */
export async function relay(from: Endpoint, to: Endpoint): Promise<Server> {
  const server = createServer((inbound: Socket) => {
    inbound.setNoDelay?.(true);
    const outbound = 'tcp' in to ? createConnection({ host: '127.0.0.1', port: to.tcp }) : createConnection({ path: to.unix });
    if ('tcp' in to) outbound.setNoDelay(true);
    inbound.pipe(outbound).pipe(inbound);
    const end = () => {
      inbound.destroy();
      outbound.destroy();
    };
    inbound.on('error', end).on('close', end);
    outbound.on('error', end).on('close', end);
  });
  if ('unix' in from) rmSync(from.unix, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    if ('tcp' in from) server.listen(from.tcp, '127.0.0.1', () => resolve());
    else server.listen(from.unix, () => resolve());
  });
  return server;
}

if (import.meta.main) {
  for (const pair of process.argv.slice(2)) {
    const [a, b] = pair.split('=');
    await relay(parseEndpoint(a!), parseEndpoint(b!));
  }
  process.stdout.write('relaying\n');
}
