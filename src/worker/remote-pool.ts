/**
 * The control plane's connections to remote workers: one RemoteWorkerClient per worker (built
 * from its advertised `rpc_url`, replaced when that changes) and one RemoteProvider per
 * (worker, provider). Every lease a RemoteProvider presents is acquired from the store for the
 * worker at the moment of the call, so each spawn or destroy carries a fresh, higher
 * generation and a caller that lost the lease meanwhile is refused by the worker.
 */
import { StacyError } from '../core/errors.js';
import type { Clock } from '../core/clock.js';
import type { LeaseRecord, WorkerRecord } from '../core/types.js';
import type { Provider } from '../providers/provider.js';
import type { Store } from '../store/store.js';
import { leaseToWire } from '../workerproto/index.js';
import type { WorkerCredential } from './credentials.js';
import { RemoteProvider, RemoteWorkerClient, type RemoteWorkerClientOptions, type RemoteWorkerTlsOptions } from './rpc-client.js';

export interface RemoteWorkerPoolOptions {
  store: Pick<Store, 'acquireLease'>;
  /** Lifetime of each lease acquired for a worker (`worker.lease_ttl`). */
  leaseTtlMs: number;
  /** The credential presented to a worker (see outbound.ts). */
  credentialFor: (workerId: string) => WorkerCredential;
  tls?: RemoteWorkerTlsOptions;
  clock?: Clock;
  /** Transport bounds passed to every client (connect, reply, stream idle). */
  timeouts?: Pick<RemoteWorkerClientOptions, 'connectTimeoutMs' | 'requestTimeoutMs' | 'spawnTimeoutMs' | 'streamIdleTimeoutMs'>;
}

export class RemoteWorkerPool {
  private readonly clients = new Map<string, RemoteWorkerClient>();
  private readonly providers = new Map<string, Promise<RemoteProvider>>();

  constructor(private readonly options: RemoteWorkerPoolOptions) {}

  /**
   * The Provider that drives `provider` on `worker`. `remote_worker_rpc_unavailable` when the
   * worker advertises no rpc_url or cannot be reached; a failed connect is not cached.
   */
  async provider(worker: WorkerRecord, provider: string): Promise<Provider> {
    const client = await this.client(worker);
    const key = `${worker.id}\u0000${provider}`;
    let pending = this.providers.get(key);
    if (pending === undefined) {
      pending = RemoteProvider.connect(client, provider, async (resourceId) =>
        leaseToWire(await this.options.store.acquireLease({ resourceId, resourceType: 'sandbox', holderId: worker.id, ttlMs: this.options.leaseTtlMs })),
      );
      this.providers.set(key, pending);
      pending.catch(() => {
        if (this.providers.get(key) === pending) this.providers.delete(key);
      });
    }
    return pending;
  }

  /** Sends `worker.shutdown` to the worker (it drains; `remote_worker_rpc_unavailable` when unreachable). */
  async drain(worker: WorkerRecord): Promise<void> {
    await (await this.client(worker)).shutdown();
  }

  /** Presents `lease` to its holder with `worker.renew_lease`, so the worker's fence learns its generation. */
  async pushLease(worker: WorkerRecord, lease: LeaseRecord): Promise<void> {
    await (await this.client(worker)).renewLease(leaseToWire(lease));
  }

  /**
   * Cuts every call in flight to the worker with `remote_worker_rpc_unavailable` (carrying
   * `reason`) and drops its connections; the next call connects afresh. No-op when there is no
   * connection to it.
   */
  abandon(workerId: string, reason: string): void {
    void this.detach(workerId)?.abort(reason);
  }

  /** Forgets the worker's client and providers, so the next call connects afresh; returns the old client. */
  private detach(workerId: string): RemoteWorkerClient | undefined {
    const client = this.clients.get(workerId);
    if (client === undefined) return undefined;
    this.clients.delete(workerId);
    for (const key of [...this.providers.keys()]) if (key.startsWith(`${workerId}\u0000`)) this.providers.delete(key);
    return client;
  }

  /** Closes every connection. */
  async close(): Promise<void> {
    const clients = [...this.clients.values()];
    this.clients.clear();
    this.providers.clear();
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
  }

  private async client(worker: WorkerRecord): Promise<RemoteWorkerClient> {
    const url = worker.capacity.rpcUrl;
    if (url === undefined || url === '') {
      throw new StacyError('remote_worker_rpc_unavailable', `worker ${worker.id} advertises no rpc_url, so this server cannot reach it`);
    }
    const existing = this.clients.get(worker.id);
    if (existing !== undefined && existing.url === url) return existing;
    if (existing !== undefined) {
      // The worker restarted on another address: its old connections lead nowhere.
      await this.detach(worker.id)?.close().catch(() => undefined);
    }
    let credential: WorkerCredential;
    try {
      credential = this.options.credentialFor(worker.id);
    } catch (err) {
      // Missing configuration on this side still means the worker cannot be reached from here.
      throw new StacyError('remote_worker_rpc_unavailable', err instanceof Error ? err.message : String(err), { cause: err });
    }
    const client = new RemoteWorkerClient({
      workerId: worker.id,
      url,
      credential,
      ...(this.options.tls !== undefined ? { tls: this.options.tls } : {}),
      ...(this.options.clock !== undefined ? { clock: this.options.clock } : {}),
      ...this.options.timeouts,
    });
    this.clients.set(worker.id, client);
    return client;
  }
}
