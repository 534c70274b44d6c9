import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { distanceKm, encodeGeohash, isGeohash } from './geohash.ts';

describe('GeoHash', () => {
  it('matches published reference values', () => {
    // Values from Niemeyer's geohash.org examples and the Wikipedia article.
    assert.equal(encodeGeohash(42.6, -5.6, 5), 'ezs42');
    assert.equal(encodeGeohash(57.64911, 10.40744, 11), 'u4pruydqqvj');
    assert.equal(encodeGeohash(-25.382708, -49.265506, 8), '6gkzwgjz');
  });
  it('nests: a longer hash extends the shorter one', () => {
    assert.ok(encodeGeohash(23.129, 113.264, 12).startsWith(encodeGeohash(23.129, 113.264, 4)));
  });
  it('refuses coordinates off the globe', () => {
    assert.throws(() => encodeGeohash(91, 0), RangeError);
    assert.equal(isGeohash('ws0e'), true);
    assert.equal(isGeohash('wsa'), false);
  });
  it('measures great-circle distance', () => {
    const gz = { lat: 23.129, lon: 113.264 };
    const sz = { lat: 22.543, lon: 114.058 };
    assert.ok(Math.abs(distanceKm(gz, sz) - 104.2) < 1);
    assert.equal(distanceKm(gz, gz), 0);
  });
});
