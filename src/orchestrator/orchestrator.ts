import { performance } from 'node:perf_hooks';
import type { Readable } from 'node:stream';
import type { Clock } from '../core/clock.js';
import { systemClock } from '../core/clock.js';
import {
  badRequest,
  conflict,
  isStacyError,
  notFound,
  providerError,
  resourceLimit,
  StacyError,
  unavailable,
} from '../core/errors.js';
import { formatDuration } from '../core/duration.js';
import { newSandboxId, SANDBOX_ID_PATTERN } from '../core/ids.js';
import { normalizeSandboxPath } from '../core/paths.js';
import type { LeaseRecord, QuotaRecord, SandboxRecord, SandboxState, TemplateRecord, WorkerRecord } from '../core/types.js';
import { ACTIVE_SANDBOX_STATES, TERMINAL_SANDBOX_STATES } from '../core/types.js';
import type { Config } from '../config/types.js';
import { redactConfig, WORKER_ID_PATTERN } from '../config/load.js';
import type { ExecEvent, ExecRequest, FileEntry, Provider, ProviderHealth } from '../providers/provider.js';
import type { Store } from '../store/store.js';
import { EventBus } from './events.js';
import type { GaugeSnapshot } from './metrics.js';
import { OperationMetrics } from './metrics.js';
import { isStale, place } from './scheduler.js';
import type { Placement } from './scheduler.js';
import type {
  AdmissionReport,
  Caller,
  Diagnostics,
  ExecCall,
  ExecOutcome,
  HeartbeatInput,
  ProviderDetail,
  ProviderSummary,
  QuotaUsage,
  SandboxService,
  SchedulerStatus,
  SpawnRequest,
  StacyEvent,
  TemplateInput,
  WorkerView,
} from './service.js';
import type { ResolvedSpawn } from './validate.js';
import { checkEnv, checkOwnerId, checkTemplate, checkTemplateName, maxTtlFor, resolveOwner, resolveSpawn } from './validate.js';

/** The subset of a pino logger the orchestrator uses. */
export interface OrchestratorLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface OrchestratorOptions {
  config: Config;
  store: Store;
  /** The providers this process runs, already constructed (the registry's enabled set). */
  providers: ReadonlyMap<string, Provider> | readonly Provider[];
  /**
   * The provider used when a request names none. Defaults to `config.providers.default` unless
   * that is `auto` (which only the provider registry can resolve), then the first provider.
   */
  defaultProvider?: string;
  clock?: Clock;
  logger?: OrchestratorLogger;
  version: string;
  /** Overrides how diagnostics show the configuration; defaults to the config module's redactConfig. */
  redactConfig?: (config: Config) => Record<string, unknown>;
}

export type Orchestrator = SandboxService & {
  /** Reconciles the store with the providers, then starts the TTL reaper and lease keeper. */
  start(): Promise<void>;
  /** Stops the background loops and waits for a running pass to finish. Leaves store and providers open. */
  stop(): Promise<void>;
};

const silentLogger: OrchestratorLogger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

/** Provider health answers older than this are refreshed on read. */
const HEALTH_CACHE_MS = 10_000;
/** A provider health check that takes longer than this counts as unhealthy. */
const HEALTH_TIMEOUT_MS = 5_000;
const MAX_LOG_LINES = 10_000;
/** States in which commands and file operations reach the runtime. */
const OPERABLE_STATES: readonly SandboxState[] = ['running', 'unhealthy'];
/** Runtime status probes per background pass: a fleet of any size costs a bounded amount per pass. */
export const RUNTIME_CHECKS_PER_PASS = 32;
/** The state reason of a sandbox whose runtime the background pass found stopped. */
const RUNTIME_STOPPED = 'runtime stopped';

/** Builds the orchestrator: the one implementation of SandboxService. */
export function createOrchestrator(options: OrchestratorOptions): Orchestrator {
  return new LifecycleManager(options);
}

interface HealthEntry {
  health: ProviderHealth;
  lastChecked: number;
}

/** Serialises async sections: admission counts and the reservation it makes must not interleave. */
class Mutex {
  private tail: Promise<void> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.tail.then(fn);
    this.tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }
}

/** One Mutex per key, dropped when idle, so work on one sandbox never waits for another. */
class KeyedLock {
  private readonly locks = new Map<string, { mutex: Mutex; users: number }>();
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    let entry = this.locks.get(key);
    if (entry === undefined) {
      entry = { mutex: new Mutex(), users: 0 };
      this.locks.set(key, entry);
    }
    entry.users += 1;
    try {
      return await entry.mutex.run(fn);
    } finally {
      entry.users -= 1;
      if (entry.users === 0) this.locks.delete(key);
    }
  }
}

class LifecycleManager implements Orchestrator {
  private readonly config: Config;
  private readonly store: Store;
  private readonly providers: Map<string, Provider>;
  private readonly defaultProviderName: string;
  private readonly clock: Clock;
  private readonly log: OrchestratorLogger;
  private readonly version: string;
  private readonly workerId: string;
  /** The configuration with secrets hidden, computed once: config is frozen. */
  private readonly redacted: Config;
  private readonly diagnosticsConfig: Record<string, unknown>;
  private readonly events: EventBus;
  private readonly metricsRecorder = new OperationMetrics();
  private readonly admissionLock = new Mutex();
  /** Serialises creation and teardown of one sandbox within this process. */
  private readonly sandboxLock = new KeyedLock();
  private readonly health = new Map<string, HealthEntry>();
  private readonly startedAt: number;
  private lastScheduler: SchedulerStatus;
  private reapTimer: NodeJS.Timeout | undefined;
  private tickRunning: Promise<void> | undefined;
  private readonly staleWorkers = new Set<string>();
  /** The last sandbox id the runtime check probed; the next pass continues after it. */
  private runtimeCursor = '';
  /** Sandboxes put in `error` because their provider was down at start-up; retried by the background pass. */
  private readonly awaitingProvider = new Set<string>();
  private stopped = false;

  constructor(o: OrchestratorOptions) {
    this.config = o.config;
    this.store = o.store;
    const list = o.providers instanceof Map ? [...o.providers.values()] : [...(o.providers as readonly Provider[])];
    this.providers = new Map(list.map((p) => [p.name, p]));
    const configured = o.config.providers.default;
    this.defaultProviderName = o.defaultProvider ?? (configured !== 'auto' && configured !== '' ? configured : (list[0]?.name ?? ''));
    this.clock = o.clock ?? systemClock;
    this.log = o.logger ?? silentLogger;
    this.version = o.version;
    this.workerId = o.config.worker.id;
    this.redacted = redactConfig(o.config);
    this.diagnosticsConfig = o.redactConfig?.(o.config) ?? (this.redacted as unknown as Record<string, unknown>);
    this.events = new EventBus((err) => this.log.warn({ err }, 'event listener failed'));
    this.startedAt = this.clock.now();
    this.lastScheduler = { workerId: this.workerId, selectedWorkerId: null, eligibleWorkers: 0 };
  }

  // ---------------------------------------------------------------- lifecycle of the service

  async start(): Promise<void> {
    if (this.reapTimer !== undefined) return;
    this.stopped = false;
    await this.op('reconcile', () => this.reconcile());
    const interval = this.config.reconcile.reapIntervalMs;
    if (interval > 0) {
      this.reapTimer = setInterval(() => {
        void this.tick();
      }, interval);
      this.reapTimer.unref();
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.reapTimer !== undefined) clearInterval(this.reapTimer);
    this.reapTimer = undefined;
    await this.tickRunning;
  }

  /**
   * One background pass: reap expired sandboxes, forget old records and their leases, notice
   * runtimes that died, keep leases, note stale workers.
   */
  tick(): Promise<void> {
    if (this.tickRunning !== undefined) return this.tickRunning;
    const run = (async () => {
      for (const [name, step] of [
        ['reap', () => this.prune()],
        ['forget', () => this.forgetOld()],
        ['prune_leases', () => this.pruneLeases()],
        ['check_runtimes', () => this.checkRuntimes()],
        ['keep_leases', () => this.keepLeases()],
        ['watch_workers', () => this.watchWorkers()],
        ['recover', () => this.recoverProviderErrors()],
      ] as const) {
        if (this.stopped) return;
        try {
          await step();
        } catch (err) {
          this.log.warn({ err, step: name }, 'background pass step failed');
        }
      }
    })();
    this.tickRunning = run.finally(() => {
      this.tickRunning = undefined;
    });
    return this.tickRunning;
  }

  // ---------------------------------------------------------------- helpers

  private async op<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    try {
      const result = await fn();
      this.metricsRecorder.record(name, 'ok', performance.now() - t0);
      return result;
    } catch (err) {
      this.metricsRecorder.record(name, isStacyError(err) ? err.code : 'internal', performance.now() - t0);
      throw err;
    }
  }

  private emit(type: StacyEvent['type'], fields: Omit<StacyEvent, 'id' | 'type' | 'time' | 'data'> & { data?: Record<string, unknown> } = {}): void {
    this.events.emit(type, this.clock.now(), fields);
  }

  private providerNames(): string[] {
    return [...this.providers.keys()];
  }

  /** Provider failures that are not already typed become provider_error. */
  private async callProvider<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof StacyError) throw err;
      throw providerError(`${what}: ${err instanceof Error ? err.message : String(err)}`, err);
    }
  }

  private visible(record: SandboxRecord, caller: Caller): boolean {
    return caller.isAdmin || caller.userId === null || record.ownerId === caller.userId;
  }

  /** The record, or not_found when it is missing or belongs to another user (existence is not revealed). */
  private async load(id: string, caller: Caller): Promise<SandboxRecord> {
    const record = await this.store.getSandbox(id);
    if (record === undefined || !this.visible(record, caller)) throw notFound('sandbox', id);
    return record;
  }

  /** A sandbox that can run commands and file operations right now, with its provider. */
  private async operable(id: string, caller: Caller): Promise<{ record: SandboxRecord; provider: Provider; runtimeId: string }> {
    const record = await this.load(id, caller);
    if (!OPERABLE_STATES.includes(record.state)) throw conflict(`sandbox ${id} is ${record.state}`);
    if (record.expiresAt <= this.clock.now()) throw conflict(`sandbox ${id} has expired`);
    if (record.workerId !== null && record.workerId !== this.workerId) {
      throw new StacyError('remote_worker_rpc_unavailable', `sandbox ${id} runs on worker ${record.workerId}, which this server cannot reach over worker RPC yet`);
    }
    if (record.runtimeId === null) throw conflict(`sandbox ${id} has no runtime`);
    const provider = this.providers.get(record.provider);
    if (provider === undefined) throw unavailable(`provider ${record.provider} is not available on this server`);
    return { record, provider, runtimeId: record.runtimeId };
  }

  private leaseTtl(): number {
    return this.config.worker.leaseTtlMs;
  }

  private async acquireLease(sandboxId: string): Promise<LeaseRecord> {
    return this.store.acquireLease({ resourceId: sandboxId, resourceType: 'sandbox', holderId: this.workerId, ttlMs: this.leaseTtl() });
  }

  /** Best-effort release: a failure only delays reuse until the lease expires. */
  private async releaseLease(sandboxId: string): Promise<void> {
    try {
      await this.store.releaseLease(sandboxId, this.workerId);
    } catch (err) {
      this.log.warn({ err, sandboxId }, 'lease release failed; it will expire on its own');
    }
  }

  // ---------------------------------------------------------------- admission & placement

  private async ownerQuota(ownerId: string | null): Promise<QuotaRecord | undefined> {
    return ownerId === null ? undefined : this.store.getQuota(ownerId);
  }

  private async placement(provider: string, ownerId: string | null): Promise<Placement> {
    // One grouped query: listing every active sandbox made placement cost grow with the fleet.
    const loads = await this.store.listWorkerLoads(ACTIVE_SANDBOX_STATES, ownerId);
    const result = place({
      localWorkerId: this.workerId,
      workers: loads.map((l) => l.worker),
      activeByWorker: new Map(loads.map((l) => [l.worker.id, l.active])),
      ...(ownerId !== null ? { ownerActiveByWorker: new Map(loads.map((l) => [l.worker.id, l.ownerActive])) } : {}),
      provider,
      now: this.clock.now(),
      staleAfterMs: this.config.workers.staleAfterMs,
    });
    this.lastScheduler = result.status;
    return result;
  }

  /**
   * How many active sandboxes one owner may have: the configured per-owner limit (0 = no limit)
   * lowered by the owner's quota (null = no limit; 0 = none at all). Infinity when unlimited.
   */
  private ownerLimit(quota: QuotaRecord | undefined): number {
    const configured = this.config.defaults.maxSandboxesPerOwner;
    return Math.min(configured > 0 ? configured : Infinity, quota?.maxSandboxes ?? Infinity);
  }

  /** Limits that apply to one spawn, evaluated against the store. Throws resource_limit. */
  private async checkLimits(spec: ResolvedSpawn, quota: QuotaRecord | undefined): Promise<void> {
    const d = this.config.defaults;
    const active = await this.store.countSandboxes({ states: ACTIVE_SANDBOX_STATES });
    // Retry-After: the soonest a slot can free up on its own is the next reaper pass.
    const retryAfter = Math.max(1, Math.ceil(this.config.reconcile.reapIntervalMs / 1000));
    if (d.maxSandboxes > 0 && active >= d.maxSandboxes) {
      throw resourceLimit(`server limit reached: ${active} of ${d.maxSandboxes} sandboxes active`, retryAfter);
    }
    if (spec.ownerId === null) return;
    const maxOwner = this.ownerLimit(quota);
    const ownerRows = await this.store.listSandboxes({ states: ACTIVE_SANDBOX_STATES, ownerId: spec.ownerId });
    const owner = ownerRows.length;
    if (owner >= maxOwner) {
      throw resourceLimit(`owner ${spec.ownerId} limit reached: ${owner} of ${maxOwner} sandboxes active`, retryAfter);
    }
    if (quota?.maxMemoryMb !== null && quota?.maxMemoryMb !== undefined) {
      const used = ownerRows.reduce((s, r) => s + r.memoryMb, 0);
      if (used + spec.memoryMb > quota.maxMemoryMb) {
        throw resourceLimit(`owner ${spec.ownerId} memory quota: ${used} MB in use + ${spec.memoryMb} MB requested exceeds ${quota.maxMemoryMb} MB`, retryAfter);
      }
    }
    if (quota?.maxVcpus !== null && quota?.maxVcpus !== undefined) {
      const used = ownerRows.reduce((s, r) => s + r.vcpus, 0);
      if (used + spec.vcpus > quota.maxVcpus) {
        throw resourceLimit(`owner ${spec.ownerId} vCPU quota: ${used} in use + ${spec.vcpus} requested exceeds ${quota.maxVcpus}`, retryAfter);
      }
    }
  }

  private async resolve(request: SpawnRequest, caller: Caller): Promise<{ spec: ResolvedSpawn; quota: QuotaRecord | undefined }> {
    let template: TemplateRecord | undefined;
    if (request.template !== undefined) {
      template = await this.store.getTemplate(request.template);
      if (template === undefined) throw badRequest(`template: ${JSON.stringify(request.template)} does not exist`);
    }
    const ownerId = resolveOwner(request.ownerId, caller);
    const quota = await this.ownerQuota(ownerId);
    const spec = resolveSpawn({
      request,
      template,
      config: this.config,
      defaultProvider: this.defaultProviderName,
      providerNames: this.providerNames(),
      ownerId,
      quota,
    });
    return { spec, quota };
  }

  admission(request: SpawnRequest, caller: Caller): Promise<AdmissionReport> {
    return this.op('admission', async () => {
      const d = this.config.defaults;
      const active = await this.store.countSandboxes({ states: ACTIVE_SANDBOX_STATES });
      const report: AdmissionReport = {
        allowed: false,
        // No spawn queue exists: a refused spawn must be retried by the client.
        queueable: false,
        activeSandboxes: active,
        maxSandboxes: d.maxSandboxes,
        maxTtlMs: d.maxTtlMs,
        scheduler: this.lastScheduler,
      };
      let spec: ResolvedSpawn;
      let quota: QuotaRecord | undefined;
      try {
        ({ spec, quota } = await this.resolve(request, caller));
      } catch (err) {
        if (!isStacyError(err)) throw err;
        report.reason = err.message;
        return report;
      }
      report.maxTtlMs = maxTtlFor(this.config, quota);
      if (spec.ownerId !== null) {
        report.activeOwnerSandboxes = await this.store.countSandboxes({ states: ACTIVE_SANDBOX_STATES, ownerId: spec.ownerId });
        const maxOwner = this.ownerLimit(quota);
        if (Number.isFinite(maxOwner)) report.maxOwnerSandboxes = maxOwner;
      }
      try {
        await this.checkLimits(spec, quota);
      } catch (err) {
        if (!isStacyError(err)) throw err;
        report.reason = err.message;
        return report;
      }
      const placed = await this.placement(spec.provider, spec.ownerId);
      report.scheduler = placed.status;
      if (placed.selected === null) {
        report.reason = placed.status.reason ?? 'no eligible worker';
        return report;
      }
      if (placed.selected.id !== this.workerId) {
        report.reason = `placement selected remote worker ${placed.selected.id}, which this server cannot reach over worker RPC yet`;
        return report;
      }
      report.allowed = true;
      return report;
    });
  }

  // ---------------------------------------------------------------- spawn

  spawn(request: SpawnRequest, caller: Caller): Promise<SandboxRecord> {
    return this.op('spawn', async () => {
      const { spec, quota } = await this.resolve(request, caller);
      const record = await this.reserve(spec, quota);
      return this.sandboxLock.run(record.id, () => this.materialise(record, spec));
    });
  }

  /**
   * Admission, placement, lease and the `creating` record, serialised in-process so that
   * concurrent spawns each see the others' reservations when they count.
   */
  private reserve(spec: ResolvedSpawn, quota: QuotaRecord | undefined): Promise<SandboxRecord> {
    return this.admissionLock.run(async () => {
      await this.checkLimits(spec, quota);
      const placed = await this.placement(spec.provider, spec.ownerId);
      if (placed.selected === null) {
        throw new StacyError('no_eligible_worker', placed.status.reason ?? 'no eligible worker', {
          retryAfterSeconds: Math.max(1, Math.ceil(this.config.worker.heartbeatIntervalMs / 1000)),
        });
      }
      if (placed.selected.id !== this.workerId) {
        throw new StacyError(
          'remote_worker_rpc_unavailable',
          `placement selected remote worker ${placed.selected.id}, which this server cannot reach over worker RPC yet`,
        );
      }
      let id = newSandboxId();
      while ((await this.store.getSandbox(id)) !== undefined) id = newSandboxId();
      // The lease comes first: a record is only ever written by the worker that holds it.
      await this.acquireLease(id);
      const now = this.clock.now();
      const record: SandboxRecord = {
        id,
        state: 'creating',
        provider: spec.provider,
        image: spec.image,
        memoryMb: spec.memoryMb,
        vcpus: spec.vcpus,
        ownerId: spec.ownerId,
        workerId: this.workerId,
        runtimeId: null,
        template: spec.template,
        metadata: spec.metadata,
        createdAt: now,
        updatedAt: now,
        expiresAt: now + spec.ttlMs,
        stateReason: null,
      };
      try {
        await this.store.createSandbox(record);
      } catch (err) {
        await this.releaseLease(id);
        throw err;
      }
      return record;
    });
  }

  /**
   * Creates the runtime for a reserved record. On failure nothing is left behind: the runtime
   * (if any) is destroyed, the record is deleted and the lease released, so the store never
   * holds a record without a runtime nor a provider a runtime without a record. Only if the
   * record cannot be deleted is it marked `error` so an operator can see it.
   */
  private async materialise(record: SandboxRecord, spec: ResolvedSpawn): Promise<SandboxRecord> {
    // A destroy may have slipped in between the reservation and this lock: then there is
    // nothing left to create, and the destroyed record stays as history.
    const current = await this.store.getSandbox(record.id);
    if (current?.state !== 'creating') throw conflict(`sandbox ${record.id} was destroyed before its runtime was created`);
    const provider = this.providers.get(spec.provider);
    let runtimeId: string | null = null;
    try {
      if (provider === undefined) throw unavailable(`provider ${spec.provider} is not available`);
      const result = await this.callProvider('spawn', () =>
        provider.spawn({
          sandboxId: record.id,
          image: spec.image,
          memoryMb: spec.memoryMb,
          vcpus: spec.vcpus,
          ownerId: spec.ownerId,
          workerId: this.workerId,
          env: spec.env,
          ...(spec.networkMode !== undefined ? { networkMode: spec.networkMode } : {}),
          labels: {
            'stacyvm.sandbox_id': record.id,
            'stacyvm.worker_id': this.workerId,
            ...(spec.ownerId !== null ? { 'stacyvm.owner_id': spec.ownerId } : {}),
          },
        }),
      );
      runtimeId = result.runtimeId;
      const running = await this.store.updateSandbox(record.id, { state: 'running', runtimeId, updatedAt: this.clock.now() });
      this.emit('sandbox.spawned', {
        sandboxId: record.id,
        workerId: this.workerId,
        data: { provider: spec.provider, image: spec.image, ownerId: spec.ownerId, runtimeId },
      });
      return running;
    } catch (err) {
      await this.undoSpawn(record, provider, runtimeId, err);
      throw err;
    }
  }

  private async undoSpawn(record: SandboxRecord, provider: Provider | undefined, runtimeId: string | null, cause: unknown): Promise<void> {
    const reason = cause instanceof Error ? cause.message : String(cause);
    if (runtimeId !== null && provider !== undefined) {
      try {
        await provider.destroy(runtimeId);
      } catch (err) {
        this.log.error({ err, sandboxId: record.id, runtimeId }, 'could not remove the runtime of a failed spawn');
        // The runtime may live on: keep the record (as error) so reconciliation can find it.
        await this.markError(record.id, `spawn failed (${reason}); runtime ${runtimeId} could not be removed`);
        return;
      }
    }
    try {
      await this.store.deleteSandboxes([record.id]);
      await this.releaseLease(record.id);
    } catch (err) {
      this.log.error({ err, sandboxId: record.id }, 'could not delete the record of a failed spawn');
      await this.markError(record.id, `spawn failed: ${reason}`);
    }
    this.emit('sandbox.error', { sandboxId: record.id, workerId: this.workerId, data: { phase: 'spawn', reason } });
  }

  private async markError(id: string, reason: string): Promise<void> {
    try {
      await this.store.updateSandbox(id, { state: 'error', stateReason: reason, updatedAt: this.clock.now() });
    } catch (err) {
      this.log.error({ err, sandboxId: id }, 'could not mark sandbox as error');
    }
  }

  // ---------------------------------------------------------------- read

  /**
   * Active sandboxes (not destroyed or expired), oldest first. A caller with a user id who is
   * not an admin sees only its own; admins and anonymous local callers (no auth, no user id)
   * see all. Finished records stay readable through get() until the retention window ends.
   */
  list(caller: Caller): Promise<SandboxRecord[]> {
    return this.op('list', async () => {
      const filter = caller.userId !== null && !caller.isAdmin ? { states: ACTIVE_SANDBOX_STATES, ownerId: caller.userId } : { states: ACTIVE_SANDBOX_STATES };
      const rows = await this.store.listSandboxes(filter);
      return rows.sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1));
    });
  }

  get(id: string, caller: Caller): Promise<SandboxRecord> {
    return this.op('get', () => this.load(id, caller));
  }

  // ---------------------------------------------------------------- destroy / expire

  destroy(id: string, caller: Caller): Promise<void> {
    return this.op('destroy', async () => {
      const record = await this.load(id, caller);
      await this.teardown(record, 'destroyed', 'destroyed on request');
    });
  }

  /**
   * Tears a sandbox down under its lease. The lease is acquired (or renewed) before anything
   * changes; when another worker holds it this throws lease_conflict having changed nothing.
   * Terminal records are left alone (idempotent destroy).
   */
  private teardown(stale: SandboxRecord, final: 'destroyed' | 'expired', reason: string): Promise<SandboxRecord> {
    return this.sandboxLock.run(stale.id, async () => {
      // Re-read under the lock: a spawn or another teardown may have finished meanwhile.
      const record = await this.store.getSandbox(stale.id);
      if (record === undefined) throw notFound('sandbox', stale.id);
      // An extend that landed meanwhile wins over the reaper.
      if (final === 'expired' && record.expiresAt > this.clock.now()) return record;
      return this.teardownLocked(record, final, reason);
    });
  }

  private async teardownLocked(record: SandboxRecord, final: 'destroyed' | 'expired', reason: string): Promise<SandboxRecord> {
    if (TERMINAL_SANDBOX_STATES.includes(record.state)) return record;
    if (record.workerId !== null && record.workerId !== this.workerId) {
      const lease = await this.store.getLease(record.id);
      if (lease !== undefined && lease.holderId !== this.workerId && lease.expiresAt > (await this.store.now())) {
        throw new StacyError('lease_conflict', `sandbox ${record.id} is leased by worker ${lease.holderId}`);
      }
      throw new StacyError('remote_worker_rpc_unavailable', `sandbox ${record.id} runs on worker ${record.workerId}, which this server cannot reach over worker RPC yet`);
    }
    await this.acquireLease(record.id);
    if (record.runtimeId !== null) {
      const provider = this.providers.get(record.provider);
      if (provider !== undefined) {
        const runtimeId = record.runtimeId;
        await this.callProvider('destroy', () => provider.destroy(runtimeId));
      } else {
        this.log.warn({ sandboxId: record.id, provider: record.provider }, 'provider not configured; marking sandbox destroyed without reaching its runtime');
        reason = `${reason}; provider ${record.provider} not configured, runtime not verified`;
      }
    }
    const updated = await this.store.updateSandbox(record.id, { state: final, stateReason: reason, updatedAt: this.clock.now() });
    await this.releaseLease(record.id);
    this.emit(final === 'expired' ? 'sandbox.expired' : 'sandbox.destroyed', {
      sandboxId: record.id,
      workerId: this.workerId,
      data: { provider: record.provider, ownerId: record.ownerId, reason },
    });
    return updated;
  }

  prune(): Promise<number> {
    return this.op('prune', async () => {
      const now = this.clock.now();
      const expired = await this.store.listSandboxes({ states: ACTIVE_SANDBOX_STATES, expiresBefore: now });
      let n = 0;
      for (const record of expired) {
        if (record.workerId !== null && record.workerId !== this.workerId) continue;
        try {
          if ((await this.teardown(record, 'expired', 'ttl expired')).state === 'expired') n += 1;
        } catch (err) {
          this.log.warn({ err, sandboxId: record.id }, 'could not expire sandbox');
        }
      }
      return n;
    });
  }

  /** Forgets terminal records older than the retention window. */
  private async forgetOld(): Promise<number> {
    const cutoff = this.clock.now() - this.config.server.recordRetentionMs;
    const old = await this.store.listSandboxes({ states: TERMINAL_SANDBOX_STATES });
    const ids = old.filter((r) => r.updatedAt <= cutoff).map((r) => r.id);
    return ids.length === 0 ? 0 : this.store.deleteSandboxes(ids);
  }

  /**
   * Deletes leases that expired longer than the record retention ago and whose sandbox record
   * is forgotten; otherwise every released lease would stay as an expired row forever.
   */
  private async pruneLeases(): Promise<number> {
    const cutoff = (await this.store.now()) - this.config.server.recordRetentionMs;
    return this.store.pruneLeases(cutoff);
  }

  /**
   * Asks the provider about the runtimes of this worker's live sandboxes, at most
   * RUNTIME_CHECKS_PER_PASS per pass, continuing round-robin from where the last pass stopped.
   * A runtime that stopped makes its sandbox `unhealthy`; one that is gone makes it `destroyed`
   * and releases its lease. A provider that is itself unhealthy is not asked: its answers would
   * say nothing about the runtimes.
   */
  private async checkRuntimes(): Promise<void> {
    const mine = (await this.store.listSandboxes({ states: OPERABLE_STATES, workerId: this.workerId }))
      .filter((r) => r.runtimeId !== null)
      .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    if (mine.length === 0) return;
    const start = mine.findIndex((r) => r.id > this.runtimeCursor);
    const ordered = start <= 0 ? mine : [...mine.slice(start), ...mine.slice(0, start)];
    const batch = ordered.slice(0, RUNTIME_CHECKS_PER_PASS);
    this.runtimeCursor = batch[batch.length - 1]?.id ?? '';
    const usable = new Map<string, boolean>();
    for (const record of batch) {
      if (this.stopped) return;
      const provider = this.providers.get(record.provider);
      if (provider === undefined) continue;
      if (!usable.has(provider.name)) usable.set(provider.name, (await this.healthOf(provider)).health.healthy);
      if (usable.get(provider.name) !== true) continue;
      try {
        await this.sandboxLock.run(record.id, () => this.checkRuntime(record.id, provider));
      } catch (err) {
        this.log.warn({ err, sandboxId: record.id }, 'runtime check failed');
      }
    }
  }

  private async checkRuntime(id: string, provider: Provider): Promise<void> {
    // Re-read under the lock: a destroy or extend may have finished meanwhile.
    const record = await this.store.getSandbox(id);
    if (record === undefined || !OPERABLE_STATES.includes(record.state) || record.runtimeId === null || record.workerId !== this.workerId) return;
    const runtimeId = record.runtimeId;
    const status = await withTimeout(provider.status(runtimeId), HEALTH_TIMEOUT_MS, `status of runtime ${runtimeId}`);
    const recovered = status === 'running' && record.state === 'unhealthy' && record.stateReason === RUNTIME_STOPPED;
    if (status === 'running' && !recovered) return;
    if (status === 'stopped' && record.state === 'unhealthy') return;
    // Every change to the record happens under its lease; another holder's sandbox is left alone.
    try {
      await this.acquireLease(id);
    } catch (err) {
      if (isStacyError(err, 'lease_conflict')) return;
      throw err;
    }
    const now = this.clock.now();
    if (status === 'missing') {
      const reason = `runtime ${runtimeId} is missing`;
      await this.store.updateSandbox(id, { state: 'destroyed', stateReason: reason, updatedAt: now });
      await this.releaseLease(id);
      this.log.warn({ sandboxId: id, runtimeId }, 'runtime disappeared; sandbox marked destroyed');
      this.emit('sandbox.destroyed', { sandboxId: id, workerId: this.workerId, data: { provider: record.provider, ownerId: record.ownerId, reason } });
    } else if (status === 'stopped') {
      await this.store.updateSandbox(id, { state: 'unhealthy', stateReason: RUNTIME_STOPPED, updatedAt: now });
      this.log.warn({ sandboxId: id, runtimeId }, 'runtime stopped; sandbox marked unhealthy');
      this.emit('sandbox.error', { sandboxId: id, workerId: this.workerId, data: { phase: 'health', reason: RUNTIME_STOPPED, runtimeId } });
    } else {
      await this.store.updateSandbox(id, { state: 'running', stateReason: null, updatedAt: now });
      this.log.info({ sandboxId: id, runtimeId }, 'runtime running again; sandbox marked running');
    }
  }

  /** Renews this worker's leases on its live sandboxes before they lapse. */
  private async keepLeases(): Promise<void> {
    const mine = await this.store.listSandboxes({ states: ACTIVE_SANDBOX_STATES, workerId: this.workerId });
    if (mine.length === 0) return;
    const leases = new Map((await this.store.listLeases({ holderId: this.workerId })).map((l) => [l.resourceId, l]));
    const now = await this.store.now();
    for (const record of mine) {
      const lease = leases.get(record.id);
      if (lease !== undefined && lease.expiresAt - now > this.leaseTtl() / 2) continue;
      try {
        await this.acquireLease(record.id);
      } catch (err) {
        this.log.warn({ err, sandboxId: record.id }, 'could not keep the sandbox lease');
      }
    }
  }

  /** Emits worker.stale once per worker when its heartbeat falls out of the freshness window. */
  private async watchWorkers(): Promise<void> {
    const now = this.clock.now();
    const seen = new Set<string>();
    for (const w of await this.store.listWorkers()) {
      seen.add(w.id);
      const stale = isStale(w, now, this.config.workers.staleAfterMs);
      if (stale && !this.staleWorkers.has(w.id)) {
        this.staleWorkers.add(w.id);
        this.emit('worker.stale', { workerId: w.id, data: { lastHeartbeat: w.lastHeartbeat, status: w.status } });
      } else if (!stale) {
        this.staleWorkers.delete(w.id);
      }
    }
    for (const id of this.staleWorkers) if (!seen.has(id)) this.staleWorkers.delete(id);
  }

  /** Re-settles sandboxes whose provider was unavailable at start-up once it answers again. */
  private async recoverProviderErrors(): Promise<void> {
    for (const id of [...this.awaitingProvider]) {
      const record = await this.store.getSandbox(id);
      if (record === undefined || record.state !== 'error' || (record.workerId !== null && record.workerId !== this.workerId)) {
        this.awaitingProvider.delete(id);
        continue;
      }
      const provider = this.providers.get(record.provider);
      if (provider === undefined || !(await this.healthOf(provider)).health.healthy) continue;
      this.awaitingProvider.delete(id);
      await this.reconcileRecord(record, new Map([[record.provider, true]]));
    }
  }

  extend(id: string, ttlMs: number, caller: Caller): Promise<SandboxRecord> {
    return this.op('extend', async () => {
      const record = await this.load(id, caller);
      if (TERMINAL_SANDBOX_STATES.includes(record.state)) throw conflict(`sandbox ${id} is ${record.state}`);
      if (!Number.isFinite(ttlMs) || ttlMs <= 0) throw badRequest('ttl: must be a positive duration');
      const max = maxTtlFor(this.config, await this.ownerQuota(record.ownerId));
      const now = this.clock.now();
      const granted = Math.min(ttlMs, max);
      const updated = await this.store.updateSandbox(id, { expiresAt: now + granted, updatedAt: now });
      this.emit('sandbox.extended', {
        sandboxId: id,
        workerId: record.workerId ?? undefined,
        data: { requestedTtlMs: ttlMs, grantedTtlMs: granted, expiresAt: updated.expiresAt, capped: granted < ttlMs },
      });
      return updated;
    });
  }

  // ---------------------------------------------------------------- exec

  private execTimeout(requested: number | undefined): number {
    const d = this.config.defaults;
    if (requested === undefined) return d.defaultExecTimeoutMs;
    if (!Number.isFinite(requested) || requested <= 0) throw badRequest('timeout: must be a positive duration');
    if (requested > d.maxExecTimeoutMs) throw badRequest(`timeout: ${formatDuration(requested)} exceeds the maximum exec timeout of ${formatDuration(d.maxExecTimeoutMs)}`);
    return requested;
  }

  private execRequest(call: ExecCall): ExecRequest {
    if (call.command.length === 0) throw badRequest('command: required');
    if (call.command.includes('\0') || call.args.some((a) => a.includes('\0'))) throw badRequest('command: must not contain NUL bytes');
    const req: ExecRequest = { command: call.command, args: call.args, mode: call.mode, env: checkEnv(call.env), timeoutMs: this.execTimeout(call.timeoutMs) };
    if (call.workdir !== undefined) req.workdir = normalizeSandboxPath(call.workdir, 'workdir');
    return req;
  }

  private async recordExec(sandboxId: string, req: ExecRequest, startedAt: number, outcome: 'ok' | 'timeout' | 'error', exitCode: number | null, durationMs: number, error?: unknown): Promise<void> {
    try {
      await this.store.appendExecLog({ sandboxId, command: req.command, args: req.args, mode: req.mode, exitCode, outcome, durationMs, startedAt });
    } catch (err) {
      this.log.warn({ err, sandboxId }, 'could not append exec log');
    }
    const data: Record<string, unknown> = { command: req.command, mode: req.mode, exitCode, durationMs };
    if (outcome === 'ok') this.emit('exec.completed', { sandboxId, workerId: this.workerId, data });
    else if (outcome === 'timeout') this.emit('exec.timeout', { sandboxId, workerId: this.workerId, data: { ...data, timeoutMs: req.timeoutMs } });
    else this.emit('exec.failed', { sandboxId, workerId: this.workerId, data: { ...data, error: error instanceof Error ? error.message : String(error) } });
  }

  exec(id: string, call: ExecCall, caller: Caller): Promise<ExecOutcome> {
    return this.op('exec', async () => {
      const req = this.execRequest(call);
      const { provider, runtimeId } = await this.operable(id, caller);
      const cap = this.config.defaults.maxExecOutputBytes;
      const out = new Capped(cap);
      const err = new Capped(cap);
      const startedAt = this.clock.now();
      const t0 = performance.now();
      try {
        let exit: { exitCode: number; durationMs: number } | undefined;
        for await (const ev of provider.execStream(runtimeId, req)) {
          if (ev.type === 'exit') exit = { exitCode: ev.exitCode, durationMs: ev.durationMs };
          else (ev.type === 'stdout' ? out : err).push(ev.data);
        }
        if (exit === undefined) throw providerError('exec ended without an exit status');
        await this.recordExec(id, req, startedAt, 'ok', exit.exitCode, exit.durationMs);
        return { exitCode: exit.exitCode, stdout: out.text(), stderr: err.text(), durationMs: exit.durationMs };
      } catch (e) {
        const timedOut = isStacyError(e, 'timeout');
        await this.recordExec(id, req, startedAt, timedOut ? 'timeout' : 'error', null, Math.round(performance.now() - t0), e);
        if (e instanceof StacyError) throw e;
        throw providerError(`exec: ${e instanceof Error ? e.message : String(e)}`, e);
      }
    });
  }

  execStream(id: string, call: ExecCall, caller: Caller, signal?: AbortSignal): AsyncIterable<ExecEvent> {
    // Validation and lookup run on the first next(): callers should pull the first event
    // before committing a response status.
    return this.streamExec(id, call, caller, signal);
  }

  private async *streamExec(id: string, call: ExecCall, caller: Caller, signal?: AbortSignal): AsyncGenerator<ExecEvent> {
    const t0 = performance.now();
    let outcome = 'ok';
    let req: ExecRequest | undefined;
    let finished = false;
    const startedAt = this.clock.now();
    try {
      const request = this.execRequest(call);
      const { provider, runtimeId } = await this.operable(id, caller);
      // From here on the command reaches the runtime, so every ending is logged.
      req = request;
      for await (const ev of provider.execStream(runtimeId, request, signal)) {
        if (ev.type === 'exit') {
          finished = true;
          await this.recordExec(id, request, startedAt, 'ok', ev.exitCode, ev.durationMs);
        }
        yield ev;
      }
      if (!finished) throw providerError('exec ended without an exit status');
    } catch (e) {
      outcome = isStacyError(e) ? e.code : 'provider_error';
      if (req !== undefined && !finished) {
        await this.recordExec(id, req, startedAt, isStacyError(e, 'timeout') ? 'timeout' : 'error', null, Math.round(performance.now() - t0), e);
      }
      if (e instanceof StacyError) throw e;
      throw providerError(`exec: ${e instanceof Error ? e.message : String(e)}`, e);
    } finally {
      if (req !== undefined && !finished && outcome === 'ok') {
        // The consumer stopped early (client went away); the provider killed the command.
        outcome = 'cancelled';
        await this.recordExec(id, req, startedAt, 'error', null, Math.round(performance.now() - t0), new Error('cancelled by the client'));
      }
      this.metricsRecorder.record('exec_stream', outcome, performance.now() - t0);
    }
  }

  logs(id: string, lines: number, caller: Caller): Promise<string[]> {
    return this.op('logs', async () => {
      if (!Number.isInteger(lines) || lines < 1 || lines > MAX_LOG_LINES) throw badRequest(`lines: must be an integer between 1 and ${MAX_LOG_LINES}`);
      const { provider, runtimeId } = await this.operable(id, caller);
      return this.callProvider('logs', () => provider.consoleLog(runtimeId, lines));
    });
  }

  // ---------------------------------------------------------------- files

  writeFile(id: string, path: string, content: Buffer, mode: number | undefined, caller: Caller): Promise<void> {
    return this.op('file_write', async () => {
      const p = normalizeSandboxPath(path);
      if (mode !== undefined && (!Number.isInteger(mode) || mode < 0 || mode > 0o7777)) throw badRequest('mode: must be permission bits between 0 and 7777 (octal)');
      const { provider, runtimeId } = await this.operable(id, caller);
      return this.callProvider('file_write', () => provider.writeFile(runtimeId, p, content, mode));
    });
  }

  readFile(id: string, path: string, caller: Caller): Promise<Readable> {
    return this.op('file_read', async () => {
      const p = normalizeSandboxPath(path);
      const { provider, runtimeId } = await this.operable(id, caller);
      return this.callProvider('file_read', () => provider.readFile(runtimeId, p));
    });
  }

  listFiles(id: string, path: string, caller: Caller): Promise<FileEntry[]> {
    return this.op('file_list', async () => {
      const p = normalizeSandboxPath(path);
      const { provider, runtimeId } = await this.operable(id, caller);
      return this.callProvider('file_list', () => provider.listFiles(runtimeId, p));
    });
  }

  deleteFile(id: string, path: string, recursive: boolean, caller: Caller): Promise<void> {
    return this.op('file_delete', async () => {
      const p = normalizeSandboxPath(path);
      if (p === '/') throw badRequest('path: refusing to delete the sandbox root');
      const { provider, runtimeId } = await this.operable(id, caller);
      return this.callProvider('file_delete', () => provider.deleteFile(runtimeId, p, recursive));
    });
  }

  moveFile(id: string, from: string, to: string, caller: Caller): Promise<void> {
    return this.op('file_move', async () => {
      const a = normalizeSandboxPath(from, 'old_path');
      const b = normalizeSandboxPath(to, 'new_path');
      const { provider, runtimeId } = await this.operable(id, caller);
      return this.callProvider('file_move', () => provider.moveFile(runtimeId, a, b));
    });
  }

  chmod(id: string, path: string, mode: number, caller: Caller): Promise<void> {
    return this.op('file_chmod', async () => {
      const p = normalizeSandboxPath(path);
      if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw badRequest('mode: must be permission bits between 0 and 7777 (octal)');
      const { provider, runtimeId } = await this.operable(id, caller);
      return this.callProvider('file_chmod', () => provider.chmod(runtimeId, p, mode));
    });
  }

  stat(id: string, path: string, caller: Caller): Promise<FileEntry> {
    return this.op('file_stat', async () => {
      const p = normalizeSandboxPath(path);
      const { provider, runtimeId } = await this.operable(id, caller);
      return this.callProvider('file_stat', () => provider.stat(runtimeId, p));
    });
  }

  glob(id: string, pattern: string, caller: Caller): Promise<string[]> {
    return this.op('file_glob', async () => {
      const p = normalizeSandboxPath(pattern, 'pattern');
      const { provider, runtimeId } = await this.operable(id, caller);
      return this.callProvider('file_glob', () => provider.glob(runtimeId, p));
    });
  }

  // ---------------------------------------------------------------- templates

  createTemplate(input: TemplateInput): Promise<TemplateRecord> {
    return this.op('template_create', async () => {
      checkTemplate(input, this.config, this.providerNames());
      const now = this.clock.now();
      const record = templateRecord(input, now, now);
      await this.store.createTemplate(record);
      return record;
    });
  }

  listTemplates(): Promise<TemplateRecord[]> {
    return this.op('template_list', async () => (await this.store.listTemplates()).sort((a, b) => (a.name < b.name ? -1 : 1)));
  }

  getTemplate(name: string): Promise<TemplateRecord> {
    return this.op('template_get', async () => {
      const t = await this.store.getTemplate(name);
      if (t === undefined) throw notFound('template', name);
      return t;
    });
  }

  updateTemplate(name: string, input: TemplateInput): Promise<TemplateRecord> {
    return this.op('template_update', async () => {
      checkTemplateName(name);
      if (input.name !== name) throw badRequest('name: cannot be changed; the body name must match the path');
      checkTemplate(input, this.config, this.providerNames());
      // PUT replaces the whole template: unset fields go back to "use the server default".
      const { name: _n, createdAt: _c, ...patch } = templateRecord(input, 0, this.clock.now());
      return this.store.updateTemplate(name, patch);
    });
  }

  deleteTemplate(name: string): Promise<void> {
    return this.op('template_delete', () => this.store.deleteTemplate(name));
  }

  spawnFromTemplate(name: string, overrides: SpawnRequest, caller: Caller): Promise<SandboxRecord> {
    return this.op('template_spawn', async () => {
      if ((await this.store.getTemplate(name)) === undefined) throw notFound('template', name);
      return this.spawn({ ...overrides, template: name }, caller);
    });
  }

  // ---------------------------------------------------------------- providers

  private async checkHealth(provider: Provider): Promise<HealthEntry> {
    const t0 = performance.now();
    let health: ProviderHealth;
    let timer: NodeJS.Timeout | undefined;
    try {
      health = await Promise.race([
        provider.health(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`health check timed out after ${HEALTH_TIMEOUT_MS}ms`)), HEALTH_TIMEOUT_MS);
          timer.unref();
        }),
      ]);
    } catch (err) {
      health = { healthy: false, latencyMs: Math.round(performance.now() - t0), error: err instanceof Error ? err.message : String(err), details: {} };
    } finally {
      if (timer !== undefined) clearTimeout(timer);
    }
    const entry = { health, lastChecked: this.clock.now() };
    this.health.set(provider.name, entry);
    return entry;
  }

  private async healthOf(provider: Provider, fresh = false): Promise<HealthEntry> {
    const cached = this.health.get(provider.name);
    if (!fresh && cached !== undefined && this.clock.now() - cached.lastChecked < HEALTH_CACHE_MS) return cached;
    return this.checkHealth(provider);
  }

  private async summaries(fresh = false): Promise<ProviderSummary[]> {
    const active = await this.store.listSandboxes({ states: ACTIVE_SANDBOX_STATES });
    const out: ProviderSummary[] = [];
    for (const provider of this.providers.values()) {
      const { health, lastChecked } = await this.healthOf(provider, fresh);
      const s: ProviderSummary = {
        name: provider.name,
        healthy: health.healthy,
        default: provider.name === this.defaultProviderName,
        latencyMs: health.latencyMs,
        lastChecked,
        capabilities: { isolation: provider.capabilities.isolation, features: [...provider.capabilities.features] },
        runtimeCount: active.filter((r) => r.provider === provider.name && r.runtimeId !== null).length,
      };
      if (health.error !== undefined) s.error = health.error;
      out.push(s);
    }
    return out;
  }

  listProviders(): Promise<ProviderSummary[]> {
    return this.op('provider_list', () => this.summaries());
  }

  getProvider(name: string): Promise<ProviderDetail> {
    return this.op('provider_get', async () => {
      const provider = this.providers.get(name);
      if (provider === undefined) throw notFound('provider', name);
      const { health } = await this.healthOf(provider);
      const sandboxCount = await this.store.countSandboxes({ states: ACTIVE_SANDBOX_STATES, provider: name });
      const section = (this.redacted.providers as unknown as Record<string, unknown>)[name];
      return {
        name,
        healthy: health.healthy,
        default: name === this.defaultProviderName,
        sandboxCount,
        health,
        config: section !== null && typeof section === 'object' ? { ...(section as Record<string, unknown>) } : {},
      };
    });
  }

  testProviders(): Promise<Record<string, boolean>> {
    return this.op('provider_test', async () => {
      const out: Record<string, boolean> = {};
      for (const provider of this.providers.values()) out[provider.name] = (await this.checkHealth(provider)).health.healthy;
      return out;
    });
  }

  readiness(): Promise<{ ready: boolean; store: boolean; providers: Record<string, boolean> }> {
    return this.op('readiness', async () => {
      let store = true;
      try {
        await this.store.ping();
      } catch {
        store = false;
      }
      const providers: Record<string, boolean> = {};
      for (const provider of this.providers.values()) providers[provider.name] = (await this.healthOf(provider)).health.healthy;
      return { ready: store && Object.values(providers).some(Boolean), store, providers };
    });
  }

  // ---------------------------------------------------------------- workers & leases

  private view(w: WorkerRecord): WorkerView {
    return { ...w, stale: isStale(w, this.clock.now(), this.config.workers.staleAfterMs) };
  }

  listWorkers(): Promise<WorkerView[]> {
    return this.op('worker_list', async () => (await this.store.listWorkers()).map((w) => this.view(w)).sort((a, b) => (a.id < b.id ? -1 : 1)));
  }

  getWorker(id: string): Promise<WorkerView> {
    return this.op('worker_get', async () => {
      const w = await this.store.getWorker(id);
      if (w === undefined) throw notFound('worker', id);
      return this.view(w);
    });
  }

  heartbeat(workerId: string, beat: HeartbeatInput): Promise<WorkerView> {
    return this.op('worker_heartbeat', async () => {
      checkWorkerId(workerId);
      if (beat.hostname.length === 0 || beat.hostname.length > 255) throw badRequest('hostname: 1-255 characters');
      const now = this.clock.now();
      const existing = await this.store.getWorker(workerId);
      const saved = await this.store.saveWorker({
        id: workerId,
        hostname: beat.hostname,
        status: beat.status,
        providers: [...beat.providers],
        capabilities: [...beat.capabilities],
        capacity: { ...beat.capacity },
        lastHeartbeat: now,
        createdAt: existing?.createdAt ?? now,
        updatedAt: now,
      });
      this.staleWorkers.delete(workerId);
      this.emit('worker.heartbeat', { workerId, data: { status: saved.status, hostname: saved.hostname } });
      return this.view(saved);
    });
  }

  deleteWorker(id: string): Promise<void> {
    return this.op('worker_delete', () => this.store.deleteWorker(id));
  }

  renewLease(workerId: string, resourceId: string, ttlMs: number): Promise<LeaseRecord> {
    return this.op('lease_renew', async () => {
      checkWorkerId(workerId);
      if (!Number.isFinite(ttlMs) || ttlMs <= 0) throw badRequest('ttl: must be a positive duration');
      // A worker may hold a lease for at most a few heartbeats; longer would outlive its death by too much.
      const max = Math.max(this.leaseTtl(), this.config.workers.staleAfterMs);
      if (ttlMs > max) throw badRequest(`ttl: ${formatDuration(ttlMs)} exceeds the maximum lease TTL of ${formatDuration(max)}`);
      return this.store.renewLease(resourceId, workerId, ttlMs);
    });
  }

  // ---------------------------------------------------------------- quotas

  listQuotas(): Promise<QuotaRecord[]> {
    return this.op('quota_list', async () => (await this.store.listQuotas()).sort((a, b) => (a.ownerId < b.ownerId ? -1 : 1)));
  }

  getQuota(ownerId: string): Promise<QuotaRecord> {
    return this.op('quota_get', async () => {
      const q = await this.store.getQuota(ownerId);
      if (q === undefined) throw notFound('quota', ownerId);
      return q;
    });
  }

  putQuota(ownerId: string, quota: Omit<QuotaRecord, 'ownerId' | 'updatedAt'>): Promise<QuotaRecord> {
    return this.op('quota_put', async () => {
      checkOwnerId(ownerId, 'owner');
      for (const [field, v] of Object.entries({ max_sandboxes: quota.maxSandboxes, max_memory_mb: quota.maxMemoryMb, max_vcpus: quota.maxVcpus, max_ttl: quota.maxTtlMs })) {
        if (v !== null && (!Number.isInteger(v) || v < 0)) throw badRequest(`${field}: must be a non-negative integer or null`);
      }
      if (quota.maxTtlMs !== null && quota.maxTtlMs > this.config.defaults.maxTtlMs) {
        throw badRequest(`max_ttl: ${formatDuration(quota.maxTtlMs)} exceeds the server maximum TTL of ${formatDuration(this.config.defaults.maxTtlMs)}`);
      }
      return this.store.putQuota({ ownerId, maxSandboxes: quota.maxSandboxes, maxMemoryMb: quota.maxMemoryMb, maxVcpus: quota.maxVcpus, maxTtlMs: quota.maxTtlMs, updatedAt: this.clock.now() });
    });
  }

  deleteQuota(ownerId: string): Promise<void> {
    return this.op('quota_delete', () => this.store.deleteQuota(ownerId));
  }

  quotaUsage(ownerId: string): Promise<QuotaUsage> {
    return this.op('quota_usage', async () => {
      checkOwnerId(ownerId, 'owner');
      const rows = await this.store.listSandboxes({ states: ACTIVE_SANDBOX_STATES, ownerId });
      return {
        ownerId,
        activeSandboxes: rows.length,
        memoryMb: rows.reduce((s, r) => s + r.memoryMb, 0),
        vcpus: rows.reduce((s, r) => s + r.vcpus, 0),
        quota: (await this.store.getQuota(ownerId)) ?? null,
      };
    });
  }

  // ---------------------------------------------------------------- observability

  subscribe(listener: (event: StacyEvent) => void): () => void {
    return this.events.subscribe(listener);
  }

  private async snapshot(): Promise<{
    workers: WorkerView[];
    leases: LeaseRecord[];
    storeNow: number;
    all: SandboxRecord[];
  }> {
    const [workers, leases, storeNow, all] = await Promise.all([
      this.store.listWorkers(),
      this.store.listLeases(),
      this.store.now(),
      this.store.listSandboxes(),
    ]);
    return { workers: workers.map((w) => this.view(w)).sort((a, b) => (a.id < b.id ? -1 : 1)), leases, storeNow, all };
  }

  diagnostics(): Promise<Diagnostics> {
    return this.op('diagnostics', async () => {
      const { workers, leases, storeNow, all } = await this.snapshot();
      const active = all.filter((r) => ACTIVE_SANDBOX_STATES.includes(r.state));
      const byHolder: Record<string, number> = {};
      for (const l of leases) if (l.expiresAt > storeNow) byHolder[l.holderId] = (byHolder[l.holderId] ?? 0) + 1;
      let storeHealthy = true;
      try {
        await this.store.ping();
      } catch {
        storeHealthy = false;
      }
      return {
        version: this.version,
        uptimeMs: this.clock.now() - this.startedAt,
        scheduler: this.lastScheduler,
        workers: workerCounts(workers, workers),
        leases: { ...leaseCounts(leases, storeNow), byHolder },
        sandboxes: {
          total: all.length,
          active: active.length,
          byState: countBy(all, (r) => r.state),
          byProvider: countBy(active, (r) => r.provider),
          byWorker: countBy(active, (r) => r.workerId ?? 'unassigned'),
        },
        providers: await this.summaries(),
        store: { dialect: this.store.dialect, healthy: storeHealthy },
        config: this.diagnosticsConfig,
      };
    });
  }

  metrics(): Promise<Record<string, unknown>> {
    return this.op('metrics', async () => {
      const { workers, leases, storeNow, all } = await this.snapshot();
      const active = all.filter((r) => ACTIVE_SANDBOX_STATES.includes(r.state));
      const { items: _items, ...workerTotals } = workerCounts(workers, workers);
      return {
        uptimeMs: this.clock.now() - this.startedAt,
        operations: this.metricsRecorder.summary(),
        sandboxes: { total: all.length, active: active.length, byState: countBy(all, (r) => r.state), byWorker: countBy(active, (r) => r.workerId ?? 'unassigned') },
        workers: workerTotals,
        leases: leaseCounts(leases, storeNow),
        scheduler: this.lastScheduler,
      };
    });
  }

  prometheus(): Promise<{ contentType: string; body: string }> {
    return this.op('prometheus', async () => {
      const { workers, leases, storeNow, all } = await this.snapshot();
      const active = all.filter((r) => ACTIVE_SANDBOX_STATES.includes(r.state));
      const { items: _items, ...workerTotals } = workerCounts(workers, workers);
      const byWorker = countBy(active, (r) => r.workerId ?? 'unassigned');
      // Every registered worker gets a series, also at zero, so dashboards see idle workers.
      for (const w of workers) byWorker[w.id] ??= 0;
      const providersHealthy: Record<string, boolean> = {};
      for (const [name, entry] of this.health) providersHealthy[name] = entry.health.healthy;
      const snap: GaugeSnapshot = {
        workers: workerTotals,
        leases: leaseCounts(leases, storeNow),
        sandboxesByWorker: byWorker,
        sandboxesByState: countBy(all, (r) => r.state),
        providersHealthy,
      };
      return this.metricsRecorder.exposition(snap);
    });
  }

  // ---------------------------------------------------------------- reconciliation

  /**
   * Brings the store and the providers back into agreement after a restart or crash. Only
   * records owned by this worker (or by nobody) are touched.
   */
  private async reconcile(): Promise<void> {
    const all = await this.store.listSandboxes();
    const mine = all.filter((r) => r.workerId === null || r.workerId === this.workerId);
    const reachable = new Map<string, boolean>();
    for (const [name, provider] of this.providers) reachable.set(name, (await this.checkHealth(provider)).health.healthy);

    for (const record of mine) {
      if (TERMINAL_SANDBOX_STATES.includes(record.state)) continue;
      try {
        await this.reconcileRecord(record, reachable);
      } catch (err) {
        this.log.warn({ err, sandboxId: record.id }, 'reconcile: could not settle sandbox');
      }
    }
    await this.reconcileInventory(all, reachable);
  }

  private async reconcileRecord(record: SandboxRecord, reachable: Map<string, boolean>): Promise<void> {
    // Reconcile changes a record only under its lease, like every other mutation.
    try {
      await this.acquireLease(record.id);
    } catch (err) {
      if (isStacyError(err, 'lease_conflict')) {
        this.log.warn({ sandboxId: record.id }, 'reconcile: sandbox leased by another worker; left alone');
        return;
      }
      throw err;
    }
    const provider = this.providers.get(record.provider);
    if (provider === undefined || reachable.get(record.provider) !== true) {
      const why = provider === undefined ? `provider ${record.provider} is not configured` : `provider ${record.provider} is unavailable`;
      if (provider !== undefined) this.awaitingProvider.add(record.id);
      if (record.state !== 'error' || record.stateReason !== why) {
        await this.store.updateSandbox(record.id, { state: 'error', stateReason: why, updatedAt: this.clock.now() });
        this.log.warn({ sandboxId: record.id, reason: why }, 'reconcile: sandbox marked error');
        this.emit('sandbox.error', { sandboxId: record.id, workerId: this.workerId, data: { phase: 'reconcile', reason: why } });
      }
      return;
    }
    if (record.state === 'creating') {
      // A crash mid-spawn: the caller never got this sandbox, so finish it off rather than guess.
      if (record.runtimeId !== null) await provider.destroy(record.runtimeId);
      await this.finish(record, 'interrupted while creating (server restarted)');
      return;
    }
    const status = record.runtimeId === null ? 'missing' : await provider.status(record.runtimeId);
    if (status === 'missing') {
      await this.finish(record, 'runtime missing at start-up');
      return;
    }
    // The runtime is alive: this worker now holds its lease and owns the record.
    const state: SandboxState = status === 'stopped' ? 'stopped' : record.state === 'error' || record.state === 'stopped' ? 'running' : record.state;
    if (state !== record.state || record.workerId === null) {
      await this.store.updateSandbox(record.id, {
        state,
        workerId: this.workerId,
        stateReason: state === 'stopped' ? 'runtime found stopped at start-up' : null,
        updatedAt: this.clock.now(),
      });
    }
  }

  /** Marks a record destroyed and releases its lease. */
  private async finish(record: SandboxRecord, reason: string): Promise<void> {
    await this.store.updateSandbox(record.id, { state: 'destroyed', stateReason: reason, updatedAt: this.clock.now() });
    await this.releaseLease(record.id);
    this.log.info({ sandboxId: record.id, reason }, 'reconcile: sandbox marked destroyed');
    this.emit('sandbox.destroyed', { sandboxId: record.id, workerId: this.workerId, data: { reason } });
  }

  private async reconcileInventory(records: SandboxRecord[], reachable: Map<string, boolean>): Promise<void> {
    for (const [name, provider] of this.providers) {
      if (provider.inventory === undefined || reachable.get(name) !== true) continue;
      let runtimes;
      try {
        runtimes = await provider.inventory();
      } catch (err) {
        this.log.warn({ err, provider: name }, 'reconcile: inventory failed');
        continue;
      }
      // Re-read so records settled above (e.g. creating → destroyed) are seen as they are now.
      const current = await this.store.listSandboxes({ provider: name });
      const byRuntime = new Map(current.filter((r) => r.runtimeId !== null).map((r) => [r.runtimeId as string, r]));
      const byId = new Map(records.map((r) => [r.id, r]));
      for (const r of current) byId.set(r.id, r);
      for (const info of runtimes) {
        if (info.workerId !== undefined && info.workerId !== this.workerId) continue;
        const known = byRuntime.get(info.runtimeId) ?? (info.sandboxId !== undefined ? byId.get(info.sandboxId) : undefined);
        try {
          if (known !== undefined) {
            const live = ACTIVE_SANDBOX_STATES.includes(known.state) && known.runtimeId === info.runtimeId;
            if (!live && (known.workerId === null || known.workerId === this.workerId)) {
              // The record says this runtime should not exist (destroyed, or a crash before the
              // runtime id was recorded): remove the runtime.
              await provider.destroy(info.runtimeId);
              this.log.info({ provider: name, runtimeId: info.runtimeId, sandboxId: known.id }, 'reconcile: removed runtime of a finished sandbox');
            }
            continue;
          }
          if (this.config.reconcile.unknownRuntimes === 'adopt') await this.adopt(provider, info);
          else {
            await provider.destroy(info.runtimeId);
            this.log.info({ provider: name, runtimeId: info.runtimeId }, 'reconcile: destroyed unknown runtime');
          }
        } catch (err) {
          this.log.warn({ err, provider: name, runtimeId: info.runtimeId }, 'reconcile: could not settle runtime');
        }
      }
    }
  }

  /** Adopts a runtime the store does not know: lease first, then a record stamped with this worker. */
  private async adopt(provider: Provider, info: { runtimeId: string; status: string; sandboxId?: string; ownerId?: string; createdAt?: number }): Promise<void> {
    let id = info.sandboxId !== undefined && SANDBOX_ID_PATTERN.test(info.sandboxId) ? info.sandboxId : newSandboxId();
    while ((await this.store.getSandbox(id)) !== undefined) id = newSandboxId();
    await this.acquireLease(id);
    const now = this.clock.now();
    const d = this.config.defaults;
    const record: SandboxRecord = {
      id,
      state: info.status === 'stopped' ? 'stopped' : 'running',
      provider: provider.name,
      // The runtime's labels carry no image or size: say so rather than invent them.
      image: 'unknown',
      memoryMb: d.memoryMb,
      vcpus: d.vcpus,
      ownerId: info.ownerId !== undefined && info.ownerId.length > 0 ? info.ownerId : null,
      workerId: this.workerId,
      runtimeId: info.runtimeId,
      template: null,
      metadata: { adopted: 'true' },
      createdAt: info.createdAt ?? now,
      updatedAt: now,
      // Adopted sandboxes get a fresh default TTL so forgotten ones are still reaped.
      expiresAt: now + d.ttlMs,
      stateReason: 'adopted at start-up',
    };
    try {
      await this.store.createSandbox(record);
    } catch (err) {
      await this.releaseLease(id);
      throw err;
    }
    this.log.info({ sandboxId: id, runtimeId: info.runtimeId, provider: provider.name }, 'reconcile: adopted unknown runtime');
    this.emit('sandbox.adopted', { sandboxId: id, workerId: this.workerId, data: { provider: provider.name, runtimeId: info.runtimeId } });
  }
}

/** Rejects when `promise` has not settled within `ms`. */
async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new StacyError('timeout', `${what} did not answer within ${formatDuration(ms)}`)), ms);
        timer.unref();
      }),
    ]);
  } finally {
    if (timer !== undefined) clearTimeout(timer);
  }
}

/** Keeps the first `cap` bytes of a stream. */
class Capped {
  private readonly chunks: Buffer[] = [];
  private size = 0;
  constructor(private readonly cap: number) {}
  push(data: Buffer): void {
    if (this.size >= this.cap) return;
    const room = this.cap - this.size;
    const part = data.length > room ? data.subarray(0, room) : data;
    this.chunks.push(part);
    this.size += part.length;
  }
  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}

function checkWorkerId(id: string): void {
  if (!WORKER_ID_PATTERN.test(id)) throw badRequest('worker id: 1-128 characters of letters, digits, ".", "_" or "-"');
}

function templateRecord(input: TemplateInput, createdAt: number, updatedAt: number): TemplateRecord {
  return {
    name: input.name,
    image: input.image ?? null,
    provider: input.provider ?? null,
    memoryMb: input.memoryMb ?? null,
    vcpus: input.vcpus ?? null,
    ttlMs: input.ttlMs ?? null,
    networkMode: input.networkMode ?? null,
    env: { ...(input.env ?? {}) },
    metadata: { ...(input.metadata ?? {}) },
    createdAt,
    updatedAt,
  };
}

function countBy<T>(rows: readonly T[], key: (row: T) => string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of rows) {
    const k = key(r);
    out[k] = (out[k] ?? 0) + 1;
  }
  return out;
}

function workerCounts(all: WorkerView[], items: WorkerView[]): Diagnostics['workers'] {
  return {
    total: all.length,
    online: all.filter((w) => w.status === 'online' && !w.stale).length,
    stale: all.filter((w) => w.stale).length,
    unhealthy: all.filter((w) => w.status === 'unhealthy').length,
    items,
  };
}

function leaseCounts(leases: readonly LeaseRecord[], now: number): { total: number; active: number; expired: number } {
  const active = leases.filter((l) => l.expiresAt > now).length;
  return { total: leases.length, active, expired: leases.length - active };
}

