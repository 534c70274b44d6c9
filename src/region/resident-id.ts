// GB 11643-1999 citizen identity number: 6-digit division code, 8-digit birth date,
// 3-digit sequence (odd = male), ISO 7064 MOD 11-2 check character.

export type ResidentIdError =
  { kind: 'format'; message: string } | { kind: 'birth-date'; message: string } | { kind: 'check-digit'; message: string };

export interface ResidentId {
  value: string;
  divisionCode: string;
  birthDate: string; // YYYY-MM-DD
  sex: 'male' | 'female';
}

const WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2] as const;
const CHECK_CHARS = '10X98765432';

/** ISO 7064 MOD 11-2 check character for the first 17 digits. */
export function residentIdCheckChar(first17: string): string {
  let sum = 0;
  for (let i = 0; i < 17; i++) sum += Number(first17[i]) * WEIGHTS[i]!;
  return CHECK_CHARS[sum % 11]!;
}

export function parseResidentId(
  raw: string,
  opts: { today?: Date } = {},
): { ok: true; value: ResidentId } | { ok: false; error: ResidentIdError } {
  const value = raw.trim().toUpperCase();
  if (!/^\d{17}[\dX]$/.test(value)) {
    return { ok: false, error: { kind: 'format', message: 'resident ID must be 17 digits followed by a digit or X' } };
  }
  const y = Number(value.slice(6, 10));
  const m = Number(value.slice(10, 12));
  const d = Number(value.slice(12, 14));
  const birth = new Date(Date.UTC(y, m - 1, d));
  const today = opts.today ?? new Date();
  if (y < 1850 || birth.getUTCFullYear() !== y || birth.getUTCMonth() !== m - 1 || birth.getUTCDate() !== d || birth > today) {
    return {
      ok: false,
      error: { kind: 'birth-date', message: `resident ID birth date ${value.slice(6, 14)} is not a valid past date` },
    };
  }
  const expected = residentIdCheckChar(value.slice(0, 17));
  if (expected !== value[17]) {
    return {
      ok: false,
      error: {
        kind: 'check-digit',
        message: `resident ID check digit is ${value[17]}, expected ${expected} (ISO 7064 MOD 11-2)`,
      },
    };
  }
  return {
    ok: true,
    value: {
      value,
      divisionCode: value.slice(0, 6),
      birthDate: `${value.slice(6, 10)}-${value.slice(10, 12)}-${value.slice(12, 14)}`,
      sex: Number(value[16]) % 2 === 1 ? 'male' : 'female',
    },
  };
}

/** Builds a valid resident ID (synthetic data, tests). `sequence` is 0..999. */
export function makeResidentId(opts: { divisionCode: string; birthDate: string; sequence: number }): string {
  const first17 = `${opts.divisionCode}${opts.birthDate.replaceAll('-', '')}${String(opts.sequence).padStart(3, '0')}`;
  if (!/^\d{17}$/.test(first17)) throw new RangeError(`cannot build a resident ID from ${first17}`);
  return first17 + residentIdCheckChar(first17);
}
