// The search columns an audit entry is stored with, checked against its canonical bytes
// (by the verification worker: no imports, so the worker starts fast).

const ACTOR_ID = Buffer.from('"actor":{"id":"');
const RESOURCE = Buffer.from('"resource":"');
const AFTER_ACTOR_ID = Buffer.from('","kind":');
const AFTER_RESOURCE = Buffer.from('","site":');

/** The length that marks a NULL column in a packed page. */
export const NULL_TEXT = 0xffff_ffff;

/** A byte range of a buffer; `null` stands for a NULL column. */
export interface Span {
  start: number;
  length: number;
}

/**
 * Whether the columns (UTF-8 bytes) hold the entry's `resource` and `actor.id`, read from its
 * canonical bytes (only entries whose MAC holds are asked, so the bytes are as medmesh wrote
 * them): keys are sorted, so `resource` is followed by `site` and `actor.id` by `actor.kind`,
 * and inside a JSON string every quote is escaped, so these key sequences occur nowhere else.
 * Compared in place, over one packed buffer, as the entry's time is read: the verification
 * worker runs this for every entry beside its MAC, and parsing the JSON (or even slicing
 * buffers) made verification markedly slower.
 */
export function columnsAgree(buf: Buffer, entry: Span, entity: Span | null, agent: Span | null): boolean {
  if (agent === null || !holds(buf, entry, ACTOR_ID, agent, AFTER_ACTOR_ID)) return false;
  if (entity !== null) return holds(buf, entry, RESOURCE, entity, AFTER_RESOURCE);
  const at = buf.indexOf(RESOURCE, entry.start);
  return at < 0 || at + RESOURCE.length > entry.start + entry.length;
}

/** `key`, then the value as a JSON string's content, then `after`, inside the entry. */
function holds(buf: Buffer, entry: Span, key: Buffer, value: Span, after: Buffer): boolean {
  const end = entry.start + entry.length;
  const at = buf.indexOf(key, entry.start);
  if (at < 0 || at + key.length > end) return false;
  let p = at + key.length;
  for (let i = value.start; i < value.start + value.length; i++, p++) {
    const b = buf[i]!;
    // A quote, a backslash or a control character is escaped in the bytes: the slow way.
    if (b === 0x22 || b === 0x5c || b < 0x20) return holdsEscaped(buf, entry, key, value, after);
    if (p >= end || buf[p] !== b) return false;
  }
  for (let i = 0; i < after.length; i++, p++) if (p >= end || buf[p] !== after[i]) return false;
  return true;
}

function holdsEscaped(buf: Buffer, entry: Span, key: Buffer, value: Span, after: Buffer): boolean {
  const json = JSON.stringify(buf.toString('utf8', value.start, value.start + value.length));
  const needle = `${key.toString('latin1', 0, key.length - 1)}${json}${after.toString('latin1', 1)}`;
  const at = buf.indexOf(needle, entry.start);
  return at >= 0 && at + Buffer.byteLength(needle) <= entry.start + entry.length;
}
