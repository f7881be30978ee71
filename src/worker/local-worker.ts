import { hostname as osHostname } from 'node:os';
import type { Clock } from '../core/clock.js';
import { systemClock } from '../core/clock.js';
import type { WorkerCapacity, WorkerRecord, WorkerStatus } from '../core/types.js';
import type { Store } from '../store/store.js';

/** What a single-node server can do as a worker. */
export const LOCAL_WORKER_CAPABILITIES: readonly string[] = ['api', 'single_node', 'spawn', 'exec', 'files', 'logs', 'templates'];

export interface LocalWorkerOptions {
  store: Store;
  /** `config.worker.id`. */
  id: string;
  /** Names of the providers this process runs. */
  providers: readonly string[];
  capacity: WorkerCapacity;
  heartbeatIntervalMs: number;
  hostname?: string;
  capabilities?: readonly string[];
  clock?: Clock;
  /** Called when a heartbeat cannot be written; the loop keeps going. */
  onError?: (err: unknown) => void;
}

/**
 * The worker record of this very process: registered at start, refreshed by a heartbeat loop so
 * placement sees it as fresh, and marked `offline` on a clean stop. Nothing special-cases a
 * stale local record — if the loop stops beating, the local worker goes stale like any other.
 */
export class LocalWorker {
  private timer: NodeJS.Timeout | undefined;
  private inFlight: Promise<unknown> | undefined;
  private readonly clock: Clock;
  private readonly hostname: string;
  private running = false;

  constructor(private readonly options: LocalWorkerOptions) {
    this.clock = options.clock ?? systemClock;
    this.hostname = options.hostname ?? osHostname();
  }

  get id(): string {
    return this.options.id;
  }

  /** Registers the worker as online and starts the heartbeat loop. Throws if the first write fails. */
  async start(): Promise<WorkerRecord> {
    if (this.running) return this.beat();
    const record = await this.save('online');
    this.running = true;
    this.timer = setInterval(() => {
      if (this.inFlight !== undefined) return;
      this.inFlight = this.beat()
        .catch((err: unknown) => this.options.onError?.(err))
        .finally(() => {
          this.inFlight = undefined;
        });
    }, this.options.heartbeatIntervalMs);
    // The loop must never keep the process alive on its own.
    this.timer.unref();
    return record;
  }

  /** Writes one heartbeat now. */
  beat(): Promise<WorkerRecord> {
    return this.save('online');
  }

  /** Stops the loop, waits for a heartbeat in flight, and marks the record offline. */
  async stop(): Promise<void> {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    await this.inFlight;
    if (!this.running) return;
    this.running = false;
    await this.save('offline');
  }

  private async save(status: WorkerStatus): Promise<WorkerRecord> {
    const now = this.clock.now();
    const existing = await this.options.store.getWorker(this.options.id);
    return this.options.store.saveWorker({
      id: this.options.id,
      hostname: this.hostname,
      status,
      providers: [...this.options.providers],
      capabilities: [...(this.options.capabilities ?? LOCAL_WORKER_CAPABILITIES)],
      capacity: { ...this.options.capacity },
      lastHeartbeat: now,
      createdAt: existing?.createdAt ?? now,
      updatedAt: now,
    });
  }
}
