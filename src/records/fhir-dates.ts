// FHIR date/dateTime/instant values as half-open ranges [lo, hi) at their precision,
// which is what date search compares (FHIR R4 §3.1.1.4.2.1).

export interface DateRange {
  lo: Date;
  hi: Date;
}

const DATE_RE = /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$/;

export function parseDateRange(s: string): DateRange | undefined {
  const m = DATE_RE.exec(s);
  if (!m) return undefined;
  const [, y, mo, d, h, mi, sec, frac, tz] = m;
  const year = Number(y);
  const month = mo ? Number(mo) : 1;
  const day = d ? Number(d) : 1;
  if (month < 1 || month > 12 || day < 1 || day > daysIn(year, month)) return undefined;
  if (h === undefined) {
    const lo = new Date(Date.UTC(year, month - 1, day));
    const hi = d
      ? new Date(Date.UTC(year, month - 1, day + 1))
      : mo
        ? new Date(Date.UTC(year, month, 1))
        : new Date(Date.UTC(year + 1, 0, 1));
    return { lo, hi };
  }
  const hour = Number(h);
  const minute = Number(mi);
  const second = sec ? Number(sec) : 0;
  if (hour > 23 || minute > 59 || second > 59) return undefined;
  const ms = frac ? Math.floor(Number(`0${frac}`) * 1000) : 0;
  const offsetMin = !tz || tz === 'Z' ? 0 : (tz[0] === '-' ? -1 : 1) * (Number(tz.slice(1, 3)) * 60 + Number(tz.slice(4, 6)));
  const lo = new Date(Date.UTC(year, month - 1, day, hour, minute, second, ms) - offsetMin * 60_000);
  const step = frac ? 1 : sec ? 1000 : 60_000;
  return { lo, hi: new Date(lo.getTime() + step) };
}

function daysIn(year: number, month: number): number {
  return new Date(Date.UTC(year, month, 0)).getUTCDate();
}
