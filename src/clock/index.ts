export { HybridClock, packHlc, unpackHlc, hlcToHex, hlcFromHex, hlcToIso, memoryBoundStore } from './hlc.ts';
export type { Hlc, HlcBoundStore, HybridClockOptions, ClockSkewError } from './hlc.ts';
