/**
 * The orchestrator's remote routing against an in-process worker (WorkerRpcServer on loopback,
 * mock provider) with a ManualClock, so the stale-worker policy is driven step by step:
 * unhealthy when stale, destroy and expiry settle without calling a stale worker and release the
 * lease, and a returning worker gets the runtimes of finished sandboxes removed.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock, toIso } from '../../../src/core/clock.js';
import { createOrchestrator, type Orchestrator } from '../../../src/orchestrator/index.js';
import { MockProvider } from '../../../src/providers/mock/mock-provider.js';
import type { Store } from '../../../src/store/store.js';
import { RemoteWorkerPool } from '../../../src/worker/remote-pool.js';
import { RemoteProvider, RemoteWorkerClient } from '../../../src/worker/rpc-client.js';
import { leaseToWire } from '../../../src/workerproto/index.js';
import { SIGNING_KEY, startTestWorker, type TestWorker } from '../../integration/worker-harness.js';
import { anon, leaseHolder, sqliteMemory, testConfig } from './harness.js';

interface Setup {
  orch: Orchestrator;
  store: Store;
  clock: ManualClock;
  worker: TestWorker;
  beat: () => Promise<void>;
  close: () => Promise<void>;
}

/** `localProviders: false` is a control plane that runs no provider itself. */
async function setup(options: { localProviders?: boolean } = {}): Promise<Setup> {
  const config = testConfig();
  const root = mkdtempSync(join(tmpdir(), 'stacyvm-orch-remote-'));
  const store = await sqliteMemory();
  const clock = new ManualClock(Date.now());
  const worker = await startTestWorker({ workerId: 'w1' });
  const pool = new RemoteWorkerPool({ store, leaseTtlMs: config.worker.leaseTtlMs, credentialFor: () => ({ kind: 'signing_key', keys: [SIGNING_KEY] }) });
  const local = new MockProvider({ root: join(root, 'mock') });
  // No local worker record: placement can only choose w1.
  const providers = options.localProviders === false ? [] : [local];
  const orch = createOrchestrator({ config, store, providers, clock, version: 'test', remoteWorkers: pool });
  await orch.start();
  const beat = async () => {
    await orch.heartbeat('w1', { hostname: 'w1', status: 'online', providers: ['mock'], capabilities: ['isolation:mock:none'], capacity: { rpcUrl: worker.url } });
  };
  await beat();
  return {
    orch,
    store,
    clock,
    worker,
    beat,
    close: async () => {
      await orch.stop();
      await pool.close();
      await worker.stop();
      await local.close();
      await store.close();
      rmSync(root, { recursive: true, force: true });
    },
  };
}

/** One background pass, driven by hand (the test config disables the loop). */
const tick = (o: Orchestrator): Promise<void> => (o as unknown as { tick(): Promise<void> }).tick();

const runtimesOn = async (w: TestWorker) => (await w.provider.inventory()).map((r) => r.sandboxId);

describe('remote routing in the orchestrator', () => {
  let s: Setup | undefined;
  afterEach(async () => {
    await s?.close();
    s = undefined;
  });

  it('spawns on the worker under a lease it holds, and destroys there', async () => {
    s = await setup();
    const sb = await s.orch.spawn({ provider: 'mock', image: 'host' }, anon);
    expect(sb).toMatchObject({ workerId: 'w1', state: 'running' });
    expect(await leaseHolder(s.store, sb.id)).toBe('w1');
    expect(await runtimesOn(s.worker)).toEqual([sb.id]);
    const events: Array<{ type: string; workerId?: string }> = [];
    s.orch.subscribe((e) => events.push(e));
    const r = await s.orch.exec(sb.id, { command: 'echo hi', args: [], mode: 'shell', env: {} }, anon);
    expect(r.stdout).toBe('hi\n');
    expect(events.find((e) => e.type === 'exec.completed')?.workerId).toBe('w1');
    await s.orch.destroy(sb.id, anon);
    expect(await runtimesOn(s.worker)).toEqual([]);
    expect(await leaseHolder(s.store, sb.id)).toBeNull();
  });

  it('stale worker: live sandboxes turn unhealthy; destroy and expiry settle without it; its return removes finished runtimes and revives the rest', async () => {
    s = await setup();
    const config = testConfig();
    const kept = await s.orch.spawn({ provider: 'mock', image: 'host', ttlMs: 60 * 60_000 }, anon);
    const destroyed = await s.orch.spawn({ provider: 'mock', image: 'host', ttlMs: 60 * 60_000 }, anon);
    const expiring = await s.orch.spawn({ provider: 'mock', image: 'host', ttlMs: config.workers.staleAfterMs + 60_000 }, anon);

    s.clock.advance(config.workers.staleAfterMs + 1_000);
    await tick(s.orch);
    for (const sb of [kept, destroyed, expiring]) expect((await s.orch.get(sb.id, anon)).state).toBe('unhealthy');
    // Calls are refused at once rather than sent to a worker that may be hung.
    await expect(s.orch.exec(kept.id, { command: 'true', args: [], mode: 'argv', env: {} }, anon)).rejects.toMatchObject({ code: 'remote_worker_rpc_unavailable' });

    await s.orch.destroy(destroyed.id, anon);
    expect((await s.orch.get(destroyed.id, anon)).state).toBe('destroyed');
    expect(await leaseHolder(s.store, destroyed.id)).toBeNull();

    s.clock.advance(2 * 60_000);
    await tick(s.orch);
    expect((await s.orch.get(expiring.id, anon)).state).toBe('expired');
    expect(await leaseHolder(s.store, expiring.id)).toBeNull();
    // The worker was never called: its runtimes are all still there.
    expect(new Set(await runtimesOn(s.worker))).toEqual(new Set([kept.id, destroyed.id, expiring.id]));

    await s.beat();
    await tick(s.orch);
    expect((await s.orch.get(kept.id, anon)).state).toBe('running');
    expect(await runtimesOn(s.worker)).toEqual([kept.id]);
  });

  it('a provider only a remote worker runs is accepted and placed there; one no worker runs is bad_request', async () => {
    s = await setup({ localProviders: false });
    const sb = await s.orch.spawn({ provider: 'mock', image: 'host' }, anon);
    expect(sb).toMatchObject({ provider: 'mock', workerId: 'w1', state: 'running' });
    expect(await runtimesOn(s.worker)).toEqual([sb.id]);
    expect((await s.orch.exec(sb.id, { command: 'echo remote', args: [], mode: 'shell', env: {} }, anon)).stdout).toBe('remote\n');
    await s.orch.createTemplate({ name: 'on-workers', provider: 'mock', image: 'host' });
    expect(await s.orch.spawnFromTemplate('on-workers', {}, anon)).toMatchObject({ provider: 'mock', workerId: 'w1' });

    await expect(s.orch.spawn({ provider: 'oci', image: 'busybox' }, anon)).rejects.toMatchObject({ code: 'bad_request' });
    await expect(s.orch.createTemplate({ name: 'nowhere', provider: 'oci' })).rejects.toMatchObject({ code: 'bad_request' });
    // A worker that stops advertising the provider takes it out of the cluster's set.
    await s.orch.heartbeat('w1', { hostname: 'w1', status: 'online', providers: ['other'], capabilities: [], capacity: { rpcUrl: s.worker.url } });
    await expect(s.orch.spawn({ provider: 'mock', image: 'host' }, anon)).rejects.toMatchObject({ code: 'bad_request' });
  });

  it('calls in flight when the worker turns stale are cut with 503 at once, and the worker is reached again once it heartbeats', async () => {
    s = await setup();
    const config = testConfig();
    const sb = await s.orch.spawn({ provider: 'mock', image: 'host', ttlMs: 60 * 60_000 }, anon);
    // A reply that will not come for 20 s stands for a worker cut off mid-call: the call's own
    // bound (its timeout + 30 s) is far away.
    const buffered = s.orch.exec(sb.id, { command: 'sleep 20', args: [], mode: 'shell', env: {}, timeoutMs: 30_000 }, anon).then(
      () => undefined,
      (e: unknown) => e,
    );
    const streamed = (async () => {
      for await (const _ of s.orch.execStream(sb.id, { command: 'sleep 20', args: [], mode: 'shell', env: {}, timeoutMs: 30_000 }, anon)) void _;
    })().then(
      () => undefined,
      (e: unknown) => e,
    );
    await new Promise((r) => setTimeout(r, 500));
    s.clock.advance(config.workers.staleAfterMs + 1_000);
    const t0 = Date.now();
    await tick(s.orch);
    for (const err of [await buffered, await streamed]) {
      expect(err).toMatchObject({ code: 'remote_worker_rpc_unavailable' });
      expect((err as Error).message).toContain('stale');
    }
    expect(Date.now() - t0).toBeLessThan(5_000);
    expect((await s.orch.get(sb.id, anon)).state).toBe('unhealthy');

    await s.beat();
    await tick(s.orch);
    expect((await s.orch.get(sb.id, anon)).state).toBe('running');
    const r = await s.orch.exec(sb.id, { command: 'echo back', args: [], mode: 'shell', env: {} }, anon);
    expect(r.stdout).toBe('back\n');
  });

  it('a worker that returns is shown the current lease generation before its sandboxes run again, so an older holder is refused', async () => {
    s = await setup();
    const config = testConfig();
    const sb = await s.orch.spawn({ provider: 'mock', image: 'host', ttlMs: 60 * 60_000 }, anon);
    // The lease the sandbox was spawned under: what a caller that lost track of the partition
    // would still present, its expiry still ahead by its own clock.
    const old = await s.store.getLease(sb.id);
    expect(old?.holderId).toBe('w1');

    s.clock.advance(config.workers.staleAfterMs + 1_000);
    await tick(s.orch);
    expect((await s.orch.get(sb.id, anon)).state).toBe('unhealthy');
    await s.beat();
    await tick(s.orch);
    expect((await s.orch.get(sb.id, anon)).state).toBe('running');

    const ref = RemoteProvider.parseHandle((await s.orch.get(sb.id, anon)).runtimeId as string);
    const client = new RemoteWorkerClient({ workerId: 'w1', url: s.worker.url, credential: { kind: 'signing_key', keys: [SIGNING_KEY] } });
    try {
      const err = await client
        .destroy({ sandbox_id: sb.id, provider: 'mock', runtime_id: ref?.runtimeId as string }, leaseToWire(old as NonNullable<typeof old>))
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(err).toMatchObject({ code: 'lease_conflict' });
      expect((err as Error).message).toContain('older than generation');
    } finally {
      await client.close();
    }
    expect(await runtimesOn(s.worker)).toEqual([sb.id]);
  });

  it('a worker with no rpc_url is 503 remote_worker_rpc_unavailable and nothing is created', async () => {
    s = await setup();
    await s.orch.heartbeat('w1', { hostname: 'w1', status: 'online', providers: ['mock'], capabilities: [], capacity: {} });
    await expect(s.orch.spawn({ provider: 'mock', image: 'host' }, anon)).rejects.toMatchObject({ code: 'remote_worker_rpc_unavailable' });
    expect(await s.orch.list(anon)).toEqual([]);
  });

  it('a background pass that renews a remote lease tells the worker, which then refuses the older generation; an unreachable worker is told on a later pass', async () => {
    s = await setup();
    const sb = await s.orch.spawn({ provider: 'mock', image: 'host', ttlMs: 60 * 60_000 }, anon);
    const runtime = (await s.worker.provider.inventory()).find((r) => r.sandboxId === sb.id);
    expect(runtime).toBeDefined();
    const ref = { sandbox_id: sb.id, provider: 'mock', runtime_id: runtime?.runtimeId as string };
    const client = new RemoteWorkerClient({ workerId: 'w1', url: s.worker.url, credential: { kind: 'signing_key', keys: [SIGNING_KEY] } });
    const live = (lease: { resourceId: string; holderId: string; generation: number; expiresAt: number }) => ({ ...leaseToWire(lease), expires_at: toIso(Date.now() + 60_000) });
    /** A lease near its end, as after half its lifetime: the pass renews it. */
    const ageLease = () => s?.store.acquireLease({ resourceId: sb.id, resourceType: 'sandbox', holderId: 'w1', ttlMs: 1_000 }) as ReturnType<Store['acquireLease']>;
    try {
      const older = await ageLease();
      await tick(s.orch);
      const renewed = await s.store.getLease(sb.id);
      expect(renewed).toMatchObject({ holderId: 'w1' });
      expect(renewed?.generation).toBeGreaterThan(older.generation);
      // A caller still holding the older generation (paused, partitioned) is refused by the worker.
      await expect(client.destroy(ref, live(older))).rejects.toMatchObject({ code: 'lease_conflict' });
      expect(await runtimesOn(s.worker)).toEqual([sb.id]);

      // The worker moves to an address where nothing answers: the pass renews in the store and goes on.
      const dead = createServer();
      await new Promise<void>((r) => dead.listen(0, '127.0.0.1', () => r()));
      const deadUrl = `http://127.0.0.1:${(dead.address() as { port: number }).port}`;
      await new Promise<void>((r) => dead.close(() => r()));
      await s.orch.heartbeat('w1', { hostname: 'w1', status: 'online', providers: ['mock'], capabilities: ['isolation:mock:none'], capacity: { rpcUrl: deadUrl } });
      const missed = await ageLease();
      await tick(s.orch);
      const unpushed = await s.store.getLease(sb.id);
      expect(unpushed?.generation).toBeGreaterThan(missed.generation);
      expect(unpushed?.expiresAt).toBeGreaterThan((await s.store.now()) + 60_000);

      // Back at its address, the next pass tells it although the lease no longer needs renewing.
      await s.beat();
      await tick(s.orch);
      expect((await s.store.getLease(sb.id))?.generation).toBe(unpushed?.generation);
      await expect(client.destroy(ref, live(missed))).rejects.toMatchObject({ code: 'lease_conflict' });
      expect(await runtimesOn(s.worker)).toEqual([sb.id]);
      expect((await s.orch.get(sb.id, anon)).state).toBe('running');
    } finally {
      await client.close();
    }
  });
});
