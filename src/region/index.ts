// The region: its YAML file (schema-checked, every problem named by path), sites, shards and
// data classes, and where a patient lives (home shard from the resident ID, insurance card,
// GeoHash of the home address or the registering institution). Pure: no database, no I/O
// beyond reading the file.
export type {
  RegionConfig,
  SiteConfig,
  ShardConfig,
  SiteKind,
  DataClass,
  WitnessStoreConfig,
  SynchronousClass,
} from './config-schema.ts';
export type { ConfigIssue } from './validate-region.ts';
export { loadRegionFile, formatIssues } from './load-region.ts';
export type { LoadResult } from './load-region.ts';
export { Region } from './region.ts';
export { placePatient, homeGeolocation, GEOLOCATION_URL } from './placement.ts';
export type { Placement, PlacementError, PlacementMethod, PlacementContext } from './placement.ts';
export { parseResidentId, makeResidentId, residentIdCheckChar } from './resident-id.ts';
export type { ResidentId, ResidentIdError } from './resident-id.ts';
export { encodeGeohash } from './geohash.ts';
