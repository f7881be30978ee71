/** RemoteWorkerPool against an in-process worker and a real SQLite store. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WorkerRecord } from '../../src/core/types.js';
import { newSandboxId } from '../../src/core/ids.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/store.js';
import { RemoteWorkerPool } from '../../src/worker/remote-pool.js';
import { SIGNING_KEY, startTestWorker, type TestWorker } from './worker-harness.js';

const record = (id: string, rpcUrl?: string): WorkerRecord => ({
  id,
  hostname: 'h',
  status: 'online',
  providers: ['mock'],
  capabilities: [],
  capacity: rpcUrl !== undefined ? { rpcUrl } : {},
  lastHeartbeat: Date.now(),
  createdAt: Date.now(),
  updatedAt: Date.now(),
});

describe('RemoteWorkerPool', () => {
  let worker: TestWorker;
  let store: Store;
  let pool: RemoteWorkerPool;

  beforeAll(async () => {
    worker = await startTestWorker({ workerId: 'w1' });
    store = openSqliteStore({ path: ':memory:' });
    await store.migrate();
    pool = new RemoteWorkerPool({ store, leaseTtlMs: 60_000, credentialFor: () => ({ kind: 'signing_key', keys: [SIGNING_KEY] }), timeouts: { connectTimeoutMs: 1_000 } });
  });
  afterAll(async () => {
    await pool?.close();
    await worker?.stop();
    await store?.close();
  });

  it('spawns with a lease held by the worker and reuses one provider per worker and name', async () => {
    const w = record('w1', worker.url);
    const provider = await pool.provider(w, 'mock');
    expect(await pool.provider(w, 'mock')).toBe(provider);
    const sandboxId = newSandboxId();
    const { runtimeId } = await provider.spawn({ sandboxId, image: 'host', memoryMb: 64, vcpus: 1, ownerId: null, workerId: 'w1', env: {}, labels: {} });
    expect(runtimeId.startsWith(`${sandboxId}:`)).toBe(true);
    const lease = await store.getLease(sandboxId);
    expect(lease).toMatchObject({ holderId: 'w1', generation: 1 });
    expect(await provider.status(runtimeId)).toBe('running');
    await provider.destroy(runtimeId);
    expect((await store.getLease(sandboxId))?.generation).toBe(2);
    expect(await provider.status(runtimeId)).toBe('missing');
  });

  it('a worker without rpc_url or one that cannot be reached is remote_worker_rpc_unavailable', async () => {
    await expect(pool.provider(record('w2'), 'mock')).rejects.toMatchObject({ code: 'remote_worker_rpc_unavailable' });
    await expect(pool.provider(record('w3', 'http://127.0.0.1:1'), 'mock')).rejects.toMatchObject({ code: 'remote_worker_rpc_unavailable' });
  });

  it('a provider the worker does not run is bad_request', async () => {
    await expect(pool.provider(record('w1', worker.url), 'oci')).rejects.toMatchObject({ code: 'bad_request' });
  });
});
