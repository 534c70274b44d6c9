import type { HybridClock } from '../clock/index.ts';
import type { Db } from '../db/index.ts';
import type { Region } from '../region/index.ts';
import type { R4Validator } from './r4-validator.ts';
import type { SearchParamTable } from './search-params.ts';

/** Everything the record store needs, passed explicitly (no module globals). */
export interface RecordsContext {
  db: Db;
  region: Region;
  siteId: string;
  clock: HybridClock;
  searchParams: SearchParamTable;
  /** R4 validation: structure, invariants and required code bindings (r4-validator.ts). */
  validator: R4Validator;
  /**
   * Write leases of shards (DESIGN.md §6), kept by the site's lease keeper. Present: core
   * data of a shard is written only under this site's unexpired lease of it, each version
   * carrying the lease's epoch (checked inside the write's statement, write-version.ts), and
   * `activeSiteFor` names the holder a misdirected write is sent to. Absent (a region run
   * without a witness): each shard's first residency site writes it, at epoch 0.
   */
  leases?: { activeSiteFor(shard: string): string | undefined };
  /**
   * Blind indexes (HMAC-SM3 under the region-wide EMPI key) of a patient's identifiers, for
   * the EMPI directory; absent or [] while the key is not installed.
   */
  blindIndex?: (identifiers: ReadonlyArray<{ system: string; value: string }>) => string[];
  /**
   * The base URL at which this node reaches another site (its peers map), named in a 421;
   * absent: the region file's URL.
   */
  siteUrl?: (siteId: string) => string | undefined;
}
