// The EMPI blind index of this site: HMAC-SM3 under the region-wide KMS key, loaded when the
// KMS unseals and looked for again on a timer (a key installed while running is picked up).
import { EMPI_BLIND_INDEX_KEY, type RecordsContext } from '../records/index.ts';
import { hmacSm3Keyed } from '../security/crypto/index.ts';
import { KmsError, type Kms } from '../security/kms/index.ts';
import { reasonOf, type Logger } from '../common/index.ts';

/**
 * HMAC-SM3 of `system|value` under the region's EMPI key (KMS key empi-blind-index, the same
 * material at every site); [] while the key is not installed or the site is sealed. Writes
 * call it inside their transactions, so it never queries: the key is loaded when the KMS
 * unseals and looked for again every 10 s (a key installed while running is picked up).
 */
export function empiBlindIndex(
  kms: () => Kms,
  log: Logger,
): {
  index: NonNullable<RecordsContext['blindIndex']>;
  refresh: () => Promise<void>;
  stop: () => void;
} {
  let mac: ((...p: Uint8Array[]) => Buffer) | undefined;
  const refresh = async () => {
    const key = kms().signingKey()
      ? await kms()
          .macKey(EMPI_BLIND_INDEX_KEY)
          .catch((e: unknown) => {
            // Not installed yet is normal (medmesh keys create --name empi-blind-index); anything else is logged.
            if (!(e instanceof KmsError && e.code === 'unknown-key'))
              log.warn({ err: e }, `EMPI blind-index key not loaded (tried again in 10 s): ${reasonOf(e)}`);
            return undefined;
          })
      : undefined;
    mac = key ? hmacSm3Keyed(key.key) : undefined;
  };
  const timer = setInterval(() => void refresh(), 10_000);
  timer.unref();
  return {
    index: (ids) => (mac ? ids.map((i) => mac!(Buffer.from(`${i.system}|${i.value}`)).toString('hex')) : []),
    refresh,
    stop: () => clearInterval(timer),
  };
}
