// Writes docs/api-reference.md from the OpenAPI document of a site (an embedded one, in memory).
//   npm run docs:api
import { writeFile } from 'node:fs/promises';
import { apiReference, type OpenApiDocument } from '../src/http/api-reference.ts';
import { startTestServer } from '../src/site/testing.ts';

const site = await startTestServer({ siteId: 'B' });
try {
  const doc = (await (await fetch(`${site.base}/openapi.json`)).json()) as OpenApiDocument;
  const file = new URL('../docs/api-reference.md', import.meta.url);
  await writeFile(file, apiReference(doc));
  console.log(`wrote ${file.pathname}: ${Object.keys(doc.paths).length} paths`);
} finally {
  await site.close();
}
