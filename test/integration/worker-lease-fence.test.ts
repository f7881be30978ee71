/**
 * Lease fencing across time and restarts, with a real control plane (`stacyvm serve`):
 * - a real `stacyvm worker` process restarted on the same data dir still refuses (409
 *   lease_conflict) a generation older than one it accepted before the restart, and admits the
 *   current one;
 * - a spawn on a worker whose provider takes several lease lifetimes (a slow image pull) ends
 *   running: the worker renews the lease through the control plane while the spawn runs, so the
 *   lease stays with the worker at a growing generation and no other holder can take it.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toIso } from '../../src/core/clock.js';
import { StacyError } from '../../src/core/errors.js';
import { newSandboxId } from '../../src/core/ids.js';
import { MockProvider } from '../../src/providers/mock/mock-provider.js';
import type { Provider, SpawnSpec } from '../../src/providers/provider.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/store.js';
import { WorkerDaemon } from '../../src/worker/daemon.js';
import { RemoteWorkerClient } from '../../src/worker/rpc-client.js';
import type { WireLease } from '../../src/workerproto/index.js';
import { hostSupports } from '../host.js';
import { WORKER_TOKEN, startRemoteCluster, type RemoteCluster, type WorkerProcess } from './remote-harness.js';
import { CLI, call, makeDataDir, removeDir } from './server-process.js';

const built = () => (existsSync(CLI) ? null : `${CLI} is not built (npm run build)`);

const LEASE_TTL_MS = 4_000;
/** How long the slow provider's spawn takes: several lease lifetimes. */
const SPAWN_DELAY_MS = 3 * LEASE_TTL_MS;

/** The mock provider with a spawn that first waits, as if pulling an image. */
function slowSpawning(inner: MockProvider, delayMs: number): Provider {
  return new Proxy(inner, {
    get(target, key) {
      if (key === 'spawn') {
        return async (spec: SpawnSpec) => {
          await new Promise((r) => setTimeout(r, delayMs));
          return target.spawn(spec);
        };
      }
      const value: unknown = Reflect.get(target, key, target);
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  }) as Provider;
}

async function until(what: string, check: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe.skipIf(!hostSupports('worker lease fencing', built))('worker lease fencing with a real control plane', { timeout: 120_000 }, () => {
  let cluster: RemoteCluster;
  beforeAll(async () => {
    cluster = await startRemoteCluster({
      serverEnv: {
        STACYVM_WORKER_LEASE_TTL: `${LEASE_TTL_MS}ms`,
        // One local sandbox fills the control plane's own worker, so spawns go to remote workers.
        STACYVM_WORKER_MAX_SANDBOXES: '1',
        STACYVM_RECONCILE_REAP_INTERVAL: '500ms',
        // Generous: a loaded machine must not turn the workers stale mid-test.
        STACYVM_WORKERS_STALE_AFTER: '20s',
      },
    });
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  it('a restarted worker process refuses a generation older than one it accepted before the restart', async () => {
    const dataDir = await makeDataDir();
    const sb = newSandboxId();
    const lease = (generation: number): WireLease => ({ resource_id: sb, holder_id: 'fence-w1', generation, expires_at: toIso(Date.now() + 60_000) });
    const client = (url: string) => new RemoteWorkerClient({ workerId: 'fence-w1', url, credential: { kind: 'token', token: WORKER_TOKEN } });
    /** Stops a worker process (it reports offline, so later spawns are not placed on it). */
    const retire = async (w: WorkerProcess) => {
      await w.stop();
      const i = cluster.workers.indexOf(w);
      if (i >= 0) cluster.workers.splice(i, 1);
    };
    let running: WorkerProcess | undefined;
    try {
      running = await cluster.startWorker('fence-w1', { dataDir });
      const c1 = client(running.rpcUrl);
      let runtimeId: string;
      try {
        runtimeId = (
          await c1.spawn({ sandbox_id: sb, provider: 'mock', image: 'host', memory_mb: 64, vcpus: 1, owner_id: null, env: {}, labels: {} }, lease(1000))
        ).runtime_id;
      } finally {
        await c1.close();
      }
      await retire(running);

      running = await cluster.startWorker('fence-w1', { dataDir });
      const c2 = client(running.rpcUrl);
      const ref = { sandbox_id: sb, provider: 'mock', runtime_id: runtimeId };
      try {
        const err = await c2.destroy(ref, lease(999)).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(StacyError);
        expect(err).toMatchObject({ code: 'lease_conflict', status: 409 });
        expect((err as Error).message).toMatch(/older than generation 1000/);
        expect((await c2.call('worker.status', ref)).status).toBe('running');
        // The current generation is still admitted, and the next one tears the sandbox down.
        expect(await c2.renewLease(lease(1000))).toMatchObject({ generation: 1000 });
        expect(await c2.destroy(ref, lease(1001))).toEqual({ status: 'destroyed' });
      } finally {
        await c2.close();
      }
      expect(existsSync(join(dataDir, 'worker-fence-w1.lease-fence.json'))).toBe(true);
    } finally {
      if (running !== undefined) await retire(running);
      await removeDir(dataDir);
    }
  });

  it('a spawn that takes several lease lifetimes ends running, its lease kept by the worker at a higher generation and never free for another holder', async () => {
    const api = cluster.server.api;
    const filler = await call('POST', `${api}/sandboxes`, { provider: 'mock' });
    expect(filler.status, filler.text).toBe(201);
    const dataDir = await makeDataDir();
    const mock = new MockProvider({ root: join(dataDir, 'mock') });
    const daemon = new WorkerDaemon({
      workerId: 'slow-w1',
      controlPlaneUrl: cluster.server.url,
      credential: { kind: 'token', token: WORKER_TOKEN },
      rpcAuth: { workerToken: WORKER_TOKEN, workerTokens: {}, workerSigningKeys: [], revokedTokenIds: [] },
      providers: [slowSpawning(mock, SPAWN_DELAY_MS)],
      listen: { host: '127.0.0.1', port: 0 },
      heartbeatIntervalMs: 500,
      dataDir,
    });
    // The control plane's own store, opened beside it as another holder would.
    let store: Store | undefined;
    try {
      await daemon.start();
      await until('slow-w1 online', async () => {
        const w = await call('GET', `${api}/workers/slow-w1`);
        return w.status === 200 && (w.body as { status?: string }).status === 'online';
      });
      store = openSqliteStore({ path: join(cluster.server.dataDir, 'stacyvm.db') });
      const started = Date.now();
      const spawning = call('POST', `${api}/sandboxes`, { provider: 'mock', ttl: '10m' });
      let done = false;
      void spawning.finally(() => (done = true));

      const generations: number[] = [];
      let intruderRefusals = 0;
      while (!done) {
        const lease = (await store.listLeases({ holderId: 'slow-w1' }))[0];
        if (lease !== undefined) {
          const now = await store.now();
          expect(lease.expiresAt, `lease on ${lease.resourceId} lapsed mid-spawn`).toBeGreaterThan(now);
          if (generations.at(-1) !== lease.generation) generations.push(lease.generation);
          const taken = await store.acquireLease({ resourceId: lease.resourceId, resourceType: 'sandbox', holderId: 'intruder', ttlMs: 60_000 }).then(
            () => 'taken',
            (e: unknown) => (e instanceof StacyError ? e.code : String(e)),
          );
          expect(taken).toBe('lease_conflict');
          intruderRefusals += 1;
        }
        await new Promise((r) => setTimeout(r, 250));
      }
      const res = await spawning;
      expect(res.status, res.text).toBe(201);
      expect(Date.now() - started).toBeGreaterThanOrEqual(SPAWN_DELAY_MS);
      const sb = res.body as { id: string; state: string; worker_id: string };
      expect(sb).toMatchObject({ state: 'running', worker_id: 'slow-w1' });
      // Probed past the lifetimes the spawn outlasted, and the lease kept moving to newer generations.
      expect(intruderRefusals).toBeGreaterThan(SPAWN_DELAY_MS / LEASE_TTL_MS);
      expect(generations.length).toBeGreaterThanOrEqual(SPAWN_DELAY_MS / LEASE_TTL_MS);
      const after = await store.getLease(sb.id);
      expect(after).toMatchObject({ holderId: 'slow-w1' });
      expect(after?.generation).toBeGreaterThan(generations[0] as number);
      // The worker's fence followed the renewals: the generation the spawn was admitted under is old news.
      expect(daemon.fence.highestGeneration(sb.id)).toBeGreaterThan(generations[0] as number);
      const exec = await call('POST', `${api}/sandboxes/${sb.id}/exec`, { command: 'echo alive' });
      expect(exec.body).toMatchObject({ exit_code: 0, stdout: 'alive\n' });
      expect((await call('DELETE', `${api}/sandboxes/${sb.id}`)).body).toEqual({ status: 'destroyed' });
    } finally {
      await store?.close();
      await daemon.stop();
      await mock.close();
      await call('DELETE', `${api}/sandboxes/${(filler.body as { id: string }).id}`);
      await removeDir(dataDir);
    }
  });
});
