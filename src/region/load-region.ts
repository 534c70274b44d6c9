// Reads and validates the region file. Every problem comes back as `path: rule`.
import { readFile } from 'node:fs/promises';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import type { z } from 'zod';
import { regionSchema } from './config-schema.ts';
import { checkRegion, type ConfigIssue } from './validate-region.ts';
import { Region } from './region.ts';

export type LoadResult = { ok: true; region: Region } | { ok: false; issues: ConfigIssue[] };

export function parseRegion(text: string, source = 'region'): LoadResult {
  let doc: unknown;
  try {
    doc = parseYaml(text, { prettyErrors: true });
  } catch (e) {
    const where = e instanceof YAMLParseError && e.linePos ? `${source}:${e.linePos[0].line}:${e.linePos[0].col}` : source;
    return {
      ok: false,
      issues: [{ path: where, message: `not valid YAML: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}` }],
    };
  }
  return validateRegion(doc);
}

export function validateRegion(doc: unknown): LoadResult {
  const parsed = regionSchema.safeParse(doc);
  if (!parsed.success) return { ok: false, issues: parsed.error.issues.flatMap(formatIssue) };
  const issues = checkRegion(parsed.data);
  if (issues.length > 0) return { ok: false, issues };
  return { ok: true, region: new Region(parsed.data) };
}

export async function loadRegionFile(file: string): Promise<LoadResult> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return {
      ok: false,
      issues: [{ path: file, message: code === 'ENOENT' ? 'file not found' : `cannot read (${code ?? String(e)})` }],
    };
  }
  return parseRegion(text, file);
}

export function formatIssues(issues: readonly ConfigIssue[]): string {
  return issues.map((i) => `${i.path}: ${i.message}`).join('\n');
}

export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out || '(root)';
}

function formatIssue(issue: z.core.$ZodIssue): ConfigIssue[] {
  const path = formatPath(issue.path);
  switch (issue.code) {
    case 'invalid_value':
      return [{ path, message: `must be one of ${issue.values.map(String).join(', ')}` }];
    case 'invalid_type':
      return [
        {
          path,
          message:
            issue.input === undefined ? 'is required' : `must be ${issue.expected === 'object' ? 'a mapping' : issue.expected}`,
        },
      ];
    case 'unrecognized_keys':
      return issue.keys.map((k) => ({ path: formatPath([...issue.path, k]), message: 'unknown field' }));
    case 'too_small':
      if (issue.origin === 'array')
        return [
          {
            path,
            message: issue.message.startsWith('must') ? issue.message : `must have at least ${String(issue.minimum)} item(s)`,
          },
        ];
      if (issue.origin === 'string') return [{ path, message: 'must not be empty' }];
      return [{ path, message: `must be >= ${String(issue.minimum)}` }];
    case 'too_big':
      return [{ path, message: `must be <= ${String(issue.maximum)}` }];
    default:
      return [{ path, message: issue.message }];
  }
}
