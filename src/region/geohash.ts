// GeoHash (Niemeyer 2008): interleaved longitude/latitude bisection, base32.
const BASE32 = '0123456789bcdefghjkmnpqrstuvwxyz';

export function isGeohash(s: string): boolean {
  return /^[0-9bcdefghjkmnpqrstuvwxyz]{1,12}$/.test(s);
}

export function encodeGeohash(lat: number, lon: number, precision = 12): string {
  if (!(lat >= -90 && lat <= 90 && lon >= -180 && lon <= 180)) throw new RangeError(`coordinates out of range: ${lat},${lon}`);
  let latLo = -90,
    latHi = 90,
    lonLo = -180,
    lonHi = 180;
  let out = '';
  let bits = 0,
    ch = 0,
    even = true;
  while (out.length < precision) {
    if (even) {
      const mid = (lonLo + lonHi) / 2;
      if (lon >= mid) {
        ch = (ch << 1) | 1;
        lonLo = mid;
      } else {
        ch <<= 1;
        lonHi = mid;
      }
    } else {
      const mid = (latLo + latHi) / 2;
      if (lat >= mid) {
        ch = (ch << 1) | 1;
        latLo = mid;
      } else {
        ch <<= 1;
        latHi = mid;
      }
    }
    even = !even;
    if (++bits === 5) {
      out += BASE32[ch];
      bits = 0;
      ch = 0;
    }
  }
  return out;
}

/** Great-circle distance in kilometres (haversine, mean Earth radius). */
export function distanceKm(a: { lat: number; lon: number }, b: { lat: number; lon: number }): number {
  const rad = Math.PI / 180;
  const dLat = (b.lat - a.lat) * rad;
  const dLon = (b.lon - a.lon) * rad;
  const h = Math.sin(dLat / 2) ** 2 + Math.cos(a.lat * rad) * Math.cos(b.lat * rad) * Math.sin(dLon / 2) ** 2;
  return 2 * 6371.0088 * Math.asin(Math.sqrt(h));
}
