import { Counter, Gauge, Histogram, Registry } from 'prom-client';

/** Gauge values computed from the store right before a scrape. */
export interface GaugeSnapshot {
  workers: { total: number; online: number; stale: number; unhealthy: number };
  leases: { total: number; active: number; expired: number };
  sandboxesByWorker: Record<string, number>;
  sandboxesByState: Record<string, number>;
  providersHealthy: Record<string, boolean>;
}

interface OpStats {
  count: number;
  failures: number;
  totalMs: number;
  maxMs: number;
  /** A ring of recent latencies for percentiles; bounded so memory stays flat. */
  recent: number[];
  next: number;
}

const RECENT = 1024;

/**
 * Per-operation counters and latencies, kept twice: in a private prom-client Registry (so two
 * orchestrators in one process, e.g. in tests, never share series) and as plain numbers for the
 * JSON metrics endpoint.
 */
export class OperationMetrics {
  readonly registry = new Registry();
  private readonly ops = new Map<string, OpStats>();
  private readonly operations: Counter<'op' | 'outcome'>;
  private readonly duration: Histogram<'op'>;
  private readonly workers: Gauge<'status'>;
  private readonly leases: Gauge<'status'>;
  private readonly byWorker: Gauge<'worker'>;
  private readonly byState: Gauge<'state'>;
  private readonly providerUp: Gauge<'provider'>;

  constructor() {
    const registers = [this.registry];
    this.operations = new Counter({
      name: 'stacyvm_operations_total',
      help: 'Orchestrator operations by outcome (ok or the error code).',
      labelNames: ['op', 'outcome'],
      registers,
    });
    this.duration = new Histogram({
      name: 'stacyvm_operation_duration_seconds',
      help: 'Orchestrator operation latency.',
      labelNames: ['op'],
      buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120],
      registers,
    });
    this.workers = new Gauge({ name: 'stacyvm_workers_total', help: 'Registered workers by status.', labelNames: ['status'], registers });
    this.leases = new Gauge({ name: 'stacyvm_leases_total', help: 'Leases by status.', labelNames: ['status'], registers });
    this.byWorker = new Gauge({
      name: 'stacyvm_sandboxes_by_worker_total',
      help: 'Active sandboxes per owning worker.',
      labelNames: ['worker'],
      registers,
    });
    this.byState = new Gauge({ name: 'stacyvm_sandboxes_total', help: 'Sandbox records by state.', labelNames: ['state'], registers });
    this.providerUp = new Gauge({ name: 'stacyvm_provider_healthy', help: '1 when the provider last checked healthy.', labelNames: ['provider'], registers });
  }

  /** Records one finished operation. `outcome` is `ok` or an error code. */
  record(op: string, outcome: string, ms: number): void {
    this.operations.inc({ op, outcome });
    this.duration.observe({ op }, ms / 1000);
    let s = this.ops.get(op);
    if (s === undefined) {
      s = { count: 0, failures: 0, totalMs: 0, maxMs: 0, recent: [], next: 0 };
      this.ops.set(op, s);
    }
    s.count += 1;
    if (outcome !== 'ok') s.failures += 1;
    s.totalMs += ms;
    s.maxMs = Math.max(s.maxMs, ms);
    if (s.recent.length < RECENT) s.recent.push(ms);
    else s.recent[s.next] = ms;
    s.next = (s.next + 1) % RECENT;
  }

  /** JSON view: count, failures and latency summary (ms) per operation. */
  summary(): Record<string, { count: number; failures: number; latencyMs: { avg: number; p50: number; p99: number; max: number } }> {
    const out: Record<string, { count: number; failures: number; latencyMs: { avg: number; p50: number; p99: number; max: number } }> = {};
    for (const [op, s] of [...this.ops].sort(([a], [b]) => (a < b ? -1 : 1))) {
      const sorted = [...s.recent].sort((a, b) => a - b);
      out[op] = {
        count: s.count,
        failures: s.failures,
        latencyMs: { avg: round(s.totalMs / s.count), p50: round(pct(sorted, 0.5)), p99: round(pct(sorted, 0.99)), max: round(s.maxMs) },
      };
    }
    return out;
  }

  /** Text exposition, with gauges set from `snapshot` first. */
  async exposition(snapshot: GaugeSnapshot): Promise<{ contentType: string; body: string }> {
    this.workers.reset();
    for (const [status, n] of Object.entries(snapshot.workers)) this.workers.set({ status }, n);
    this.leases.reset();
    for (const [status, n] of Object.entries(snapshot.leases)) this.leases.set({ status }, n);
    this.byWorker.reset();
    for (const [worker, n] of Object.entries(snapshot.sandboxesByWorker)) this.byWorker.set({ worker }, n);
    this.byState.reset();
    for (const [state, n] of Object.entries(snapshot.sandboxesByState)) this.byState.set({ state }, n);
    this.providerUp.reset();
    for (const [provider, up] of Object.entries(snapshot.providersHealthy)) this.providerUp.set({ provider }, up ? 1 : 0);
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

function pct(sorted: number[], q: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
}

const round = (ms: number): number => Math.round(ms * 1000) / 1000;
