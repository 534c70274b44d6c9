// The API reference page (docs/api-reference.md), written from a site's OpenAPI document: the
// route schemas are the single source, so the page cannot drift from what the server checks.
// `npm run docs:api` rewrites it; a test fails when the committed page is not what it would write.

interface Schema {
  type?: string | string[];
  enum?: unknown[];
  format?: string;
  pattern?: string;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  items?: Schema;
  properties?: Record<string, Schema>;
  required?: string[];
  anyOf?: Schema[];
  description?: string;
}

interface Operation {
  summary?: string;
  tags?: string[];
  parameters?: Array<{ in: string; name: string; required?: boolean; schema?: Schema }>;
  requestBody?: { content?: Record<string, { schema?: Schema }> };
}

export interface OpenApiDocument {
  info: { title: string; version: string; description?: string };
  paths: Record<string, Record<string, Operation>>;
}

const METHODS = ['get', 'put', 'post', 'patch', 'delete', 'head'];

/** A schema in a few words: its type and bounds. */
function describe(s: Schema | undefined): string {
  if (!s) return 'any';
  if (s.anyOf) return s.anyOf.map(describe).join(' or ');
  if (s.enum) return s.enum.map((e) => JSON.stringify(e)).join(' \\| ');
  const type = Array.isArray(s.type) ? s.type.join('/') : (s.type ?? 'any');
  if (type === 'array') return `array of ${describe(s.items)}`;
  const bounds = [
    s.format,
    s.pattern ? `pattern \`${s.pattern.replaceAll('|', '\\|')}\`` : undefined,
    s.minLength !== undefined || s.maxLength !== undefined ? `length ${s.minLength ?? 0}..${s.maxLength ?? ''}` : undefined,
    range(s),
  ].filter((b): b is string => b !== undefined);
  return bounds.length ? `${type} (${bounds.join(', ')})` : type;
}

/** A number's bounds, leaving out JavaScript's safe-integer limits (no bound a person set). */
function range(s: Schema): string | undefined {
  const max = s.maximum !== undefined && s.maximum < Number.MAX_SAFE_INTEGER ? s.maximum : undefined;
  const min = s.minimum !== undefined && s.minimum > Number.MIN_SAFE_INTEGER ? s.minimum : undefined;
  if (s.exclusiveMinimum !== undefined)
    return max === undefined ? `> ${s.exclusiveMinimum}` : `> ${s.exclusiveMinimum}, <= ${max}`;
  if (min === undefined && max === undefined) return undefined;
  return `${min ?? ''}..${max ?? ''}`;
}

export function apiReference(doc: OpenApiDocument): string {
  const byTag = new Map<string, string[]>();
  for (const path of Object.keys(doc.paths).sort()) {
    for (const method of METHODS) {
      const op = doc.paths[path]![method];
      if (!op) continue;
      const lines = [`### \`${method.toUpperCase()} ${path}\``, '', op.summary ?? '(no summary)', ''];
      const params = (op.parameters ?? []).filter((p) => p.in !== 'header' || p.required);
      if (params.length) {
        lines.push('| parameter | in | required | value |', '| --- | --- | --- | --- |');
        for (const p of params) lines.push(`| \`${p.name}\` | ${p.in} | ${p.required ? 'yes' : 'no'} | ${describe(p.schema)} |`);
        lines.push('');
      }
      const body = Object.entries(op.requestBody?.content ?? {})[0];
      if (body) {
        const props = body[1].schema?.properties;
        if (props) {
          const required = new Set(body[1].schema?.required ?? []);
          lines.push(`Body (\`${body[0]}\`):`, '', '| field | required | value |', '| --- | --- | --- |');
          for (const [name, s] of Object.entries(props))
            lines.push(`| \`${name}\` | ${required.has(name) ? 'yes' : 'no'} | ${describe(s)} |`);
        } else lines.push(`Body (\`${body[0]}\`): ${describe(body[1].schema)}`);
        lines.push('');
      }
      const tag = op.tags?.[0] ?? 'other';
      byTag.set(tag, [...(byTag.get(tag) ?? []), ...lines]);
    }
  }
  const out = [
    '# API reference 接口参考',
    '',
    `Generated from the OpenAPI document of a site (\`GET /openapi.json\`, ${doc.info.title} ${doc.info.version}) by`,
    '`npm run docs:api`; do not edit by hand. 本页由站点的 OpenAPI 文档生成，请勿手工编辑。',
    '',
    'Errors: an OperationOutcome under `/fhir`, `{"code", "message"}` elsewhere (a refused request part is named:',
    '`body.reason: ...`). 错误：`/fhir` 下为 OperationOutcome，其他接口为 `{"code", "message"}`。',
    '',
  ];
  for (const tag of [...byTag.keys()].sort()) out.push(`## ${tag}`, '', ...byTag.get(tag)!);
  return `${out.join('\n').trimEnd()}\n`;
}
