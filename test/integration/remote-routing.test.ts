/**
 * Routing through a real control plane to real worker processes (mock provider): placement
 * spreads sandboxes over two workers, every operation reaches the owner, a worker killed with
 * -9 mid-exec gives the client a 503 (not a hang) and its sandbox turns unhealthy once the
 * worker is stale and running again when it returns, and the worker refuses a destroy under a
 * lease generation older than one it has seen.
 */
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toIso } from '../../src/core/clock.js';
import { newSandboxId } from '../../src/core/ids.js';
import { RemoteWorkerClient } from '../../src/worker/rpc-client.js';
import { hostSupports } from '../host.js';
import { WORKER_TOKEN, startRemoteCluster, until, type RemoteCluster } from './remote-harness.js';
import { CLI, call } from './server-process.js';

const built = () => (existsSync(CLI) ? null : `${CLI} is not built (npm run build)`);

interface Sandbox {
  id: string;
  state: string;
  worker_id?: string;
}

function clientFor(cluster: RemoteCluster, workerId: string): RemoteWorkerClient {
  const w = cluster.workers.find((x) => x.id === workerId);
  if (w === undefined) throw new Error(`no worker ${workerId}`);
  return new RemoteWorkerClient({ workerId, url: w.rpcUrl, credential: { kind: 'token', token: WORKER_TOKEN } });
}

const SERVER_ENV = { STACYVM_WORKER_MAX_SANDBOXES: '1', STACYVM_RECONCILE_REAP_INTERVAL: '500ms' };

describe.skipIf(!hostSupports('remote routing', built))('routing to remote worker processes', { timeout: 180_000 }, () => {
  describe('two workers', () => {
    let cluster: RemoteCluster;
    beforeAll(async () => {
      cluster = await startRemoteCluster({ workers: ['sw1', 'sw2'], serverEnv: SERVER_ENV });
    });
    afterAll(async () => {
      await cluster?.stop();
    });

    it('placement spreads 20 sandboxes over both workers and every operation reaches the owner', async () => {
      const api = cluster.server.api;
      const filler = await call('POST', `${api}/sandboxes`, { provider: 'mock' });
      expect(filler.status).toBe(201);
      expect((filler.body as Sandbox).worker_id).toBe('local');

      const made: Sandbox[] = [];
      for (let i = 0; i < 20; i += 1) {
        const res = await call('POST', `${api}/sandboxes`, { provider: 'mock', ttl: '10m' });
        expect(res.status, res.text).toBe(201);
        made.push(res.body as Sandbox);
      }
      const on = (w: string) => made.filter((s) => s.worker_id === w).length;
      expect(on('sw1')).toBe(10);
      expect(on('sw2')).toBe(10);
      expect(made.every((s) => s.state === 'running')).toBe(true);

      for (const s of made) {
        const exec = await call('POST', `${api}/sandboxes/${s.id}/exec`, { command: `echo ${s.id}` });
        expect(exec.body).toMatchObject({ exit_code: 0, stdout: `${s.id}\n` });
      }
      const one = made[0] as Sandbox;
      expect((await call('POST', `${api}/sandboxes/${one.id}/files`, { path: '/data.txt', content: 'x1' })).status).toBe(200);
      expect((await call('GET', `${api}/sandboxes/${one.id}/files?path=/data.txt`)).text).toBe('x1');
      const stream = await call('POST', `${api}/sandboxes/${one.id}/exec`, { command: 'echo streamed', stream: true });
      expect(stream.text).toContain('"stream":"exit"');
      expect(stream.text).toContain('streamed');

      for (const workerId of ['sw1', 'sw2']) {
        const client = clientFor(cluster, workerId);
        try {
          const inv = await client.call('worker.inventory', { provider: 'mock' });
          expect(new Set(inv.runtimes.map((r) => r.sandbox_id))).toEqual(new Set(made.filter((s) => s.worker_id === workerId).map((s) => s.id)));
        } finally {
          await client.close();
        }
      }

      for (const s of made) expect((await call('DELETE', `${api}/sandboxes/${s.id}`)).status).toBe(200);
      for (const workerId of ['sw1', 'sw2']) {
        const client = clientFor(cluster, workerId);
        try {
          expect((await client.call('worker.inventory', { provider: 'mock' })).runtimes).toEqual([]);
        } finally {
          await client.close();
        }
      }
      await call('DELETE', `${api}/sandboxes/${(filler.body as Sandbox).id}`);
    });

    it('the worker refuses a destroy under a lease generation older than one it has seen', async () => {
      const api = cluster.server.api;
      const filler = (await call('POST', `${api}/sandboxes`, { provider: 'mock' })).body as Sandbox;
      expect(filler.worker_id).toBe('local');
      const made = (await call('POST', `${api}/sandboxes`, { provider: 'mock' })).body as Sandbox;
      const workerId = made.worker_id as string;
      expect(['sw1', 'sw2']).toContain(workerId);
      const client = clientFor(cluster, workerId);
      try {
        const runtime = (await client.call('worker.inventory', { provider: 'mock' })).runtimes.find((r) => r.sandbox_id === made.id);
        expect(runtime).toBeDefined();
        const stale = { resource_id: made.id, holder_id: workerId, generation: 1, expires_at: toIso(Date.now() + 60_000) };
        const err = await client.destroy({ sandbox_id: made.id, provider: 'mock', runtime_id: runtime?.runtime_id as string }, stale).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toMatchObject({ code: 'lease_conflict' });
        // Nothing was torn down: the sandbox still answers through the control plane.
        const exec = await call('POST', `${api}/sandboxes/${made.id}/exec`, { command: 'echo alive' });
        expect(exec.body).toMatchObject({ exit_code: 0, stdout: 'alive\n' });
      } finally {
        await client.close();
      }
      expect((await call('DELETE', `${api}/sandboxes/${made.id}`)).body).toEqual({ status: 'destroyed' });
      await call('DELETE', `${api}/sandboxes/${filler.id}`);
    });

    it('a drained worker keeps serving its sandboxes and gets no new ones', async () => {
      const api = cluster.server.api;
      const filler = (await call('POST', `${api}/sandboxes`, { provider: 'mock' })).body as Sandbox;
      const first = (await call('POST', `${api}/sandboxes`, { provider: 'mock' })).body as Sandbox;
      const second = (await call('POST', `${api}/sandboxes`, { provider: 'mock' })).body as Sandbox;
      expect(new Set([first.worker_id, second.worker_id])).toEqual(new Set(['sw1', 'sw2']));
      const drained = await call('POST', `${api}/admin/workers/sw2/drain`);
      expect(drained.status, drained.text).toBe(200);
      expect(drained.body).toMatchObject({ id: 'sw2', status: 'draining' });
      const onSw2 = first.worker_id === 'sw2' ? first : second;
      const exec = await call('POST', `${api}/sandboxes/${onSw2.id}/exec`, { command: 'echo still' });
      expect(exec.body).toMatchObject({ exit_code: 0, stdout: 'still\n' });
      const placed: Sandbox[] = [];
      for (let i = 0; i < 3; i += 1) placed.push((await call('POST', `${api}/sandboxes`, { provider: 'mock' })).body as Sandbox);
      expect(placed.map((s) => s.worker_id)).toEqual(['sw1', 'sw1', 'sw1']);
      // Its own heartbeats keep reporting draining.
      await new Promise((r) => setTimeout(r, 1_200));
      expect((await call('GET', `${api}/workers/sw2`)).body).toMatchObject({ status: 'draining' });
      for (const s of [filler, first, second, ...placed]) expect((await call('DELETE', `${api}/sandboxes/${s.id}`)).status).toBe(200);
    });

    it('a runtime on a worker whose sandbox the control plane does not know (a lost spawn reply) is removed', async () => {
      const client = clientFor(cluster, 'sw1');
      try {
        const sandboxId = newSandboxId();
        const lease = { resource_id: sandboxId, holder_id: 'sw1', generation: 1, expires_at: toIso(Date.now() + 60_000) };
        await client.spawn({ sandbox_id: sandboxId, provider: 'mock', image: 'host', memory_mb: 64, vcpus: 1, owner_id: null, env: {}, labels: {} }, lease);
        const listed = async () => (await client.call('worker.inventory', { provider: 'mock' })).runtimes.some((r) => r.sandbox_id === sandboxId);
        expect(await listed()).toBe(true);
        await until('the orphan runtime to be removed', async () => !(await listed()));
      } finally {
        await client.close();
      }
    });
  });

  describe('a worker killed with -9', () => {
    let cluster: RemoteCluster;
    beforeAll(async () => {
      cluster = await startRemoteCluster({ workers: ['kw1'], serverEnv: SERVER_ENV });
    });
    afterAll(async () => {
      await cluster?.stop();
    });

    it('mid-exec gives 503, nothing is created on it, its sandbox turns unhealthy and returns to running when it comes back', async () => {
      const api = cluster.server.api;
      await call('POST', `${api}/sandboxes`, { provider: 'mock' }); // fills the local worker
      const sb = (await call('POST', `${api}/sandboxes`, { provider: 'mock', ttl: '10m' })).body as Sandbox;
      expect(sb.worker_id).toBe('kw1');
      const worker = cluster.workers[0];
      if (worker === undefined) throw new Error('no worker');

      const execution = call('POST', `${api}/sandboxes/${sb.id}/exec`, { command: 'sleep 30' });
      await new Promise((r) => setTimeout(r, 500));
      await worker.kill9();
      const exec = await execution;
      expect(exec.status).toBe(503);
      expect(exec.body).toMatchObject({ code: 'remote_worker_rpc_unavailable' });

      const before = ((await call('GET', `${api}/sandboxes`)).body as Sandbox[]).length;
      const refused = await call('POST', `${api}/sandboxes`, { provider: 'mock' });
      expect(refused.status).toBe(503);
      // remote_worker_rpc_unavailable while kw1 still looks fresh; no_eligible_worker once it is stale.
      expect(['remote_worker_rpc_unavailable', 'no_eligible_worker']).toContain((refused.body as { code: string }).code);
      expect(((await call('GET', `${api}/sandboxes`)).body as Sandbox[]).length).toBe(before);

      const state = async () => ((await call('GET', `${api}/sandboxes/${sb.id}`)).body as Sandbox).state;
      await until('the sandbox to turn unhealthy', async () => (await state()) === 'unhealthy');

      await cluster.startWorker('kw1', { dataDir: worker.dataDir });
      await until('the sandbox to run again', async () => (await state()) === 'running');
      const again = await call('POST', `${api}/sandboxes/${sb.id}/exec`, { command: 'echo back' });
      expect(again.body).toMatchObject({ exit_code: 0, stdout: 'back\n' });
      expect((await call('DELETE', `${api}/sandboxes/${sb.id}`)).body).toEqual({ status: 'destroyed' });
    });
  });

  describe('a worker stopped with SIGSTOP past its lease', () => {
    let cluster: RemoteCluster;
    beforeAll(async () => {
      cluster = await startRemoteCluster({ workers: ['pw1'], serverEnv: { ...SERVER_ENV, STACYVM_WORKER_LEASE_TTL: '2s' } });
    });
    afterAll(async () => {
      const w = cluster?.workers[0];
      if (w !== undefined && w.proc.exitCode === null) w.proc.kill('SIGCONT');
      await cluster?.stop();
    });

    it('gets 503 at once while stale, and its sandbox runs again after SIGCONT', async () => {
      const api = cluster.server.api;
      const filler = (await call('POST', `${api}/sandboxes`, { provider: 'mock' })).body as Sandbox;
      const sb = (await call('POST', `${api}/sandboxes`, { provider: 'mock', ttl: '10m' })).body as Sandbox;
      expect(sb.worker_id).toBe('pw1');
      const worker = cluster.workers[0];
      if (worker === undefined) throw new Error('no worker');
      worker.proc.kill('SIGSTOP');
      try {
        const state = async () => ((await call('GET', `${api}/sandboxes/${sb.id}`)).body as Sandbox).state;
        await until('the sandbox to turn unhealthy', async () => (await state()) === 'unhealthy');
        // Past the lease TTL too: the control plane does not renew leases of a stale worker.
        await new Promise((r) => setTimeout(r, 2_500));
        const exec = await call('POST', `${api}/sandboxes/${sb.id}/exec`, { command: 'echo x' });
        expect(exec.status).toBe(503);
        expect(exec.body).toMatchObject({ code: 'remote_worker_rpc_unavailable' });
      } finally {
        worker.proc.kill('SIGCONT');
      }
      const state = async () => ((await call('GET', `${api}/sandboxes/${sb.id}`)).body as Sandbox).state;
      await until('the sandbox to run again', async () => (await state()) === 'running');
      const again = await call('POST', `${api}/sandboxes/${sb.id}/exec`, { command: 'echo back' });
      expect(again.body).toMatchObject({ exit_code: 0, stdout: 'back\n' });
      // The fence moved on while it was stopped; destroy still reaches it with a newer generation.
      expect((await call('DELETE', `${api}/sandboxes/${sb.id}`)).body).toEqual({ status: 'destroyed' });
      await call('DELETE', `${api}/sandboxes/${filler.id}`);
    });
  });
});
