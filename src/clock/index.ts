// The hybrid logical clock (Kulkarni et al.): 64-bit timestamps that order every version of
// the region, never go backwards across restarts (a persisted upper bound) and refuse remote
// clocks too far ahead. Needs only a store for its bound (db provides one per engine).
export { HybridClock, packHlc, unpackHlc, hlcToHex } from './hlc.ts';
export type { Hlc, HlcBoundStore, HybridClockOptions, ClockSkewError } from './hlc.ts';
