/**
 * Shared state and helpers of the orchestrator's parts.
 */
import { performance } from 'node:perf_hooks';
import { redactConfig } from '../config/load.js';
import type { Config } from '../config/types.js';
import { type Clock, systemClock } from '../core/clock.js';
import { conflict, isStacyError, notFound, providerError, StacyError, unavailable } from '../core/errors.js';
import type { LeaseRecord, SandboxRecord, SandboxState, WorkerRecord } from '../core/types.js';
import type { Provider, ProviderHealth } from '../providers/provider.js';
import type { Store } from '../store/store.js';
import { EventBus } from './events.js';
import { OperationMetrics } from './metrics.js';
import { isStale } from './scheduler.js';
import type { Caller, SchedulerStatus, StacyEvent, WorkerView } from './service.js';
import { KeyedLock } from './locks.js';
import type { OrchestratorLogger, OrchestratorOptions, RemoteWorkers } from './options.js';

const silentLogger: OrchestratorLogger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

/** Provider health answers older than this are refreshed on read. */
const HEALTH_CACHE_MS = 10_000;

/** A provider health check that takes longer than this counts as unhealthy. */
export const HEALTH_TIMEOUT_MS = 5_000;

/** States in which commands and file operations reach the runtime. */
export const OPERABLE_STATES: readonly SandboxState[] = ['running', 'unhealthy'];

/**
 * Waits for a remote call at most HEALTH_TIMEOUT_MS: a worker that hangs (stopped, cut off)
 * must hold up neither the background pass (which detects that it went stale) nor admission.
 */
export async function bounded<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new StacyError('remote_worker_rpc_unavailable', `${what} took longer than ${HEALTH_TIMEOUT_MS}ms`)), HEALTH_TIMEOUT_MS);
        timer.unref();
      }),
    ]);
  } finally {
    if (timer !== undefined) clearTimeout(timer);
    // The call may still fail later; nobody waits for it any more.
    p.catch(() => undefined);
  }
}

interface HealthEntry {
  health: ProviderHealth;
  lastChecked: number;
}

/**
 * What every part of the orchestrator shares: configuration, store, providers, clock, logger,
 * events, metrics, the per-sandbox lock and the provider health cache, plus the helpers each
 * operation is built from (metrics wrapper, typed provider calls, visibility, leases).
 */
export class OrchestratorContext {
  readonly config: Config;
  readonly store: Store;
  readonly providers: Map<string, Provider>;
  readonly defaultProviderName: string;
  readonly clock: Clock;
  readonly log: OrchestratorLogger;
  readonly version: string;
  readonly workerId: string;
  /** The configuration with secrets hidden, computed once: config is frozen. */
  readonly redacted: Config;
  readonly diagnosticsConfig: Record<string, unknown>;
  readonly events: EventBus;
  readonly metricsRecorder = new OperationMetrics();
  /** Serialises creation and teardown of one sandbox within this process. */
  readonly sandboxLock = new KeyedLock();
  readonly health = new Map<string, HealthEntry>();
  readonly startedAt: number;
  lastScheduler: SchedulerStatus;
  readonly staleWorkers = new Set<string>();
  readonly remote: RemoteWorkers | undefined;

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
    this.remote = o.remoteWorkers;
    this.redacted = redactConfig(o.config);
    this.diagnosticsConfig = o.redactConfig?.(o.config) ?? (this.redacted as unknown as Record<string, unknown>);
    this.events = new EventBus((err) => this.log.warn({ err }, 'event listener failed'));
    this.startedAt = this.clock.now();
    this.lastScheduler = { workerId: this.workerId, selectedWorkerId: null, eligibleWorkers: 0 };
  }

  // ---------------------------------------------------------------- helpers

  async op<T>(name: string, fn: () => Promise<T>): Promise<T> {
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

  emit(type: StacyEvent['type'], fields: Omit<StacyEvent, 'id' | 'type' | 'time' | 'data'> & { data?: Record<string, unknown> } = {}): void {
    this.events.emit(type, this.clock.now(), fields);
  }

  providerNames(): string[] {
    return [...this.providers.keys()];
  }

  /**
   * The providers a spawn or template naming `wanted` may use: this server's own, and, when
   * `wanted` is not one of them and this server drives remote workers, every provider a
   * registered worker advertises. A control plane need not run a provider itself to place its
   * sandboxes on workers that do; placement then picks one (or says why none can take it).
   * The registry is read only for a provider this server lacks.
   */
  async providerNamesFor(wanted: string | null | undefined): Promise<string[]> {
    const names = this.providerNames();
    if (wanted === undefined || wanted === null || names.includes(wanted) || this.remote === undefined) return names;
    const all = new Set(names);
    for (const w of await this.store.listWorkers()) for (const p of w.providers) all.add(p);
    return [...all];
  }

  /** Provider failures that are not already typed become provider_error. */
  async callProvider<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof StacyError) throw err;
      throw providerError(`${what}: ${err instanceof Error ? err.message : String(err)}`, err);
    }
  }

  visible(record: SandboxRecord, caller: Caller): boolean {
    return caller.isAdmin || caller.userId === null || record.ownerId === caller.userId;
  }

  /** The record, or not_found when it is missing or belongs to another user (existence is not revealed). */
  async load(id: string, caller: Caller): Promise<SandboxRecord> {
    const record = await this.store.getSandbox(id);
    if (record === undefined || !this.visible(record, caller)) throw notFound('sandbox', id);
    return record;
  }

  /** A sandbox that can run commands and file operations right now, with its provider. */
  async operable(id: string, caller: Caller): Promise<{ record: SandboxRecord; provider: Provider; runtimeId: string }> {
    const record = await this.load(id, caller);
    if (!OPERABLE_STATES.includes(record.state)) throw conflict(`sandbox ${id} is ${record.state}`);
    if (record.expiresAt <= this.clock.now()) throw conflict(`sandbox ${id} has expired`);
    if (record.runtimeId === null) throw conflict(`sandbox ${id} has no runtime`);
    return { record, provider: await this.providerFor(record), runtimeId: record.runtimeId };
  }

  /** True when the record's runtime lives on another worker. */
  isRemote(record: Pick<SandboxRecord, 'workerId'>): boolean {
    return record.workerId !== null && record.workerId !== this.workerId;
  }

  /** The lease holder a record's runtime answers to: its worker. */
  holderOf(record: Pick<SandboxRecord, 'workerId'>): string {
    return record.workerId ?? this.workerId;
  }

  /**
   * The provider that reaches the record's runtime: a local one, or the remote worker's.
   * `remote_worker_rpc_unavailable` when the owner cannot be reached from here.
   */
  async providerFor(record: Pick<SandboxRecord, 'workerId' | 'provider' | 'id'>): Promise<Provider> {
    if (!this.isRemote(record)) {
      const provider = this.providers.get(record.provider);
      if (provider === undefined) throw unavailable(`provider ${record.provider} is not available on this server`);
      return provider;
    }
    const workerId = record.workerId as string;
    const worker = await this.store.getWorker(workerId);
    if (worker === undefined || this.remote === undefined) {
      throw new StacyError('remote_worker_rpc_unavailable', `sandbox ${record.id} runs on worker ${workerId}, which this server cannot reach over worker RPC`);
    }
    // A stale worker may be hung: calling it would hold the client for the whole reply bound.
    if (isStale(worker, this.clock.now(), this.config.workers.staleAfterMs)) {
      throw new StacyError('remote_worker_rpc_unavailable', `sandbox ${record.id} runs on worker ${workerId}, whose heartbeat is stale`);
    }
    return this.remote.provider(worker, record.provider);
  }

  leaseTtl(): number {
    return this.config.worker.leaseTtlMs;
  }

  /** Acquires the sandbox's lease for `holder` (this server's worker by default). */
  async acquireLease(sandboxId: string, holder: string = this.workerId): Promise<LeaseRecord> {
    return this.store.acquireLease({ resourceId: sandboxId, resourceType: 'sandbox', holderId: holder, ttlMs: this.leaseTtl() });
  }

  /** Best-effort release: a failure only delays reuse until the lease expires. */
  async releaseLease(sandboxId: string, holder: string = this.workerId): Promise<void> {
    try {
      await this.store.releaseLease(sandboxId, holder);
    } catch (err) {
      this.log.warn({ err, sandboxId }, 'lease release failed; it will expire on its own');
    }
  }

  async checkHealth(provider: Provider): Promise<HealthEntry> {
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

  async healthOf(provider: Provider, fresh = false): Promise<HealthEntry> {
    const cached = this.health.get(provider.name);
    if (!fresh && cached !== undefined && this.clock.now() - cached.lastChecked < HEALTH_CACHE_MS) return cached;
    return this.checkHealth(provider);
  }

  view(w: WorkerRecord): WorkerView {
    return { ...w, stale: isStale(w, this.clock.now(), this.config.workers.staleAfterMs) };
  }
}
