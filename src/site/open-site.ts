// Composition of one site node: database (migrated, bound to this site), clock, record
// store and HTTP server. Nothing here keeps state that matters; it all lives in the db.
import { createLogger, reasonOf, type Logging } from '../common/index.ts';
import type { FastifyInstance } from 'fastify';
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { HybridClock } from '../clock/index.ts';
import { boundStoreFor, claimSiteIdentity, migrate, type Db } from '../db/index.ts';
import {
  buildSearchParamTable,
  createR4Validator,
  loadFhirDefinitions,
  RecordStore,
  recordEpochCuts,
  SUPPORTED_TYPES,
  type RecordsContext,
} from '../records/index.ts';
import { FileCryptoPool, type Sm2PrivateKey, type Sm2PublicKey } from '../security/crypto/index.ts';
import { empiBlindIndex } from './empi-key.ts';
import type { Region } from '../region/index.ts';
import { Kms } from '../security/kms/index.ts';
import { AuditLog, AuditWitness, verifyWithPeers } from '../security/audit/index.ts';
import { AssertionCache, IdentityService } from '../security/identity/index.ts';
import { AccessControl } from '../security/access/index.ts';
import {
  appliedPositionOf,
  ConsistencyChecker,
  ownPositionOf,
  Puller,
  ReplicationMetrics,
  SyncGate,
  type ApplyContext,
} from '../replication/index.ts';
import { LeaseKeeper, WitnessClient, type WitnessApi } from '../failover/index.ts';
import { buildApp, tokenResolver, type IdentityResolver } from '../http/index.ts';
import {
  CollectionScheduler,
  Collector,
  FsBlobStore,
  ImageResidency,
  ImagingStore,
  S3BlobStore,
  startDimseServer,
  StudyLinker,
  type CollectionSource,
  type S3BlobStoreOptions,
  type DimseServer,
  type DimseServerOptions,
  type SourceRun,
} from '../imaging/index.ts';

export const VERSION = '0.1.0';

export interface SiteOptions {
  region: Region;
  siteId: string;
  db: Db;
  /**
   * The node's logger and the counts of its warnings and errors, which /metrics shows
   * (common/log.ts). Default: JSON lines on stdout at LOG_LEVEL (info).
   */
  logging?: Logging;
  bodyLimit?: number;
  /** A request not answered after this many ms is stopped and answered 503 (default 60 s, DEFAULT_REQUEST_TIMEOUT_MS). */
  requestTimeoutMs?: number;
  resolveIdentity?: IdentityResolver;
  checkpointEveryMs?: number;
  /**
   * Images on this node (absent: none). Files go to a folder (`blobRoot`) or to an
   * S3-compatible object store (`s3`), encrypted either way.
   */
  imaging?: ({ blobRoot: string; s3?: undefined } | { s3: S3BlobStoreOptions; blobRoot?: undefined }) & {
    maxFileBytes?: number;
    /** Files above this size stream through to the blob store instead of being held (default 16 MiB). */
    streamAboveBytes?: number;
    /** Starts the DIMSE service provider too (absent: DICOMweb only). */
    dicom?: Omit<DimseServerOptions, 'store' | 'siteId' | 'audit'>;
    /** Source PACS to collect from (DIMSE sources need `dicom`: they send to this site's AE); started by `startCollection`. */
    collect?: { sources: CollectionSource[]; everyMs?: number; days?: number; onRun?: (run: SourceRun) => void };
  };
  /**
   * Write leases from the region's witness (DESIGN.md §6, docs/failover.md): the site runs a lease
   * keeper, and core data of a shard is written only under this site's unexpired lease of it
   * (fencing). Absent: no fencing, each shard's first residency site writes it at epoch 0.
   */
  witness?: {
    urls: string[];
    /** The witness's SM2 public key: every vote of the site's chain copy must be signed with it. */
    publicKey: Sm2PublicKey;
    /** The lease duration the witness grants (default 3000 ms); renewals every sixth of it unless `renewEveryMs`. */
    leaseMs?: number;
    renewEveryMs?: number;
    safetyMarginMs?: number;
    /** How the site reaches the witness (default: the HTTP client over `urls`, signed with the site's service key). */
    client?: WitnessApi;
  };
}

export interface Site {
  siteId: string;
  ctx: RecordsContext;
  store: RecordStore;
  kms: Kms;
  identity: IdentityService;
  audit: () => AuditLog | undefined;
  access: AccessControl;
  /** State of the links this site pulls (pullers report into it; /metrics and /healthz show it). */
  replication: ReplicationMetrics;
  /** Peer site id -> base URL (from the region file; tests and the demo point them elsewhere). */
  peers: Map<string, string>;
  checker: ConsistencyChecker;
  /** Checks and cosigns the peers' audit checkpoints (started with replication). */
  witness: AuditWitness;
  /** Starts one puller per peer (once per site: leases) and, when asked, scheduled consistency checks. */
  startReplication(opts?: ReplicationStartOptions): void;
  /** Stops pulling from peers and checking them (close does it too): stop every site's first when stopping several. */
  stopReplication(): Promise<void>;
  /** The imaging store, when this node serves images (DICOMweb; DIMSE is started beside it). */
  imaging?: ImagingStore;
  /** The DIMSE service provider, when configured. */
  dimse?: DimseServer;
  /** Brings received studies into the FHIR record (Patient, ImagingStudy). */
  studyLinker?: StudyLinker;
  /** Scheduled collection from the configured source PACS (one node per source at a time: leases). */
  collection?: CollectionScheduler;
  /** Loads the EMPI blind-index key now (it is also looked for on unseal and every 10 s). */
  refreshEmpiKey(): Promise<void>;
  /** The lease keeper, when the site runs under a witness (SiteOptions.witness). */
  leases?: LeaseKeeper;
  app: FastifyInstance;
  close(): Promise<void>;
}

export interface ReplicationStartOptions {
  /** Long-poll wait per pull (default 20 s). */
  waitSeconds?: number;
  /** Check consistency with every peer this often (default: never). */
  verifyEveryMs?: number;
  /** Check and cosign every peer's audit checkpoint this often (default 30 s; 0: never). */
  cosignEveryMs?: number;
  onError?: (peer: string, message: string) => void;
  /** A link works again after failures. */
  onRecovered?: (peer: string, o: { downMs: number; failures: number }) => void;
}

export type SiteStartError = { kind: 'unknown-site' | 'config' | 'migration' | 'site-mismatch'; message: string };

export async function openSite(opts: SiteOptions): Promise<{ ok: true; site: Site } | { ok: false; error: SiteStartError }> {
  const { region, siteId, db } = opts;
  if (!region.site(siteId)) {
    return {
      ok: false,
      error: {
        kind: 'unknown-site',
        message: `site ${siteId} is not in region ${region.id} (sites: ${region.sites.map((s) => s.id).join(', ')})`,
      },
    };
  }
  const dimseSource = opts.imaging?.collect?.sources.find((s) => s.kind !== 'dicomweb');
  if (dimseSource && !opts.imaging?.dicom)
    return {
      ok: false,
      error: {
        kind: 'config',
        message: `collecting from ${dimseSource.id} by C-MOVE needs DICOM on this node (the source sends to its AE)`,
      },
    };
  const { log, counts } = opts.logging ?? createLogger({ base: { site: siteId } });
  const logOf = (component: string) => log.child({ component });
  const migrated = await migrate(db);
  if (!migrated.ok) return { ok: false, error: { kind: 'migration', message: migrated.error.message } };
  const claimed = await claimSiteIdentity(db, region.id, siteId);
  if (!claimed.ok) return { ok: false, error: { kind: 'site-mismatch', message: claimed.error.message } };
  loadFhirDefinitions();
  const searchParams = buildSearchParamTable();
  const clock = await HybridClock.start({
    store: boundStoreFor(db, siteId),
    maxOffsetMs: region.config.policies.maxClockOffsetMs,
  });
  // Every site starts sealed; custodians unseal it (POST /kms/unseal, medmesh keys unseal).
  const empi = empiBlindIndex(() => kms, logOf('empi-key'));
  const kms = new Kms({ db, siteId, policy: region.config.policies.crypto, onUnsealed: () => void empi.refresh() });
  // The keeper starts last (after ctx exists); it records epoch cuts through the record store's context.
  const leases = leaseKeeper(opts, logOf('lease-keeper'), { key: () => kms.signingKey()?.key, records: () => ctx });
  if (leases && !(leases instanceof LeaseKeeper)) return { ok: false, error: { kind: 'config', message: leases.message } };
  const ctx: RecordsContext = {
    db,
    region,
    siteId,
    clock,
    searchParams,
    validator: createR4Validator(SUPPORTED_TYPES),
    blindIndex: empi.index,
    // A 421 names the other site where this node reaches it (the peers map below), not only where the region file says.
    siteUrl: (id) => peers.get(id) ?? region.site(id)?.url,
    ...(leases ? { leases } : {}),
  };
  const store = new RecordStore(ctx);
  // Tokens are signed with the site's KMS signing key; second-factor secrets sit under the KMS key `identity`.
  const identity = new IdentityService({
    db,
    siteId,
    issuer: () => kms.signingKey(),
    secrets: {
      seal: async (b) => {
        await kms.ensureKey('identity');
        return kms.encrypt('identity', b);
      },
      open: (b) => kms.decrypt(b),
    },
  });
  // The audit log exists while the KMS is unsealed: its MAC key and signing key live there.
  let audit: { log: AuditLog; signing: object } | undefined;
  const auditLog = () => {
    const signing = kms.signingKey();
    if (!signing) return undefined;
    if (audit?.signing !== signing.key)
      audit = {
        signing: signing.key,
        log: new AuditLog({ db, macKey: kms.deriveSecret('audit-entry-mac'), signer: { siteId, key: signing.key } }),
      };
    return audit.log;
  };
  // Signed checkpoints every few seconds (regional standard: tamper-proof logs); and key material
  // destroyed elsewhere (another node, medmesh keys destroy) is zeroed here as often.
  const checkpointLog = logOf('audit-checkpoint');
  const checkpoints = setInterval(() => {
    void auditLog()
      ?.checkpoint()
      .catch((e: unknown) =>
        checkpointLog.warn({ err: e }, `audit checkpoint not written (the next one covers it): ${reasonOf(e)}`),
      );
    void kms
      .forgetDestroyed()
      .catch((e: unknown) =>
        logOf('kms').warn({ err: e }, `destroyed key copies not checked (tried again shortly): ${reasonOf(e)}`),
      );
  }, opts.checkpointEveryMs ?? 5000);
  checkpoints.unref();
  // Pseudonym keys derive from the master key: only an unsealed site answers (sealed sites serve no data).
  const access = await AccessControl.open({
    db,
    siteId,
    store,
    searchParams,
    secret: (label) => kms.deriveSecret(label),
    log,
  });
  const replication = new ReplicationMetrics();
  const peers = new Map(
    region.sites.filter((s) => s.id !== siteId && s.kind !== 'edge').map((s) => [s.id, s.url.replace(/\/+$/, '')]),
  );
  const apply: ApplyContext = { db, siteId, region, clock, records: ctx };
  const peerKey = (id: string) => identity.servicePublicKey(id);
  const checker = new ConsistencyChecker({
    apply,
    peers: () => peers,
    key: () => kms.signingKey()?.key,
    peerKey,
    metrics: replication,
    // Scheduled checks only (the app exists by the time the schedule starts).
    onError: (peer, message) =>
      logOf('consistency-check').warn({ peer }, `consistency check against ${peer} could not run: ${message}`),
  });
  // Each site witnesses the others' audit logs over the same service credentials as its links.
  const assertions = new AssertionCache();
  const authorization = (peer: string, key: Sm2PrivateKey) =>
    `MedmeshService ${assertions.for({ serviceId: siteId, key, site: peer })}`;
  const witness = new AuditWitness({
    db,
    siteId,
    peers: () => peers,
    key: () => kms.signingKey()?.key,
    peerKey,
    authorization,
    audit: auditLog,
    onAlarm: (peer, kind, message) => logOf('audit-witness').error({ peer, kind }, `AUDIT ALARM for site ${peer}: ${message}`),
    onError: (peer, message) => logOf('audit-witness').warn({ peer }, `audit log of ${peer} not checked: ${message}`),
  });
  const verifyAudit = () => {
    const signing = kms.signingKey();
    if (!signing) return Promise.reject(new Error(`site ${siteId} is sealed`));
    return verifyWithPeers(
      db,
      {
        macKey: kms.deriveSecret('audit-entry-mac'),
        signers: [signing.key.publicKey],
        onlineDays: region.config.policies.auditOnlineDays,
      },
      { siteId, peers, peerKey, authorization: (peer) => authorization(peer, signing.key) },
    );
  };
  const pullers: Puller[] = [];
  const linkLog = logOf('replication-link');
  const startReplication = (o: ReplicationStartOptions = {}) => {
    if (pullers.length) return;
    for (const [id, url] of peers) {
      const p = new Puller({
        peer: { id, url },
        key: () => kms.signingKey()?.key,
        peerKey: () => peerKey(id),
        apply,
        metrics: replication,
        waitSeconds: o.waitSeconds ?? 20,
        // Failures are reported once per streak and message (puller.ts), logged and counted here.
        onError: (m: string) => {
          linkLog.warn({ peer: id }, `replication from ${id}: ${m}`);
          o.onError?.(id, m);
        },
        onRecovered: (r: { downMs: number; failures: number }) => {
          linkLog.info(
            { peer: id, ...r },
            `replication from ${id} works again (down ${Math.round(r.downMs / 1000)} s, ${r.failures} failed pulls)`,
          );
          o.onRecovered?.(id, r);
        },
      });
      p.start();
      pullers.push(p);
    }
    if (o.verifyEveryMs) checker.start(o.verifyEveryMs);
    if ((o.cosignEveryMs ?? 30_000) > 0) witness.start(o.cosignEveryMs ?? 30_000);
  };
  const stopReplication = async (): Promise<void> => {
    await Promise.all([...pullers.map((p) => p.stop()), checker.stop(), witness.stop()]);
  };
  // Image bytes are kept only for patients whose home shard this site may hold.
  const residency = new ImageResidency({ records: store, region, siteId });
  const s3 = opts.imaging?.s3 ? new S3BlobStore(opts.imaging.s3) : undefined;
  const blobs = s3 ?? (opts.imaging?.blobRoot !== undefined ? new FsBlobStore({ root: opts.imaging.blobRoot }) : undefined);
  // Whole-study retrievals decrypt on every core (workers start on first use).
  const files = blobs ? new FileCryptoPool() : undefined;
  const imaging =
    opts.imaging && blobs
      ? new ImagingStore({
          db,
          kms,
          blobs,
          ...(files ? { files } : {}),
          admit: (a) => residency.refusal(a.patientId),
          findPatient: (pid) => residency.patientOf(pid),
          ...(opts.imaging.maxFileBytes ? { maxFileBytes: opts.imaging.maxFileBytes } : {}),
          ...(opts.imaging.streamAboveBytes ? { streamAboveBytes: opts.imaging.streamAboveBytes } : {}),
        })
      : undefined;
  /** This API node, as holder of site-wide leases (linking studies, collecting from a PACS). */
  const node = `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  const studyLinker = imaging
    ? new StudyLinker({ db, holder: node, records: store, region, siteId, log: logOf('study-linker') })
    : undefined;
  studyLinker?.start();
  // DIMSE operations are audited like HTTP requests; a sealed site (no audit log) refuses them.
  const dimse =
    imaging && opts.imaging?.dicom
      ? await startDimseServer({
          ...opts.imaging.dicom,
          store: imaging,
          siteId,
          log: logOf('dimse'),
          audit: async (e) => {
            const log = auditLog();
            return log ? (await log.append(e)).ok : false;
          },
        })
      : undefined;
  const collect = opts.imaging?.collect;
  const collectionLog = logOf('collection');
  const logCollection = (run: SourceRun) => {
    if (run.outcome === 'held-elsewhere') return;
    const days = run.days.map((d) =>
      d.ok
        ? `${d.value.day}: ${d.value.retrieved} retrieved, ${d.value.skipped} held, ${d.value.failed.length} failed`
        : `${d.day}: ${d.error}`,
    );
    collectionLog[run.outcome === 'failed' ? 'warn' : 'info'](
      { source: run.source },
      `collection from ${run.source}: ${run.error ?? days.join('; ')}`,
    );
  };
  const collection =
    imaging && collect?.sources.length
      ? new CollectionScheduler({
          db,
          holder: node,
          collectors: collect.sources.map(
            (source) =>
              new Collector({
                db,
                source,
                store: imaging,
                ...(opts.imaging?.dicom ? { localAe: opts.imaging.dicom.aeTitle } : {}),
              }),
          ),
          ...(collect.everyMs ? { everyMs: collect.everyMs } : {}),
          ...(collect.days ? { days: collect.days } : {}),
          log: collectionLog,
          onRun: (run: SourceRun) => {
            logCollection(run);
            collect.onRun?.(run);
          },
        })
      : undefined;
  // Synchronous classes (region policies): their writes are answered once the DR twin applied them.
  const sync = new SyncGate({ db, region, siteId, logger: logOf('sync') });
  const app = await buildApp({
    ...(sync.active ? { sync } : {}),
    access,
    db,
    region,
    records: ctx,
    replication,
    kms,
    identity,
    audit: auditLog,
    searchParams,
    siteId,
    regionId: region.id,
    version: VERSION,
    log,
    ...(opts.bodyLimit !== undefined ? { bodyLimit: opts.bodyLimit } : {}),
    ...(opts.requestTimeoutMs !== undefined ? { requestTimeoutMs: opts.requestTimeoutMs } : {}),
    resolveIdentity: opts.resolveIdentity ?? tokenResolver(identity),
    verify: (o) => checker.run(o),
    blindIndex: empi.index,
    ...(imaging ? { imaging } : {}),
    ...(collect ? { collectionSources: collect.sources.map((s) => s.id) } : {}),
    auditPeers: { verify: verifyAudit, states: () => witness.states(), prometheus: () => witness.prometheus() },
    metrics: [
      (site: string) => counts.prometheus({ site }),
      ...(dimse ? [(site: string) => dimse.metrics.prometheus(site)] : []),
      ...(leases ? [(site: string) => leases.prometheus(site)] : []),
    ],
  });
  // Last, once nothing above can fail: a keeper left running would renew leases for a site that never opened.
  await leases?.start();
  return {
    ok: true,
    site: {
      siteId,
      ctx,
      store,
      kms,
      identity,
      audit: auditLog,
      access,
      replication,
      peers,
      checker,
      witness,
      startReplication,
      stopReplication,
      app,
      ...(imaging ? { imaging } : {}),
      ...(dimse ? { dimse } : {}),
      ...(studyLinker ? { studyLinker } : {}),
      ...(collection ? { collection } : {}),
      refreshEmpiKey: empi.refresh,
      ...(leases ? { leases } : {}),
      close: async () => {
        clearInterval(checkpoints);
        empi.stop();
        // At once, beside the background work: requests in flight get a grace period, then are
        // stopped (answered 503, their transactions rolled back: a request stuck in one must not
        // hold PGlite's one connection from the loops stopped below); it resolves once their
        // handlers returned (deadline.ts), so the database can close under no request.
        const http = app.close();
        http.catch(() => undefined); // awaited below
        await collection?.stop(); // before DIMSE closes: a run in flight finishes its study
        // The keeper withdraws nothing: each lease row ends at its stop time by itself (lease-keeper.ts).
        await Promise.all([stopReplication(), studyLinker?.stop(), dimse?.close(), http, leases?.close()]);
        await sync.close();
        // After the last request, its entries are written before the database closes; a database
        // that no longer answers does not hold shutdown (those requests were never answered).
        let grace: NodeJS.Timeout | undefined;
        await Promise.race([audit?.log.close(), new Promise<void>((resolve) => (grace = setTimeout(resolve, 5000)))]);
        clearTimeout(grace);
        s3?.close();
        await files?.close();
      },
    },
  };
}

/** The site's lease keeper under SiteOptions.witness (started by openSite), or why it cannot run. */
function leaseKeeper(
  opts: SiteOptions,
  log: Logging['log'],
  via: { key: () => Sm2PrivateKey | undefined; records: () => RecordsContext },
): LeaseKeeper | { message: string } | undefined {
  const w = opts.witness;
  if (!w) return undefined;
  const { db, siteId } = opts;
  try {
    const client = w.client ?? new WitnessClient({ urls: w.urls, siteId, key: via.key });
    return new LeaseKeeper({
      siteId,
      shards: opts.region.shards.filter((s) => s.residency.includes(siteId)),
      db,
      witness: client,
      witnessKey: w.publicKey,
      leaseMs: w.leaseMs ?? 3000,
      ...(w.renewEveryMs !== undefined ? { renewEveryMs: w.renewEveryMs } : {}),
      ...(w.safetyMarginMs !== undefined ? { safetyMarginMs: w.safetyMarginMs } : {}),
      // The holder's position: its newest outbox HLC; a standby's: how far it applied the holder's feed.
      positions: { own: () => ownPositionOf(db), applied: (_shard, holder) => appliedPositionOf(db, holder) },
      log,
      // The old holder's unreplicated tail of an ended epoch goes to review (records/epoch-review.ts).
      onEpochCuts: async (cuts) => {
        await db.transaction((tx) =>
          recordEpochCuts(
            via.records(),
            tx,
            cuts.map((c) => ({ shard: c.shard, epoch: BigInt(c.epoch), holder: c.holder, cutHlc: c.cut, voteSeq: c.voteSeq })),
          ),
        );
      },
    });
  } catch (e) {
    return { message: `witness: ${reasonOf(e)}` };
  }
}
