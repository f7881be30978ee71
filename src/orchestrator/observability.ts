/**
 * What an operator reads: provider health and details, readiness, events, diagnostics and
 * metrics (JSON and Prometheus).
 */
import { notFound } from '../core/errors.js';
import { type LeaseRecord, type SandboxRecord, ACTIVE_SANDBOX_STATES } from '../core/types.js';
import type { GaugeSnapshot } from './metrics.js';
import type { Diagnostics, ProviderDetail, ProviderSummary, StacyEvent, WorkerView } from './service.js';
import type { OrchestratorContext } from './context.js';

/** Provider status, readiness, events, diagnostics and metrics. */
export class Observability {
  constructor(private readonly ctx: OrchestratorContext) {}

  // ---------------------------------------------------------------- providers

  private async summaries(fresh = false): Promise<ProviderSummary[]> {
    const active = await this.ctx.store.listSandboxes({ states: ACTIVE_SANDBOX_STATES });
    const out: ProviderSummary[] = [];
    for (const provider of this.ctx.providers.values()) {
      const { health, lastChecked } = await this.ctx.healthOf(provider, fresh);
      const s: ProviderSummary = {
        name: provider.name,
        healthy: health.healthy,
        default: provider.name === this.ctx.defaultProviderName,
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
    return this.ctx.op('provider_list', () => this.summaries());
  }

  getProvider(name: string): Promise<ProviderDetail> {
    return this.ctx.op('provider_get', async () => {
      const provider = this.ctx.providers.get(name);
      if (provider === undefined) throw notFound('provider', name);
      const { health } = await this.ctx.healthOf(provider);
      const sandboxCount = await this.ctx.store.countSandboxes({ states: ACTIVE_SANDBOX_STATES, provider: name });
      const section = (this.ctx.redacted.providers as unknown as Record<string, unknown>)[name];
      return {
        name,
        healthy: health.healthy,
        default: name === this.ctx.defaultProviderName,
        sandboxCount,
        health,
        config: section !== null && typeof section === 'object' ? { ...(section as Record<string, unknown>) } : {},
      };
    });
  }

  testProviders(): Promise<Record<string, boolean>> {
    return this.ctx.op('provider_test', async () => {
      const out: Record<string, boolean> = {};
      for (const provider of this.ctx.providers.values()) out[provider.name] = (await this.ctx.checkHealth(provider)).health.healthy;
      return out;
    });
  }

  readiness(): Promise<{ ready: boolean; store: boolean; providers: Record<string, boolean> }> {
    return this.ctx.op('readiness', async () => {
      let store = true;
      try {
        await this.ctx.store.ping();
      } catch {
        store = false;
      }
      const providers: Record<string, boolean> = {};
      for (const provider of this.ctx.providers.values()) providers[provider.name] = (await this.ctx.healthOf(provider)).health.healthy;
      return { ready: store && Object.values(providers).some(Boolean), store, providers };
    });
  }

  // ---------------------------------------------------------------- events, diagnostics, metrics

  subscribe(listener: (event: StacyEvent) => void): () => void {
    return this.ctx.events.subscribe(listener);
  }

  private async snapshot(): Promise<{
    workers: WorkerView[];
    leases: LeaseRecord[];
    storeNow: number;
    all: SandboxRecord[];
  }> {
    const [workers, leases, storeNow, all] = await Promise.all([
      this.ctx.store.listWorkers(),
      this.ctx.store.listLeases(),
      this.ctx.store.now(),
      this.ctx.store.listSandboxes(),
    ]);
    return { workers: workers.map((w) => this.ctx.view(w)).sort((a, b) => (a.id < b.id ? -1 : 1)), leases, storeNow, all };
  }

  diagnostics(): Promise<Diagnostics> {
    return this.ctx.op('diagnostics', async () => {
      const { workers, leases, storeNow, all } = await this.snapshot();
      const active = all.filter((r) => ACTIVE_SANDBOX_STATES.includes(r.state));
      const byHolder: Record<string, number> = {};
      for (const l of leases) if (l.expiresAt > storeNow) byHolder[l.holderId] = (byHolder[l.holderId] ?? 0) + 1;
      let storeHealthy = true;
      try {
        await this.ctx.store.ping();
      } catch {
        storeHealthy = false;
      }
      return {
        version: this.ctx.version,
        uptimeMs: this.ctx.clock.now() - this.ctx.startedAt,
        scheduler: this.ctx.lastScheduler,
        workers: workerCounts(workers),
        leases: { ...leaseCounts(leases, storeNow), byHolder },
        sandboxes: {
          total: all.length,
          active: active.length,
          byState: countBy(all, (r) => r.state),
          byProvider: countBy(active, (r) => r.provider),
          byWorker: countBy(active, (r) => r.workerId ?? 'unassigned'),
        },
        providers: await this.summaries(),
        store: { dialect: this.ctx.store.dialect, healthy: storeHealthy },
        config: this.ctx.diagnosticsConfig,
      };
    });
  }

  metrics(): Promise<Record<string, unknown>> {
    return this.ctx.op('metrics', async () => {
      const { workers, leases, storeNow, all } = await this.snapshot();
      const active = all.filter((r) => ACTIVE_SANDBOX_STATES.includes(r.state));
      const { items: _items, ...workerTotals } = workerCounts(workers);
      return {
        uptimeMs: this.ctx.clock.now() - this.ctx.startedAt,
        operations: this.ctx.metricsRecorder.summary(),
        sandboxes: { total: all.length, active: active.length, byState: countBy(all, (r) => r.state), byWorker: countBy(active, (r) => r.workerId ?? 'unassigned') },
        workers: workerTotals,
        leases: leaseCounts(leases, storeNow),
        scheduler: this.ctx.lastScheduler,
      };
    });
  }

  prometheus(): Promise<{ contentType: string; body: string }> {
    return this.ctx.op('prometheus', async () => {
      const { workers, leases, storeNow, all } = await this.snapshot();
      const active = all.filter((r) => ACTIVE_SANDBOX_STATES.includes(r.state));
      const { items: _items, ...workerTotals } = workerCounts(workers);
      const byWorker = countBy(active, (r) => r.workerId ?? 'unassigned');
      // Every registered worker gets a series, also at zero, so dashboards see idle workers.
      for (const w of workers) byWorker[w.id] ??= 0;
      const providersHealthy: Record<string, boolean> = {};
      for (const [name, entry] of this.ctx.health) providersHealthy[name] = entry.health.healthy;
      const snap: GaugeSnapshot = {
        workers: workerTotals,
        leases: leaseCounts(leases, storeNow),
        sandboxesByWorker: byWorker,
        sandboxesByState: countBy(all, (r) => r.state),
        providersHealthy,
      };
      return this.ctx.metricsRecorder.exposition(snap);
    });
  }
}


function countBy<T>(rows: readonly T[], key: (row: T) => string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of rows) {
    const k = key(r);
    out[k] = (out[k] ?? 0) + 1;
  }
  return out;
}

function workerCounts(workers: WorkerView[]): Diagnostics['workers'] {
  return {
    total: workers.length,
    online: workers.filter((w) => w.status === 'online' && !w.stale).length,
    stale: workers.filter((w) => w.stale).length,
    unhealthy: workers.filter((w) => w.status === 'unhealthy').length,
    items: workers,
  };
}

function leaseCounts(leases: readonly LeaseRecord[], now: number): { total: number; active: number; expired: number } {
  const active = leases.filter((l) => l.expiresAt > now).length;
  return { total: leases.length, active, expired: leases.length - active };
}