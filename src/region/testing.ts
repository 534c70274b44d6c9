// Test helper: the shipped example region.
import { readFile } from 'node:fs/promises';
import { formatIssues, parseRegion } from './load-region.ts';
import type { Region } from './region.ts';

export async function exampleRegion(): Promise<Region> {
  const r = parseRegion(await readFile(new URL('../../region.example.yaml', import.meta.url), 'utf8'));
  if (!r.ok) throw new Error(formatIssues(r.issues));
  return r.region;
}
