/**
 * The worker registry as the API sees it (list, heartbeat, delete) and lease renewal on a
 * worker's behalf.
 */
import { WORKER_ID_PATTERN } from '../config/load.js';
import { formatDuration } from '../core/duration.js';
import { badRequest, notFound, StacyError } from '../core/errors.js';
import type { LeaseRecord } from '../core/types.js';
import type { HeartbeatInput, WorkerView } from './service.js';
import type { OrchestratorContext } from './context.js';

/** Worker records and lease renewal. */
export class WorkerRegistry {
  constructor(private readonly ctx: OrchestratorContext) {}

  listWorkers(): Promise<WorkerView[]> {
    return this.ctx.op('worker_list', async () => (await this.ctx.store.listWorkers()).map((w) => this.ctx.view(w)).sort((a, b) => (a.id < b.id ? -1 : 1)));
  }

  getWorker(id: string): Promise<WorkerView> {
    return this.ctx.op('worker_get', async () => {
      const w = await this.ctx.store.getWorker(id);
      if (w === undefined) throw notFound('worker', id);
      return this.ctx.view(w);
    });
  }

  heartbeat(workerId: string, beat: HeartbeatInput): Promise<WorkerView> {
    return this.ctx.op('worker_heartbeat', async () => {
      checkWorkerId(workerId);
      if (beat.hostname.length === 0 || beat.hostname.length > 255) throw badRequest('hostname: 1-255 characters');
      const now = this.ctx.clock.now();
      const existing = await this.ctx.store.getWorker(workerId);
      const saved = await this.ctx.store.saveWorker({
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
      this.ctx.staleWorkers.delete(workerId);
      this.ctx.emit('worker.heartbeat', { workerId, data: { status: saved.status, hostname: saved.hostname } });
      return this.ctx.view(saved);
    });
  }

  drainWorker(id: string): Promise<WorkerView> {
    return this.ctx.op('worker_drain', async () => {
      const w = await this.ctx.store.getWorker(id);
      if (w === undefined) throw notFound('worker', id);
      if (id === this.ctx.workerId) throw badRequest(`worker ${id} is this server's own worker; lower worker.max_sandboxes to stop placing sandboxes on it`);
      if (this.ctx.remote === undefined) throw new StacyError('remote_worker_rpc_unavailable', `this server has no worker RPC client to reach worker ${id}`);
      await this.ctx.remote.drain(w);
      // Recorded at once so placement stops now, not at the worker's next heartbeat.
      const saved = await this.ctx.store.saveWorker({ ...w, status: 'draining', updatedAt: this.ctx.clock.now() });
      return this.ctx.view(saved);
    });
  }

  deleteWorker(id: string): Promise<void> {
    return this.ctx.op('worker_delete', () => this.ctx.store.deleteWorker(id));
  }

  renewLease(workerId: string, resourceId: string, ttlMs: number): Promise<LeaseRecord> {
    return this.ctx.op('lease_renew', async () => {
      checkWorkerId(workerId);
      if (!Number.isFinite(ttlMs) || ttlMs <= 0) throw badRequest('ttl: must be a positive duration');
      // A worker may hold a lease for at most a few heartbeats; longer would outlive its death by too much.
      const max = Math.max(this.ctx.leaseTtl(), this.ctx.config.workers.staleAfterMs);
      if (ttlMs > max) throw badRequest(`ttl: ${formatDuration(ttlMs)} exceeds the maximum lease TTL of ${formatDuration(max)}`);
      return this.ctx.store.renewLease(resourceId, workerId, ttlMs);
    });
  }
}


function checkWorkerId(id: string): void {
  if (!WORKER_ID_PATTERN.test(id)) throw badRequest('worker id: 1-128 characters of letters, digits, ".", "_" or "-"');
}