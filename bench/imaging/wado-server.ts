// The DICOMweb routes alone on 127.0.0.1 for the retrieval benchmark, every caller taken for
// another site (no login: the bench measures retrieval; access and audit hooks are measured
// by bench/access).
import Fastify from 'fastify';
import { dicomwebRoutes } from '../../src/http/dicomweb-routes.ts';
import type { ImagingStore } from '../../src/imaging/index.ts';

export async function buildWadoServer(store: ImagingStore): Promise<{ url: string; close(): Promise<void> }> {
  const app = Fastify();
  app.decorateRequest('identity', null as never);
  app.addHook('onRequest', (req, _reply, done) => {
    req.identity = { kind: 'service', serviceId: 'bench', serviceKind: 'site' };
    done();
  });
  await app.register(dicomwebRoutes, { prefix: '/dicomweb', imaging: store });
  const url = await app.listen({ port: 0, host: '127.0.0.1' });
  return { url, close: () => app.close() };
}
