// Canonical JSON: the one byte form medmesh hashes and signs structured statements in (audit
// entries, the witness's votes). Keys sorted at every level by UTF-16 code units, no
// whitespace, undefined members left out. Numbers go through JSON.stringify, so callers keep
// to safe integers (and strings for anything else) for bytes another language can reproduce.

/** Canonical JSON: keys sorted at every level, no whitespace. These exact bytes are stored and hashed. */
export function canonicalBytes(value: unknown): Buffer {
  return Buffer.from(canonicalJson(value), 'utf8');
}

function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    const entries = Object.entries(v as Record<string, unknown>)
      .filter(([, x]) => x !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${canonicalJson(x)}`).join(',')}}`;
  }
  return JSON.stringify(v);
}
