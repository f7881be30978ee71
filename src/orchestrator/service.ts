import type { Readable } from 'node:stream';
import type { ExecEvent, FileEntry, ProviderHealth } from '../providers/provider.js';
import type { LeaseRecord, QuotaRecord, SandboxRecord, TemplateRecord, WorkerRecord } from '../core/types.js';

/**
 * What the API layer may ask of the orchestrator. The API never sees a concrete store or
 * provider: it validates input, calls these methods and renders results/errors.
 * All inputs are already schema-validated; durations are milliseconds; paths are raw client
 * strings (the orchestrator normalises them).
 */
export interface SandboxService {
  spawn(request: SpawnRequest, caller: Caller): Promise<SandboxRecord>;
  admission(request: SpawnRequest, caller: Caller): Promise<AdmissionReport>;
  list(caller: Caller): Promise<SandboxRecord[]>;
  get(id: string, caller: Caller): Promise<SandboxRecord>;
  /** Idempotent for already-destroyed sandboxes. */
  destroy(id: string, caller: Caller): Promise<void>;
  extend(id: string, ttlMs: number, caller: Caller): Promise<SandboxRecord>;
  /** Destroys expired sandboxes now; returns how many. */
  prune(): Promise<number>;

  exec(id: string, request: ExecCall, caller: Caller): Promise<ExecOutcome>;
  /** Yields output then one exit event; a deadline throws `timeout` from the iterator. */
  execStream(id: string, request: ExecCall, caller: Caller, signal?: AbortSignal): AsyncIterable<ExecEvent>;
  logs(id: string, lines: number, caller: Caller): Promise<string[]>;

  writeFile(id: string, path: string, content: Buffer, mode: number | undefined, caller: Caller): Promise<void>;
  readFile(id: string, path: string, caller: Caller): Promise<Readable>;
  listFiles(id: string, path: string, caller: Caller): Promise<FileEntry[]>;
  deleteFile(id: string, path: string, recursive: boolean, caller: Caller): Promise<void>;
  moveFile(id: string, from: string, to: string, caller: Caller): Promise<void>;
  chmod(id: string, path: string, mode: number, caller: Caller): Promise<void>;
  stat(id: string, path: string, caller: Caller): Promise<FileEntry>;
  glob(id: string, pattern: string, caller: Caller): Promise<string[]>;

  createTemplate(template: TemplateInput): Promise<TemplateRecord>;
  listTemplates(): Promise<TemplateRecord[]>;
  getTemplate(name: string): Promise<TemplateRecord>;
  updateTemplate(name: string, template: TemplateInput): Promise<TemplateRecord>;
  deleteTemplate(name: string): Promise<void>;
  spawnFromTemplate(name: string, overrides: SpawnRequest, caller: Caller): Promise<SandboxRecord>;

  listProviders(): Promise<ProviderSummary[]>;
  getProvider(name: string): Promise<ProviderDetail>;
  testProviders(): Promise<Record<string, boolean>>;
  /** Ready when the store answers and at least one provider is healthy. */
  readiness(): Promise<{ ready: boolean; store: boolean; providers: Record<string, boolean> }>;

  listWorkers(): Promise<WorkerView[]>;
  getWorker(id: string): Promise<WorkerView>;
  /** Upserts a worker's heartbeat (admin or the worker itself). */
  heartbeat(workerId: string, beat: HeartbeatInput): Promise<WorkerView>;
  deleteWorker(id: string): Promise<void>;
  /** Asks a remote worker to drain (worker.shutdown): no new placements, existing sandboxes keep working. */
  drainWorker(id: string): Promise<WorkerView>;
  renewLease(workerId: string, resourceId: string, ttlMs: number): Promise<LeaseRecord>;

  listQuotas(): Promise<QuotaRecord[]>;
  getQuota(ownerId: string): Promise<QuotaRecord>;
  putQuota(ownerId: string, quota: Omit<QuotaRecord, 'ownerId' | 'updatedAt'>): Promise<QuotaRecord>;
  deleteQuota(ownerId: string): Promise<void>;
  quotaUsage(ownerId: string): Promise<QuotaUsage>;

  diagnostics(): Promise<Diagnostics>;
  /** The warm pool of this server's worker. */
  poolStatus(): Promise<PoolStatus>;
  /** JSON metrics: per-operation counters and latency summaries. */
  metrics(): Promise<Record<string, unknown>>;
  /** Prometheus text exposition. */
  prometheus(): Promise<{ contentType: string; body: string }>;
  /** Subscribes to lifecycle events; returns the unsubscribe function. */
  subscribe(listener: (event: StacyEvent) => void): () => void;
}

export interface PoolStatus {
  enabled: boolean;
  targetSize: number;
  /** Unclaimed warm sandboxes that are running. */
  ready: number;
  /** Warm sandboxes being created right now. */
  creating: number;
  image: string;
  provider: string;
  /** Since this process started. */
  claimsTotal: number;
  /** Spawns of the pool's shape that found no warm sandbox, since this process started. */
  missesTotal: number;
}

/** Who is calling, as established by the API's auth layer. */
export interface Caller {
  /** X-User-ID or the owner the key maps to; null for anonymous/local use. */
  userId: string | null;
  isAdmin: boolean;
  requestId: string;
}

export interface SpawnRequest {
  image?: string;
  provider?: string;
  template?: string;
  memoryMb?: number;
  vcpus?: number;
  ttlMs?: number;
  ownerId?: string;
  metadata?: Record<string, string>;
  env?: Record<string, string>;
  networkMode?: string;
}

export interface AdmissionReport {
  allowed: boolean;
  queueable: boolean;
  reason?: string;
  activeSandboxes: number;
  maxSandboxes: number;
  activeOwnerSandboxes?: number;
  maxOwnerSandboxes?: number;
  maxTtlMs: number;
  scheduler: SchedulerStatus;
}

export interface SchedulerStatus {
  workerId: string;
  selectedWorkerId: string | null;
  eligibleWorkers: number;
  reason?: string;
}

export interface ExecCall {
  command: string;
  args: string[];
  mode: 'shell' | 'argv';
  env: Record<string, string>;
  workdir?: string;
  /** Omitted → defaults.default_exec_timeout; above max → bad_request. */
  timeoutMs?: number;
}

export interface ExecOutcome {
  exitCode: number;
  stdout: string;
  stderr: string;
  durationMs: number;
}

export interface TemplateInput {
  name: string;
  image?: string | null;
  provider?: string | null;
  memoryMb?: number | null;
  vcpus?: number | null;
  ttlMs?: number | null;
  networkMode?: string | null;
  env?: Record<string, string>;
  metadata?: Record<string, string>;
}

export interface ProviderSummary {
  name: string;
  healthy: boolean;
  default: boolean;
  latencyMs: number;
  lastChecked: number;
  error?: string;
  capabilities: { isolation: string; features: string[] };
  runtimeCount?: number;
}

export interface ProviderDetail {
  name: string;
  healthy: boolean;
  default: boolean;
  sandboxCount: number;
  health: ProviderHealth;
  /** Redacted provider config. */
  config: Record<string, unknown>;
}

export interface WorkerView extends WorkerRecord {
  stale: boolean;
}

export interface HeartbeatInput {
  hostname: string;
  status: WorkerRecord['status'];
  providers: string[];
  capabilities: string[];
  capacity: WorkerRecord['capacity'];
}

export interface QuotaUsage {
  ownerId: string;
  activeSandboxes: number;
  memoryMb: number;
  vcpus: number;
  quota: QuotaRecord | null;
}

export interface Diagnostics {
  version: string;
  uptimeMs: number;
  scheduler: SchedulerStatus;
  workers: { total: number; online: number; stale: number; unhealthy: number; items: WorkerView[] };
  leases: { total: number; active: number; expired: number; byHolder: Record<string, number> };
  sandboxes: {
    total: number;
    active: number;
    byState: Record<string, number>;
    byProvider: Record<string, number>;
    byWorker: Record<string, number>;
  };
  providers: ProviderSummary[];
  store: { dialect: string; healthy: boolean };
  config: Record<string, unknown>;
}

export interface StacyEvent {
  id: string;
  type:
    | 'sandbox.spawned'
    | 'sandbox.destroyed'
    | 'sandbox.expired'
    | 'sandbox.extended'
    | 'sandbox.error'
    | 'sandbox.adopted'
    | 'exec.completed'
    | 'exec.failed'
    | 'exec.timeout'
    | 'worker.heartbeat'
    | 'worker.stale'
    | 'image.pull';
  sandboxId?: string;
  workerId?: string;
  time: number;
  data: Record<string, unknown>;
}
