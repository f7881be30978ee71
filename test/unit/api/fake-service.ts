/**
 * A test double of the SandboxService interface for API route unit tests only: records are kept
 * in maps and exec is scripted, so the tests exercise routing, validation, auth and rendering.
 */
import { PassThrough, type Readable } from 'node:stream';
import { StacyError, notFound } from '../../../src/core/errors.js';
import type { LeaseRecord, QuotaRecord, SandboxRecord, TemplateRecord } from '../../../src/core/types.js';
import type {
  AdmissionReport,
  Caller,
  Diagnostics,
  PoolStatus,
  ExecCall,
  ExecOutcome,
  HeartbeatInput,
  ProviderDetail,
  ProviderSummary,
  QuotaUsage,
  SandboxService,
  SpawnRequest,
  StacyEvent,
  TemplateInput,
  WorkerView,
} from '../../../src/orchestrator/service.js';
import type { ExecEvent, FileEntry } from '../../../src/providers/provider.js';

const T0 = Date.parse('2026-01-01T00:00:00Z');

export class FakeService implements SandboxService {
  sandboxes = new Map<string, SandboxRecord>();
  files = new Map<string, Buffer>();
  templates = new Map<string, TemplateRecord>();
  quotas = new Map<string, QuotaRecord>();
  workers = new Map<string, WorkerView>();
  listeners = new Set<(e: StacyEvent) => void>();
  calls: { method: string; args: unknown[] }[] = [];
  /** Set by a test to make spawn fail. */
  spawnError: StacyError | null = null;
  /** A gate the streaming exec waits on between its first and second chunk. */
  streamGate: Promise<void> = Promise.resolve();
  /** Set when a `silent` exec stream saw its abort signal. */
  silentAborted = false;
  private seq = 0;

  constructor() {
    this.workers.set('local', {
      id: 'local',
      hostname: 'host',
      status: 'online',
      providers: ['mock'],
      capabilities: ['api'],
      capacity: { maxSandboxes: 100 },
      lastHeartbeat: T0,
      createdAt: T0,
      updatedAt: T0,
      stale: false,
    });
  }

  private need(id: string): SandboxRecord {
    const sb = this.sandboxes.get(id);
    if (sb === undefined || sb.state === 'destroyed') throw notFound('sandbox', id);
    return sb;
  }

  async spawn(request: SpawnRequest, caller: Caller): Promise<SandboxRecord> {
    this.calls.push({ method: 'spawn', args: [request, caller] });
    if (this.spawnError) throw this.spawnError;
    const id = `sb-${(++this.seq).toString(16).padStart(8, '0')}`;
    const rec: SandboxRecord = {
      id,
      state: 'running',
      provider: request.provider ?? 'mock',
      image: request.image ?? 'python:3',
      memoryMb: request.memoryMb ?? 512,
      vcpus: request.vcpus ?? 1,
      ownerId: request.ownerId ?? caller.userId,
      workerId: 'local',
      runtimeId: `rt-${id}`,
      template: request.template ?? null,
      metadata: request.metadata ?? {},
      createdAt: T0,
      updatedAt: T0,
      expiresAt: T0 + (request.ttlMs ?? 1_800_000),
      stateReason: null,
    };
    this.sandboxes.set(id, rec);
    this.emit({ id: `ev-${this.seq}`, type: 'sandbox.spawned', sandboxId: id, time: T0, data: {} });
    return rec;
  }
  async admission(_r: SpawnRequest): Promise<AdmissionReport> {
    return {
      allowed: true,
      queueable: false,
      activeSandboxes: this.sandboxes.size,
      maxSandboxes: 100,
      maxTtlMs: 86_400_000,
      scheduler: { workerId: 'local', selectedWorkerId: 'local', eligibleWorkers: 1 },
    };
  }
  async list(): Promise<SandboxRecord[]> {
    return [...this.sandboxes.values()].filter((s) => s.state !== 'destroyed');
  }
  async get(id: string): Promise<SandboxRecord> {
    return this.need(id);
  }
  async destroy(id: string): Promise<void> {
    const sb = this.sandboxes.get(id);
    if (sb === undefined) throw notFound('sandbox', id);
    sb.state = 'destroyed';
  }
  async extend(id: string, ttlMs: number): Promise<SandboxRecord> {
    const sb = this.need(id);
    sb.expiresAt = T0 + ttlMs;
    return sb;
  }
  async prune(): Promise<number> {
    return 0;
  }
  async exec(id: string, request: ExecCall): Promise<ExecOutcome> {
    this.need(id);
    this.calls.push({ method: 'exec', args: [request] });
    if (request.command === 'slow') throw new StacyError('timeout', 'exec exceeded its 1s deadline');
    return { exitCode: request.command === 'false' ? 1 : 0, stdout: `${[request.command, ...request.args].join(' ')}\n`, stderr: '', durationMs: 1500 };
  }
  async *execStream(id: string, request: ExecCall, _caller: Caller, signal?: AbortSignal): AsyncIterable<ExecEvent> {
    this.need(id);
    if (request.command === 'split-utf8') {
      // "€" (e2 82 ac) split over two chunks; stderr ends inside an unfinished 4-byte character.
      yield { type: 'stdout', data: Buffer.from([0x70, 0x3a, 0x20, 0xe2, 0x82]) };
      yield { type: 'stderr', data: Buffer.from([0xf0, 0x9f]) };
      yield { type: 'stdout', data: Buffer.from([0xac, 0x0a]) };
      yield { type: 'exit', exitCode: 0, durationMs: 1 };
      return;
    }
    if (request.command === 'silent') {
      // Prints nothing until aborted (or 10 s): stands for a command still starting up.
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 10_000);
        signal?.addEventListener('abort', () => {
          clearTimeout(timer);
          this.silentAborted = true;
          resolve();
        });
      });
      yield { type: 'exit', exitCode: 0, durationMs: 1 };
      return;
    }
    yield { type: 'stdout', data: Buffer.from('first\n') };
    await this.streamGate;
    if (signal?.aborted) return;
    if (request.command === 'fail-mid') throw new StacyError('timeout', 'exec exceeded its deadline');
    yield { type: 'stderr', data: Buffer.from('second\n') };
    yield { type: 'exit', exitCode: 3, durationMs: 250 };
  }
  async logs(id: string, lines: number): Promise<string[]> {
    this.need(id);
    return [`${lines} lines`];
  }
  async writeFile(id: string, path: string, content: Buffer, mode: number | undefined): Promise<void> {
    this.need(id);
    this.calls.push({ method: 'writeFile', args: [path, content, mode] });
    this.files.set(`${id}:${path}`, content);
  }
  async readFile(id: string, path: string): Promise<Readable> {
    this.need(id);
    const data = this.files.get(`${id}:${path}`);
    if (data === undefined) throw notFound('file', path);
    const out = new PassThrough();
    out.end(data);
    return out;
  }
  private entry(path: string): FileEntry {
    return { name: path.split('/').pop() ?? '', path, size: this.files.get(path)?.length ?? 0, isDir: false, modTime: T0, mode: 0o644 };
  }
  async listFiles(id: string, path: string): Promise<FileEntry[]> {
    this.need(id);
    return [this.entry(`${path.replace(/\/$/, '')}/a.txt`)];
  }
  async deleteFile(id: string, path: string): Promise<void> {
    this.need(id);
    if (!this.files.delete(`${id}:${path}`)) throw notFound('file', path);
  }
  async moveFile(id: string, from: string, to: string): Promise<void> {
    this.need(id);
    this.calls.push({ method: 'moveFile', args: [from, to] });
  }
  async chmod(id: string, path: string, mode: number): Promise<void> {
    this.need(id);
    this.calls.push({ method: 'chmod', args: [path, mode] });
  }
  async stat(id: string, path: string): Promise<FileEntry> {
    this.need(id);
    return this.entry(path);
  }
  async glob(id: string, pattern: string): Promise<string[]> {
    this.need(id);
    return [pattern.replace('*', 'x')];
  }
  async createTemplate(t: TemplateInput): Promise<TemplateRecord> {
    if (this.templates.has(t.name)) throw new StacyError('conflict', `template ${JSON.stringify(t.name)} exists`);
    const rec: TemplateRecord = {
      name: t.name,
      image: t.image ?? null,
      provider: t.provider ?? null,
      memoryMb: t.memoryMb ?? null,
      vcpus: t.vcpus ?? null,
      ttlMs: t.ttlMs ?? null,
      networkMode: t.networkMode ?? null,
      env: t.env ?? {},
      metadata: t.metadata ?? {},
      createdAt: T0,
      updatedAt: T0,
    };
    this.templates.set(t.name, rec);
    return rec;
  }
  async listTemplates(): Promise<TemplateRecord[]> {
    return [...this.templates.values()];
  }
  async getTemplate(name: string): Promise<TemplateRecord> {
    const t = this.templates.get(name);
    if (!t) throw notFound('template', name);
    return t;
  }
  async updateTemplate(name: string, t: TemplateInput): Promise<TemplateRecord> {
    const cur = await this.getTemplate(name);
    const next = { ...cur, image: t.image ?? cur.image };
    this.templates.set(name, next);
    return next;
  }
  async deleteTemplate(name: string): Promise<void> {
    if (!this.templates.delete(name)) throw notFound('template', name);
  }
  async spawnFromTemplate(name: string, overrides: SpawnRequest, caller: Caller): Promise<SandboxRecord> {
    const t = await this.getTemplate(name);
    return this.spawn({ image: t.image ?? undefined, ...overrides, template: name }, caller);
  }
  private summary(): ProviderSummary {
    return { name: 'mock', healthy: true, default: true, latencyMs: 0.5, lastChecked: T0, capabilities: { isolation: 'none', features: [] } };
  }
  async listProviders(): Promise<ProviderSummary[]> {
    return [this.summary()];
  }
  async getProvider(name: string): Promise<ProviderDetail> {
    if (name !== 'mock') throw notFound('provider', name);
    return { name, healthy: true, default: true, sandboxCount: 0, health: { healthy: true, latencyMs: 0.5, details: { isolation: 'none' } }, config: { root: '/tmp' } };
  }
  async testProviders(): Promise<Record<string, boolean>> {
    return { mock: true };
  }
  ready = true;
  async readiness() {
    return { ready: this.ready, store: true, providers: { mock: this.ready } };
  }
  async listWorkers(): Promise<WorkerView[]> {
    return [...this.workers.values()];
  }
  async getWorker(id: string): Promise<WorkerView> {
    const w = this.workers.get(id);
    if (!w) throw notFound('worker', id);
    return w;
  }
  async heartbeat(workerId: string, beat: HeartbeatInput): Promise<WorkerView> {
    const w: WorkerView = { id: workerId, ...beat, lastHeartbeat: T0, createdAt: T0, updatedAt: T0, stale: false };
    this.workers.set(workerId, w);
    return w;
  }
  async deleteWorker(id: string): Promise<void> {
    if (!this.workers.delete(id)) throw notFound('worker', id);
  }
  async drainWorker(id: string): Promise<WorkerView> {
    const w = await this.getWorker(id);
    const drained = { ...w, status: 'draining' as const };
    this.workers.set(id, drained);
    return drained;
  }
  async renewLease(workerId: string, resourceId: string, ttlMs: number): Promise<LeaseRecord> {
    if (resourceId === 'held') throw new StacyError('lease_conflict', 'lease held by another worker');
    return { resourceId, resourceType: 'sandbox', holderId: workerId, generation: 2, expiresAt: T0 + ttlMs, createdAt: T0, updatedAt: T0 };
  }
  async listQuotas(): Promise<QuotaRecord[]> {
    return [...this.quotas.values()];
  }
  async getQuota(ownerId: string): Promise<QuotaRecord> {
    const q = this.quotas.get(ownerId);
    if (!q) throw notFound('quota', ownerId);
    return q;
  }
  async putQuota(ownerId: string, quota: Omit<QuotaRecord, 'ownerId' | 'updatedAt'>): Promise<QuotaRecord> {
    const q = { ownerId, ...quota, updatedAt: T0 };
    this.quotas.set(ownerId, q);
    return q;
  }
  async deleteQuota(ownerId: string): Promise<void> {
    if (!this.quotas.delete(ownerId)) throw notFound('quota', ownerId);
  }
  async quotaUsage(ownerId: string): Promise<QuotaUsage> {
    return { ownerId, activeSandboxes: 0, memoryMb: 0, vcpus: 0, quota: this.quotas.get(ownerId) ?? null };
  }
  async poolStatus(): Promise<PoolStatus> {
    return { enabled: true, targetSize: 2, ready: 1, creating: 1, image: 'python:3', provider: 'mock', claimsTotal: 3, missesTotal: 4 };
  }
  async diagnostics(): Promise<Diagnostics> {
    const items = await this.listWorkers();
    return {
      version: '0.1.0',
      uptimeMs: 61_000,
      scheduler: { workerId: 'local', selectedWorkerId: 'local', eligibleWorkers: 1 },
      workers: { total: items.length, online: items.length, stale: 0, unhealthy: 0, items },
      leases: { total: 1, active: 1, expired: 0, byHolder: { local: 1 } },
      sandboxes: { total: 1, active: 1, byState: { running: 1 }, byProvider: { mock: 1 }, byWorker: { local: 1 } },
      providers: [this.summary()],
      store: { dialect: 'sqlite', healthy: true },
      config: { auth: { api_key: '[redacted]' } },
    };
  }
  async metrics(): Promise<Record<string, unknown>> {
    return { spawn: { count: this.sandboxes.size } };
  }
  async prometheus() {
    return { contentType: 'text/plain; version=0.0.4; charset=utf-8', body: '# TYPE stacyvm_workers_total gauge\nstacyvm_workers_total{status="total"} 1\n' };
  }
  subscribe(listener: (event: StacyEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  emit(e: StacyEvent): void {
    for (const l of this.listeners) l(e);
  }
}
