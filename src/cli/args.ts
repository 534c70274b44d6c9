// Argument parsing shared by every verb: strict (a wrong flag is an error that names it),
// with generated --help.
import { parseArgs, type ParseArgsConfig } from 'node:util';

export interface FlagSpec {
  type: 'string' | 'boolean';
  /** May be given several times (string flags): the value is an array. */
  multiple?: boolean;
  short?: string;
  help: string;
  default?: string | boolean;
  placeholder?: string;
}

export interface VerbSpec<F extends Record<string, FlagSpec>> {
  name: string;
  summary: string;
  usage: string;
  flags: F;
  examples?: string[];
}

export type Flags<F extends Record<string, FlagSpec>> = {
  [K in keyof F]: F[K]['type'] extends 'boolean'
    ? boolean
    : F[K] extends { multiple: true }
      ? string[]
      : F[K] extends { default: string }
        ? string
        : string | undefined;
};

export class UsageError extends Error {}

export function helpText(spec: VerbSpec<Record<string, FlagSpec>>): string {
  const rows = Object.entries(spec.flags).map(([name, f]) => {
    const left =
      `  ${f.short ? `-${f.short}, ` : '    '}--${name}` +
      `${f.type === 'string' ? ` <${f.placeholder ?? 'value'}>` : ''}${f.multiple ? ' ...' : ''}`;
    const def = f.default !== undefined && f.default !== false ? ` (default: ${String(f.default)})` : '';
    return `${left.padEnd(34)} ${f.help}${def}`;
  });
  rows.push(`${'  -h, --help'.padEnd(34)} show this help`);
  return [
    `medmesh ${spec.name} — ${spec.summary}`,
    '',
    `Usage: ${spec.usage}`,
    '',
    'Options:',
    ...rows,
    ...(spec.examples?.length ? ['', 'Examples:', ...spec.examples.map((e) => `  ${e}`)] : []),
  ].join('\n');
}

/** Returns the flags, or 'help' when --help was asked. Throws UsageError on a wrong flag. */
export function parseFlags<F extends Record<string, FlagSpec>>(spec: VerbSpec<F>, argv: string[]): Flags<F> | 'help' {
  const options: NonNullable<ParseArgsConfig['options']> = { help: { type: 'boolean', short: 'h' } };
  for (const [name, f] of Object.entries(spec.flags)) {
    options[name] = {
      type: f.type,
      ...(f.short ? { short: f.short } : {}),
      ...(f.multiple ? { multiple: true, default: [] } : f.default !== undefined ? { default: f.default } : {}),
    };
  }
  let values: Record<string, string | boolean | string[] | undefined>;
  try {
    values = parseArgs({ args: argv, options, strict: true, allowPositionals: false }).values as Record<
      string,
      string | boolean | string[] | undefined
    >;
  } catch (e) {
    throw new UsageError(
      `${e instanceof Error ? e.message.replace(/\. To specify.*$/s, '') : String(e)}\n` +
        `Run 'medmesh ${spec.name} --help' for the options.`,
    );
  }
  if (values.help) return 'help';
  return values as Flags<F>;
}

export function intFlag(name: string, raw: string, min: number, max: number): number {
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max)
    throw new UsageError(`--${name} must be an integer from ${min} to ${max} (got ${raw})`);
  return Number(raw);
}
