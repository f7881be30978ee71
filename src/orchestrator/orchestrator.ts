import type { Readable } from 'node:stream';
import type { LeaseRecord, QuotaRecord, SandboxRecord, TemplateRecord } from '../core/types.js';
import type { ExecEvent, FileEntry } from '../providers/provider.js';
import type {
  AdmissionReport,
  Caller,
  Diagnostics,
  ExecCall,
  ExecOutcome,
  HeartbeatInput,
  PoolStatus,
  ProviderDetail,
  ProviderSummary,
  QuotaUsage,
  SandboxService,
  SpawnRequest,
  StacyEvent,
  TemplateInput,
  WorkerView,
} from './service.js';
import { OrchestratorContext } from './context.js';
import type { OrchestratorOptions } from './options.js';
import { Observability } from './observability.js';
import { SandboxIO } from './exec-files.js';
import { SandboxLifecycle } from './lifecycle.js';
import { Maintenance } from './maintenance.js';
import { WarmPool } from './pool.js';
import { TemplatesAndQuotas } from './templates-quotas.js';
import { WorkerRegistry } from './worker-registry.js';

export type { OrchestratorLogger, OrchestratorOptions } from './options.js';

export type Orchestrator = SandboxService & {
  /** Reconciles the store with the providers, then starts the TTL reaper and lease keeper. */
  start(): Promise<void>;
  /** Stops the background loops and waits for a running pass to finish. Leaves store and providers open. */
  stop(): Promise<void>;
  /** One warm-pool fill pass, after any running one (tests drive it instead of the interval). */
  fillPool(): Promise<void>;
};

/** Builds the orchestrator: the one implementation of SandboxService. */
export function createOrchestrator(options: OrchestratorOptions): Orchestrator {
  return new ComposedOrchestrator(options);
}

/**
 * The orchestrator as one object, composed of its parts: lifecycle (admission, spawn, destroy,
 * extend), exec and files, templates and quotas, workers and leases, maintenance (reconcile and
 * the background pass) and observability. Each method hands over to the part that owns it.
 */
class ComposedOrchestrator implements Orchestrator {
  private readonly lifecycle: SandboxLifecycle;
  private readonly maintenance: Maintenance;
  private readonly io: SandboxIO;
  private readonly templatesAndQuotas: TemplatesAndQuotas;
  private readonly workers: WorkerRegistry;
  private readonly observability: Observability;
  private readonly pool: WarmPool;

  constructor(options: OrchestratorOptions) {
    const ctx = new OrchestratorContext(options);
    this.lifecycle = new SandboxLifecycle(ctx);
    this.maintenance = new Maintenance(ctx, this.lifecycle);
    this.io = new SandboxIO(ctx);
    this.templatesAndQuotas = new TemplatesAndQuotas(ctx, this.lifecycle);
    this.workers = new WorkerRegistry(ctx);
    this.observability = new Observability(ctx);
    this.pool = new WarmPool(ctx, this.lifecycle);
    this.lifecycle.attachPool(this.pool);
  }

  async start(): Promise<void> {
    // Reconcile first, so the pool counts the warm sandboxes that survived a restart.
    await this.maintenance.start();
    this.pool.start();
  }

  async stop(): Promise<void> {
    await this.pool.stop();
    await this.maintenance.stop();
  }

  fillPool(): Promise<void> {
    return this.pool.fill();
  }

  poolStatus(): Promise<PoolStatus> {
    return this.pool.status();
  }

  /** One background pass (tests drive it directly instead of waiting for the interval). */
  tick(): Promise<void> {
    return this.maintenance.tick();
  }

  admission(request: SpawnRequest, caller: Caller): Promise<AdmissionReport> {
    return this.lifecycle.admission(request, caller);
  }

  spawn(request: SpawnRequest, caller: Caller): Promise<SandboxRecord> {
    return this.lifecycle.spawn(request, caller);
  }

  list(caller: Caller): Promise<SandboxRecord[]> {
    return this.lifecycle.list(caller);
  }

  get(id: string, caller: Caller): Promise<SandboxRecord> {
    return this.lifecycle.get(id, caller);
  }

  destroy(id: string, caller: Caller): Promise<void> {
    return this.lifecycle.destroy(id, caller);
  }

  extend(id: string, ttlMs: number, caller: Caller): Promise<SandboxRecord> {
    return this.lifecycle.extend(id, ttlMs, caller);
  }

  prune(): Promise<number> {
    return this.maintenance.prune();
  }

  exec(id: string, call: ExecCall, caller: Caller): Promise<ExecOutcome> {
    return this.io.exec(id, call, caller);
  }

  execStream(id: string, call: ExecCall, caller: Caller, signal?: AbortSignal): AsyncIterable<ExecEvent> {
    return this.io.execStream(id, call, caller, signal);
  }

  logs(id: string, lines: number, caller: Caller): Promise<string[]> {
    return this.io.logs(id, lines, caller);
  }

  writeFile(id: string, path: string, content: Buffer, mode: number | undefined, caller: Caller): Promise<void> {
    return this.io.writeFile(id, path, content, mode, caller);
  }

  readFile(id: string, path: string, caller: Caller): Promise<Readable> {
    return this.io.readFile(id, path, caller);
  }

  listFiles(id: string, path: string, caller: Caller): Promise<FileEntry[]> {
    return this.io.listFiles(id, path, caller);
  }

  deleteFile(id: string, path: string, recursive: boolean, caller: Caller): Promise<void> {
    return this.io.deleteFile(id, path, recursive, caller);
  }

  moveFile(id: string, from: string, to: string, caller: Caller): Promise<void> {
    return this.io.moveFile(id, from, to, caller);
  }

  chmod(id: string, path: string, mode: number, caller: Caller): Promise<void> {
    return this.io.chmod(id, path, mode, caller);
  }

  stat(id: string, path: string, caller: Caller): Promise<FileEntry> {
    return this.io.stat(id, path, caller);
  }

  glob(id: string, pattern: string, caller: Caller): Promise<string[]> {
    return this.io.glob(id, pattern, caller);
  }

  createTemplate(input: TemplateInput): Promise<TemplateRecord> {
    return this.templatesAndQuotas.createTemplate(input);
  }

  listTemplates(): Promise<TemplateRecord[]> {
    return this.templatesAndQuotas.listTemplates();
  }

  getTemplate(name: string): Promise<TemplateRecord> {
    return this.templatesAndQuotas.getTemplate(name);
  }

  updateTemplate(name: string, input: TemplateInput): Promise<TemplateRecord> {
    return this.templatesAndQuotas.updateTemplate(name, input);
  }

  deleteTemplate(name: string): Promise<void> {
    return this.templatesAndQuotas.deleteTemplate(name);
  }

  spawnFromTemplate(name: string, overrides: SpawnRequest, caller: Caller): Promise<SandboxRecord> {
    return this.templatesAndQuotas.spawnFromTemplate(name, overrides, caller);
  }

  listQuotas(): Promise<QuotaRecord[]> {
    return this.templatesAndQuotas.listQuotas();
  }

  getQuota(ownerId: string): Promise<QuotaRecord> {
    return this.templatesAndQuotas.getQuota(ownerId);
  }

  putQuota(ownerId: string, quota: Omit<QuotaRecord, 'ownerId' | 'updatedAt'>): Promise<QuotaRecord> {
    return this.templatesAndQuotas.putQuota(ownerId, quota);
  }

  deleteQuota(ownerId: string): Promise<void> {
    return this.templatesAndQuotas.deleteQuota(ownerId);
  }

  quotaUsage(ownerId: string): Promise<QuotaUsage> {
    return this.templatesAndQuotas.quotaUsage(ownerId);
  }

  listProviders(): Promise<ProviderSummary[]> {
    return this.observability.listProviders();
  }

  getProvider(name: string): Promise<ProviderDetail> {
    return this.observability.getProvider(name);
  }

  testProviders(): Promise<Record<string, boolean>> {
    return this.observability.testProviders();
  }

  readiness(): Promise<{ ready: boolean; store: boolean; providers: Record<string, boolean> }> {
    return this.observability.readiness();
  }

  listWorkers(): Promise<WorkerView[]> {
    return this.workers.listWorkers();
  }

  getWorker(id: string): Promise<WorkerView> {
    return this.workers.getWorker(id);
  }

  heartbeat(workerId: string, beat: HeartbeatInput): Promise<WorkerView> {
    return this.workers.heartbeat(workerId, beat);
  }

  deleteWorker(id: string): Promise<void> {
    return this.workers.deleteWorker(id);
  }

  drainWorker(id: string): Promise<WorkerView> {
    return this.workers.drainWorker(id);
  }

  renewLease(workerId: string, resourceId: string, ttlMs: number): Promise<LeaseRecord> {
    return this.workers.renewLease(workerId, resourceId, ttlMs);
  }

  subscribe(listener: (event: StacyEvent) => void): () => void {
    return this.observability.subscribe(listener);
  }

  diagnostics(): Promise<Diagnostics> {
    return this.observability.diagnostics();
  }

  metrics(): Promise<Record<string, unknown>> {
    return this.observability.metrics();
  }

  prometheus(): Promise<{ contentType: string; body: string }> {
    return this.observability.prometheus();
  }
}
