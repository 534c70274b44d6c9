// bench/crypto: SM4-CBC/CTR/GCM and SM3 throughput on 1 MiB buffers, SM2 sign/verify
// rates, with `openssl speed` measured in the same run as the baseline. JSON on stdout.
//   node bench/crypto/run.ts [--quick]
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import {
  GcmWorker,
  Sm2PrivateKey,
  sm2Sign,
  sm2Verify,
  sm3,
  sm4CbcEncrypt,
  sm4Ctr,
  sm4GcmEncrypt,
} from '../../src/security/crypto/index.ts';
import { progress, round } from '../harness.ts';

const quick = process.argv.includes('--quick');
const SECONDS = quick ? 0.5 : 3;
const MiB = 1 << 20;

function rate(fn: () => void, seconds = SECONDS): number {
  for (let i = 0; i < 3; i++) fn();
  let n = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000) {
    fn();
    n++;
  }
  return n / ((performance.now() - t0) / 1000);
}

async function rateAsync(fn: () => Promise<unknown>, seconds = SECONDS): Promise<number> {
  for (let i = 0; i < 3; i++) await fn();
  let n = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000) {
    await fn();
    n++;
  }
  return n / ((performance.now() - t0) / 1000);
}

/** `openssl speed -evp <alg> -bytes 1048576`: the last figure is bytes/s (in 1000s). */
function opensslSpeed(alg: string): number | undefined {
  try {
    const out = execFileSync(
      'openssl',
      ['speed', '-seconds', String(Math.max(1, Math.round(SECONDS))), '-bytes', String(MiB), '-evp', alg],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] },
    );
    const line = out.split('\n').find((l) => l.trim().toLowerCase().startsWith(alg.toLowerCase()));
    const k = line ? Number(line.trim().split(/\s+/).at(-1)?.replace(/k$/, '')) : NaN;
    return Number.isFinite(k) ? (k * 1000) / 1e6 : undefined;
  } catch {
    return undefined;
  }
}

const buf = randomBytes(MiB);
const key = randomBytes(16);
const iv = randomBytes(16);
const nonce = randomBytes(12);
progress('SM4 / SM3 throughput');
const ours = {
  sm4_cbc_MBps: round(rate(() => sm4CbcEncrypt(key, iv, buf))),
  sm4_ctr_MBps: round(rate(() => sm4Ctr(key, iv, buf))),
  sm4_gcm_single_thread_MBps: round(rate(() => sm4GcmEncrypt(key, nonce, buf))),
  sm4_gcm_bulk_MBps: 0,
  sm3_MBps: round(rate(() => sm3(buf))),
};
const gcm = new GcmWorker();
ours.sm4_gcm_bulk_MBps = round(await rateAsync(() => gcm.encrypt(key, nonce, buf)));
await gcm.close();
progress('SM2 sign / verify');
const sk = Sm2PrivateKey.generate();
const msg = randomBytes(256);
const sig = sm2Sign(sk, msg);
const sm2 = {
  sign_per_s: round(rate(() => sm2Sign(sk, msg))),
  verify_per_s: round(
    rate(() => {
      if (!sm2Verify(sk.publicKey, msg, sig)) throw new Error('verify failed');
    }),
  ),
};
progress('openssl speed baseline');
const openssl = { sm4_cbc_MBps: opensslSpeed('sm4-cbc'), sm3_MBps: opensslSpeed('sm3') };
const ratio = (a: number, b: number | undefined) => (b ? round(a / b, 3) : null);
const ratios = {
  sm4_cbc_vs_openssl_sm4_cbc: ratio(ours.sm4_cbc_MBps, openssl.sm4_cbc_MBps),
  sm4_gcm_bulk_vs_openssl_sm4_cbc: ratio(ours.sm4_gcm_bulk_MBps, openssl.sm4_cbc_MBps),
  sm4_gcm_single_thread_vs_openssl_sm4_cbc: ratio(ours.sm4_gcm_single_thread_MBps, openssl.sm4_cbc_MBps),
  sm3_vs_openssl_sm3: ratio(ours.sm3_MBps, openssl.sm3_MBps),
};
console.log(
  JSON.stringify(
    {
      benchmark: 'crypto',
      machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version, openssl: process.versions.openssl },
      buffer_bytes: MiB,
      note:
        'SM4-GCM bulk = native SM4-CTR on the calling thread + GHASH (@noble/ciphers) in a worker thread; ' +
        'openssl speed runs in the same process run as the baseline',
      medmesh: { ...ours, sm2_single_core: sm2 },
      openssl_speed: openssl,
      ratios,
      targets: {
        'SM4-CBC >= 0.9x OpenSSL': (ratios.sm4_cbc_vs_openssl_sm4_cbc ?? 0) >= 0.9,
        "SM4-GCM (bulk, worker thread) >= 0.5x OpenSSL's SM4-CBC": (ratios.sm4_gcm_bulk_vs_openssl_sm4_cbc ?? 0) >= 0.5,
        'SM2 sign >= 500/s': sm2.sign_per_s >= 500,
        'SM2 verify >= 400/s': sm2.verify_per_s >= 400,
      },
    },
    null,
    2,
  ),
);
