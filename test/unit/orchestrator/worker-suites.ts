import { createRequire } from 'node:module';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { StacyError } from '../../../src/core/errors.js';
import type { SandboxRecord } from '../../../src/core/types.js';
import type { HeartbeatInput } from '../../../src/orchestrator/service.js';
import type { Store } from '../../../src/store/store.js';
import { LOCAL_WORKER_CAPABILITIES, LocalWorker } from '../../../src/worker/local-worker.js';
import { anon, harness as baseHarness, leaseHolder, rejection } from './harness.js';
import type { Harness, HarnessOptions, StoreFactory } from './harness.js';

interface PromFamily {
  name: string;
  type: string;
  metrics: Array<{ value?: string; labels?: Record<string, string> }>;
}
const parsePrometheus = createRequire(import.meta.url)('parse-prometheus-text-format') as (text: string) => PromFamily[];

const beat = (over: Partial<HeartbeatInput> = {}): HeartbeatInput => ({
  hostname: 'remote.example',
  status: 'online',
  providers: ['mock'],
  capabilities: ['spawn'],
  capacity: { maxSandboxes: 10 },
  ...over,
});

/** Everything a spawn could have left behind. */
async function footprint(h: Harness): Promise<{ sandboxes: number; leases: number; runtimes: number }> {
  return { sandboxes: await h.store.countSandboxes(), leases: (await h.store.listLeases()).length, runtimes: (await h.mock.inventory()).length };
}

/**
 * Worker, placement, lease, reconciliation and observability behaviour, run once per store
 * dialect: these are the semantics a cluster on PostgreSQL depends on.
 */
export function workerSuites(dialect: string, openStore: StoreFactory): void {
  const harness = (options: HarnessOptions = {}): Promise<Harness> => baseHarness({ openStore, ...options });

  let h: Harness;
  afterEach(async () => {
    await h?.close();
  });

  describe('local worker', () => {
    it('registers at start, heartbeats on its loop, and goes offline on stop', async () => {
      h = await harness({ config: { worker: { heartbeatIntervalMs: 20 } }, startWorker: false });
      const w = new LocalWorker({
        store: h.store,
        id: 'local',
        providers: ['mock'],
        capacity: { maxSandboxes: 7, maxSandboxesPerOwner: 2, previewDomain: 'preview.test' },
        heartbeatIntervalMs: 20,
        hostname: 'box1',
        clock: h.clock,
      });
      const first = await w.start();
      expect(first).toMatchObject({
        id: 'local',
        hostname: 'box1',
        status: 'online',
        providers: ['mock'],
        capabilities: [...LOCAL_WORKER_CAPABILITIES],
        capacity: { maxSandboxes: 7, maxSandboxesPerOwner: 2, previewDomain: 'preview.test' },
        lastHeartbeat: h.clock.now(),
      });
      h.clock.advance(60_000);
      const target = h.clock.now();
      await vi.waitFor(async () => expect((await h.store.getWorker('local'))?.lastHeartbeat).toBe(target), { timeout: 5000, interval: 10 });
      const view = await h.orch.getWorker('local');
      expect(view.stale).toBe(false);
      expect(view.createdAt).toBe(first.createdAt);
      await w.stop();
      const after = await h.store.getWorker('local');
      expect(after?.status).toBe('offline');
      // The loop is really gone: time passes, nothing writes.
      h.clock.advance(60_000);
      await new Promise((r) => setTimeout(r, 80));
      expect((await h.store.getWorker('local'))?.lastHeartbeat).toBe(after?.lastHeartbeat);
    });

    it('computes staleness on read and upserts heartbeats through the service', async () => {
      h = await harness();
      const created = await h.orch.heartbeat('w2', beat());
      expect(created).toMatchObject({ id: 'w2', status: 'online', stale: false, lastHeartbeat: h.clock.now() });
      h.clock.advance(h.config.workers.staleAfterMs + 1);
      expect((await h.orch.getWorker('w2')).stale).toBe(true);
      expect((await h.orch.listWorkers()).map((w) => [w.id, w.stale])).toEqual([
        ['local', true],
        ['w2', true],
      ]);
      const again = await h.orch.heartbeat('w2', beat({ status: 'draining' }));
      expect(again).toMatchObject({ stale: false, status: 'draining', createdAt: created.createdAt });
      await h.orch.deleteWorker('w2');
      expect((await rejection(h.orch.getWorker('w2'))).code).toBe('not_found');
      expect((await rejection(h.orch.deleteWorker('w2'))).code).toBe('not_found');
      expect((await rejection(h.orch.heartbeat('bad id', beat()))).code).toBe('bad_request');
      expect(h.events.some((e) => e.type === 'worker.heartbeat' && e.workerId === 'w2')).toBe(true);
    });

    it('announces a worker going stale once, from the background pass', async () => {
      h = await harness();
      const o = await h.restart({ reconcile: { reapIntervalMs: 20 } });
      try {
        h.clock.advance(h.config.workers.staleAfterMs + 1);
        await vi.waitFor(() => expect(h.events.some((e) => e.type === 'worker.stale' && e.workerId === 'local')).toBe(true), { timeout: 5000, interval: 20 });
        await new Promise((r) => setTimeout(r, 100));
        expect(h.events.filter((e) => e.type === 'worker.stale')).toHaveLength(1);
      } finally {
        await o.stop();
      }
    });

    it('renews a lease only for its holder', async () => {
      h = await harness();
      const sb = await h.orch.spawn({}, anon);
      const before = await h.store.getLease(sb.id);
      const renewed = await h.orch.renewLease('local', sb.id, 60_000);
      expect(renewed.generation).toBeGreaterThan(before?.generation ?? 0);
      expect((await rejection(h.orch.renewLease('w2', sb.id, 60_000))).code).toBe('lease_conflict');
      expect((await rejection(h.orch.renewLease('local', sb.id, 0))).code).toBe('bad_request');
    });
  });

  describe('placement at spawn', () => {
    it('refuses with 503 remote_worker_rpc_unavailable when a remote worker is selected, creating nothing', async () => {
      h = await harness();
      await h.orch.heartbeat('local', beat({ hostname: 'me', status: 'draining' }));
      await h.orch.heartbeat('w2', beat());
      const err = await rejection(h.orch.spawn({}, anon));
      expect(err.code).toBe('remote_worker_rpc_unavailable');
      expect(err.status).toBe(503);
      expect(await footprint(h)).toEqual({ sandboxes: 0, leases: 0, runtimes: 0 });
      const report = await h.orch.admission({}, anon);
      expect(report).toMatchObject({ allowed: false, scheduler: { workerId: 'local', selectedWorkerId: 'w2', eligibleWorkers: 1 } });
      expect(report.reason).toMatch(/remote worker w2/);
      expect((await h.orch.diagnostics()).scheduler.selectedWorkerId).toBe('w2');
    });

    it('refuses with no_eligible_worker when nobody qualifies — a stale local record included', async () => {
      h = await harness();
      h.clock.advance(h.config.workers.staleAfterMs + 1);
      const err = await rejection(h.orch.spawn({}, anon));
      expect(err.code).toBe('no_eligible_worker');
      expect(err.message).toMatch(/local: stale heartbeat/);
      expect(await footprint(h)).toEqual({ sandboxes: 0, leases: 0, runtimes: 0 });
      await h.worker.beat();
      expect((await h.orch.spawn({}, anon)).workerId).toBe('local');
    });

    it("honours a worker's declared per-owner limit: the owner's next sandbox goes elsewhere or nowhere", async () => {
      h = await harness();
      await h.orch.heartbeat('local', beat({ hostname: 'me', capacity: { maxSandboxes: 10, maxSandboxesPerOwner: 1 } }));
      const first = await h.orch.spawn({ ownerId: 'alice' }, anon);
      expect(first.workerId).toBe('local');
      const err = await rejection(h.orch.spawn({ ownerId: 'alice' }, anon));
      expect(err.code).toBe('no_eligible_worker');
      expect(err.message).toMatch(/local: at its per-owner limit/);
      const report = await h.orch.admission({ ownerId: 'alice' }, anon);
      expect(report).toMatchObject({ allowed: false, scheduler: { selectedWorkerId: null, eligibleWorkers: 0 } });
      // Other owners still fit, and anonymous sandboxes are not counted against any owner.
      expect((await h.orch.spawn({ ownerId: 'bob' }, anon)).workerId).toBe('local');
      expect((await h.orch.spawn({}, anon)).workerId).toBe('local');
      // With a remote worker that has room for alice, placement selects it (and refuses honestly).
      await h.orch.heartbeat('w2', beat({ capacity: { maxSandboxes: 10, maxSandboxesPerOwner: 1 } }));
      expect((await rejection(h.orch.spawn({ ownerId: 'alice' }, anon))).code).toBe('remote_worker_rpc_unavailable');
      expect((await h.orch.admission({ ownerId: 'alice' }, anon)).scheduler).toMatchObject({ selectedWorkerId: 'w2', eligibleWorkers: 1 });
      expect(await h.store.countSandboxes({ ownerId: 'alice' })).toBe(1);
      // Once alice's sandbox is gone, local takes her again.
      await h.orch.destroy(first.id, anon);
      expect((await h.orch.spawn({ ownerId: 'alice' }, anon)).workerId).toBe('local');
    });

    it('counts the local worker capacity and provider support', async () => {
      h = await harness();
      await h.orch.heartbeat('local', beat({ hostname: 'me', capacity: { maxSandboxes: 1 } }));
      await h.orch.spawn({}, anon);
      expect((await rejection(h.orch.spawn({}, anon))).code).toBe('no_eligible_worker');
      await h.orch.heartbeat('local', beat({ hostname: 'me', providers: ['oci'], capacity: {} }));
      expect((await rejection(h.orch.spawn({}, anon))).message).toMatch(/does not run provider mock/);
    });
  });

  /** Records the order of store calls while passing every call to the real store. */
  function recording(store: Store, calls: string[]): Store {
    return new Proxy(store, {
      get(target, prop, receiver) {
        const value = Reflect.get(target, prop, receiver) as unknown;
        if (typeof value !== 'function') return value;
        return (...args: unknown[]) => {
          const first = args[0] as { resourceId?: string; id?: string } | string | undefined;
          const key = typeof first === 'string' ? first : (first?.resourceId ?? first?.id ?? '');
          calls.push(`${String(prop)}:${key}`);
          return (value as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    });
  }

  describe('lease enforcement', () => {
    it('acquires the sandbox lease before the record is persisted', async () => {
      h = await harness();
      const calls: string[] = [];
      const { createOrchestrator } = await import('../../../src/orchestrator/index.js');
      const o = createOrchestrator({ config: h.config, store: recording(h.store, calls), providers: h.providers, clock: h.clock, version: 't' });
      const sb = await o.spawn({}, anon);
      const acquire = calls.indexOf(`acquireLease:${sb.id}`);
      const create = calls.indexOf(`createSandbox:${sb.id}`);
      expect(acquire).toBeGreaterThanOrEqual(0);
      expect(create).toBeGreaterThan(acquire);
      await o.destroy(sb.id, anon);
    });

    it('destroy and adoption take the lease before touching the provider or the store', async () => {
      h = await harness();
      const sb = await h.orch.spawn({}, anon);
      await h.orch.stop();
      const { runtimeId: unknownRuntime } = await h.mock.spawn({ sandboxId: 'sb-0000abcd', image: 'x', memoryMb: 64, vcpus: 1, ownerId: null, workerId: 'local', env: {}, labels: {} });
      const calls: string[] = [];
      const provider = new Proxy(h.mock, {
        get(target, prop, receiver) {
          const v = Reflect.get(target, prop, receiver) as unknown;
          if (typeof v !== 'function') return v;
          return (...args: unknown[]) => {
            if (prop === 'destroy') calls.push(`provider.destroy:${String(args[0])}`);
            return (v as (...a: unknown[]) => unknown).apply(target, args);
          };
        },
      });
      const { createOrchestrator } = await import('../../../src/orchestrator/index.js');
      const o = createOrchestrator({ config: h.config, store: recording(h.store, calls), providers: [provider], clock: h.clock, version: 't' });
      await o.start();
      try {
        const adoptLease = calls.indexOf('acquireLease:sb-0000abcd');
        expect(adoptLease).toBeGreaterThanOrEqual(0);
        expect(calls.indexOf('createSandbox:sb-0000abcd')).toBeGreaterThan(adoptLease);
        calls.length = 0;
        await o.destroy(sb.id, anon);
        const lease = calls.indexOf(`acquireLease:${sb.id}`);
        expect(lease).toBeGreaterThanOrEqual(0);
        expect(calls.indexOf(`provider.destroy:${sb.runtimeId}`)).toBeGreaterThan(lease);
        expect(calls.indexOf(`updateSandbox:${sb.id}`)).toBeGreaterThan(lease);
        expect(calls.indexOf(`releaseLease:${sb.id}`)).toBeGreaterThan(calls.indexOf(`updateSandbox:${sb.id}`));
        expect(await h.mock.status(unknownRuntime)).toBe('running');
      } finally {
        await o.stop();
      }
    });

    it('does not create anything when the lease is held elsewhere', async () => {
      h = await harness();
      const { createOrchestrator } = await import('../../../src/orchestrator/index.js');
      const hostile = new Proxy(h.store, {
        get(target, prop, receiver) {
          if (prop === 'acquireLease') return () => Promise.reject(new StacyError('lease_conflict', 'held by w9'));
          return Reflect.get(target, prop, receiver) as unknown;
        },
      });
      const o = createOrchestrator({ config: h.config, store: hostile, providers: h.providers, clock: h.clock, version: 't' });
      expect((await rejection(o.spawn({}, anon))).code).toBe('lease_conflict');
      expect(await footprint(h)).toEqual({ sandboxes: 0, leases: 0, runtimes: 0 });
    });

    it('leaves no runtime without a record and no record without a runtime when a spawn fails midway', async () => {
      h = await harness();
      const { createOrchestrator } = await import('../../../src/orchestrator/index.js');
      // The runtime gets created, then the store refuses to record it as running.
      const failing = new Proxy(h.store, {
        get(target, prop, receiver) {
          if (prop === 'updateSandbox') return () => Promise.reject(new Error('disk full'));
          return Reflect.get(target, prop, receiver) as unknown;
        },
      });
      const o = createOrchestrator({ config: h.config, store: failing, providers: h.providers, clock: h.clock, version: 't' });
      const seen: string[] = [];
      o.subscribe((e) => seen.push(e.type));
      await expect(o.spawn({}, anon)).rejects.toThrow(/disk full/);
      expect(await footprint(h)).toMatchObject({ sandboxes: 0, runtimes: 0 });
      for (const lease of await h.store.listLeases()) expect(await leaseHolder(h.store, lease.resourceId)).toBeNull();
      expect(seen).toEqual(['sandbox.error']);
    });

    it('refuses destroy when another worker holds the lease and mutates nothing; a clean destroy releases it', async () => {
      h = await harness();
      const sb = await h.orch.spawn({}, anon);
      await h.store.releaseLease(sb.id, 'local');
      await h.store.acquireLease({ resourceId: sb.id, resourceType: 'sandbox', holderId: 'w2', ttlMs: 60_000 });
      const leaseBefore = await h.store.getLease(sb.id);
      const recordBefore: SandboxRecord | undefined = await h.store.getSandbox(sb.id);

      const err = await rejection(h.orch.destroy(sb.id, anon));
      expect(err.code).toBe('lease_conflict');
      expect(err.status).toBe(409);
      expect(await h.mock.status(sb.runtimeId as string)).toBe('running');
      expect(await h.store.getSandbox(sb.id)).toEqual(recordBefore);
      expect(await h.store.getLease(sb.id)).toEqual(leaseBefore);
      expect(h.events.some((e) => e.type === 'sandbox.destroyed')).toBe(false);
      // The reaper does not touch it either.
      h.clock.advance(h.config.defaults.ttlMs + 1);
      expect(await h.orch.prune()).toBe(0);
      expect(await h.mock.status(sb.runtimeId as string)).toBe('running');
      h.clock.set(sb.createdAt);

      await h.store.releaseLease(sb.id, 'w2');
      await h.orch.destroy(sb.id, anon);
      expect((await h.store.getSandbox(sb.id))?.state).toBe('destroyed');
      expect(await h.mock.status(sb.runtimeId as string)).toBe('missing');
      expect(await leaseHolder(h.store, sb.id)).toBeNull();
    });
  });

  describe('background pass', () => {
    /** An orchestrator over the harness store whose mock reports `stopped` for the given runtimes. */
    async function withStoppable(stopped: Set<string>, statusCalls: string[] = []) {
      const { createOrchestrator } = await import('../../../src/orchestrator/index.js');
      const provider = new Proxy(h.mock, {
        get(target, prop, receiver) {
          if (prop === 'status') {
            return async (runtimeId: string) => {
              statusCalls.push(runtimeId);
              return stopped.has(runtimeId) ? 'stopped' : target.status(runtimeId);
            };
          }
          const v = Reflect.get(target, prop, receiver) as unknown;
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      });
      const o = createOrchestrator({ config: h.config, store: h.store, providers: [provider], clock: h.clock, version: 't' });
      o.subscribe((e) => h.events.push(e));
      await o.start();
      const tick = (): Promise<void> => (o as unknown as { tick(): Promise<void> }).tick();
      return { o, tick };
    }

    it('notices runtimes that died while running: stopped → unhealthy, missing → destroyed with the lease released', async () => {
      h = await harness();
      const gone = await h.orch.spawn({}, anon);
      const halted = await h.orch.spawn({}, anon);
      const fine = await h.orch.spawn({}, anon);
      const theirs = await h.orch.spawn({}, anon);
      await h.orch.stop();
      const stopped = new Set<string>();
      const { o, tick } = await withStoppable(stopped);
      try {
        // The runtimes die after start-up, while the server runs.
        stopped.add(halted.runtimeId as string);
        await h.mock.destroy(gone.runtimeId as string);
        await h.mock.destroy(theirs.runtimeId as string);
        // Another worker holds this one's lease: the pass must leave it exactly as it is.
        await h.store.releaseLease(theirs.id, 'local');
        await h.store.acquireLease({ resourceId: theirs.id, resourceType: 'sandbox', holderId: 'w2', ttlMs: 60_000 });
        const theirsBefore = await h.store.getSandbox(theirs.id);
        await tick();
        expect(await h.store.getSandbox(gone.id)).toMatchObject({ state: 'destroyed', stateReason: `runtime ${gone.runtimeId} is missing` });
        expect(await leaseHolder(h.store, gone.id)).toBeNull();
        expect(await h.store.getSandbox(halted.id)).toMatchObject({ state: 'unhealthy', stateReason: 'runtime stopped' });
        expect(await leaseHolder(h.store, halted.id)).toBe('local');
        expect((await h.store.getSandbox(fine.id))?.state).toBe('running');
        expect(await h.store.getSandbox(theirs.id)).toEqual(theirsBefore);
        expect(h.events.filter((e) => e.type === 'sandbox.destroyed').map((e) => e.sandboxId)).toEqual([gone.id]);
        expect(h.events.find((e) => e.type === 'sandbox.error' && e.sandboxId === halted.id)?.data).toMatchObject({ phase: 'health', reason: 'runtime stopped' });
        // Once per change: a second pass emits nothing new.
        const count = h.events.length;
        await tick();
        expect(h.events).toHaveLength(count);
        // The runtime comes back: so does the sandbox.
        stopped.clear();
        await tick();
        expect(await h.store.getSandbox(halted.id)).toMatchObject({ state: 'running', stateReason: null });
      } finally {
        await o.stop();
      }
    });

    it('probes a bounded number of runtimes per pass and reaches every one over successive passes', async () => {
      h = await harness();
      const n = 35;
      const ids = new Set<string>();
      for (let i = 0; i < n; i++) ids.add((await h.orch.spawn({}, anon)).runtimeId as string);
      await h.orch.stop();
      const calls: string[] = [];
      const { o, tick } = await withStoppable(new Set(), calls);
      try {
        calls.length = 0;
        await tick();
        const first = calls.length;
        expect(first).toBeGreaterThan(0);
        expect(first).toBeLessThan(n);
        await tick();
        expect(new Set(calls)).toEqual(ids);
      } finally {
        await o.stop();
      }
    });

    it('prunes leases of forgotten sandboxes after the retention, so expired leases do not pile up', async () => {
      h = await harness({ config: { server: { recordRetentionMs: 50 } } });
      const done = await h.orch.spawn({}, anon);
      const live = await h.orch.spawn({}, anon);
      await h.orch.destroy(done.id, anon);
      const released = await h.store.getLease(done.id);
      const looped = await h.restart({ reconcile: { reapIntervalMs: 20 } });
      try {
        h.clock.advance(60_000);
        await vi.waitFor(async () => expect(await h.store.getLease(done.id)).toBeUndefined(), { timeout: 5000, interval: 20 });
        expect(await h.store.getSandbox(done.id)).toBeUndefined();
        expect(await leaseHolder(h.store, live.id)).toBe('local');
        const prom = await looped.prometheus();
        expect(prom.body).toMatch(/stacyvm_leases_total\{status="expired"\} 0/);
        // Were that id ever leased again, its fencing token would continue upwards.
        const again = await h.store.acquireLease({ resourceId: done.id, resourceType: 'sandbox', holderId: 'local', ttlMs: 1000 });
        expect(again.generation).toBeGreaterThan(released?.generation ?? Infinity);
      } finally {
        await looped.stop();
      }
    });
  });

  describe('start-up reconciliation', () => {
    it('marks records whose runtime is gone destroyed and releases their leases', async () => {
      h = await harness();
      const sb = await h.orch.spawn({}, anon);
      await h.orch.stop();
      await h.mock.destroy(sb.runtimeId as string);
      await h.restart();
      const rec = await h.store.getSandbox(sb.id);
      expect(rec).toMatchObject({ state: 'destroyed', stateReason: 'runtime missing at start-up' });
      expect(await leaseHolder(h.store, sb.id)).toBeNull();
    });

    it('changes nothing on a record whose lease another worker holds', async () => {
      h = await harness();
      const sb = await h.orch.spawn({}, anon);
      await h.orch.stop();
      await h.mock.destroy(sb.runtimeId as string);
      await h.store.releaseLease(sb.id, 'local');
      await h.store.acquireLease({ resourceId: sb.id, resourceType: 'sandbox', holderId: 'w2', ttlMs: 60_000 });
      const before = await h.store.getSandbox(sb.id);
      await h.restart();
      expect(await h.store.getSandbox(sb.id)).toEqual(before);
      expect(await leaseHolder(h.store, sb.id)).toBe('w2');
    });

    it('marks records of an unconfigured provider error and leaves their runtime alone', async () => {
      h = await harness();
      const sb = await h.orch.spawn({}, anon);
      await h.orch.stop();
      const { createOrchestrator } = await import('../../../src/orchestrator/index.js');
      const bare = createOrchestrator({ config: h.config, store: h.store, providers: [], clock: h.clock, version: 't' });
      await bare.start();
      await bare.stop();
      expect(await h.store.getSandbox(sb.id)).toMatchObject({ state: 'error', stateReason: 'provider mock is not configured' });
      expect(await h.mock.status(sb.runtimeId as string)).toBe('running');
      // With the provider back, the sandbox recovers.
      await h.restart();
      expect(await h.store.getSandbox(sb.id)).toMatchObject({ state: 'running', stateReason: null });
    });

    it('marks records of an unavailable provider error, then recovers them when it answers again', async () => {
      h = await harness();
      const sb = await h.orch.spawn({}, anon);
      await h.orch.stop();
      let down = true;
      const flaky = new Proxy(h.mock, {
        get(target, prop, receiver) {
          if (prop === 'health' && down) return () => Promise.resolve({ healthy: false, latencyMs: 0, error: 'daemon down', details: {} });
          const v = Reflect.get(target, prop, receiver) as unknown;
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      });
      const { createOrchestrator } = await import('../../../src/orchestrator/index.js');
      const config = { ...h.config, reconcile: { ...h.config.reconcile, reapIntervalMs: 20 } };
      const o = createOrchestrator({ config, store: h.store, providers: [flaky], clock: h.clock, version: 't' });
      await o.start();
      try {
        expect(await h.store.getSandbox(sb.id)).toMatchObject({ state: 'error', stateReason: 'provider mock is unavailable' });
        expect(await h.mock.status(sb.runtimeId as string)).toBe('running');
        expect((await o.readiness()).ready).toBe(false);
        down = false;
        h.clock.advance(60_000); // past the health cache
        await vi.waitFor(async () => expect((await h.store.getSandbox(sb.id))?.state).toBe('running'), { timeout: 5000, interval: 20 });
      } finally {
        await o.stop();
      }
    });

    it("leaves other workers' records alone", async () => {
      h = await harness();
      const now = h.clock.now();
      const theirs: SandboxRecord = {
        id: 'sb-0000f00d',
        state: 'running',
        provider: 'mock',
        image: 'python:3',
        memoryMb: 64,
        vcpus: 1,
        ownerId: null,
        workerId: 'w2',
        runtimeId: 'mock-00000000deadbeef',
        template: null,
        metadata: {},
        createdAt: now,
        updatedAt: now,
        expiresAt: now - 1,
        stateReason: null,
      };
      await h.store.createSandbox(theirs);
      await h.orch.stop();
      const o = await h.restart();
      expect(await o.prune()).toBe(0);
      expect(await h.store.getSandbox(theirs.id)).toEqual(theirs);
      expect((await rejection(o.destroy(theirs.id, anon))).code).toBe('remote_worker_rpc_unavailable');
      expect((await rejection(o.exec(theirs.id, { command: 'true', args: [], mode: 'argv', env: {} }, anon))).code).toBe('conflict');
      expect(await h.store.getSandbox(theirs.id)).toEqual(theirs);
    });

    it('finishes records interrupted while creating: runtime removed, record destroyed', async () => {
      h = await harness();
      const sb = await h.orch.spawn({}, anon);
      await h.orch.stop();
      // Simulate a crash between provider.spawn and the record update.
      await h.store.updateSandbox(sb.id, { state: 'creating', runtimeId: null });
      await h.restart();
      expect((await h.store.getSandbox(sb.id))?.state).toBe('destroyed');
      expect(await h.mock.status(sb.runtimeId as string)).toBe('missing');
    });

    it('adopts unknown runtimes under a lease, stamped with this worker', async () => {
      h = await harness();
      const { runtimeId } = await h.mock.spawn({ sandboxId: 'sb-0000abcd', image: 'python:3', memoryMb: 64, vcpus: 1, ownerId: 'alice', workerId: 'local', env: {}, labels: {} });
      const foreign = await h.mock.spawn({ sandboxId: 'sb-0000beef', image: 'python:3', memoryMb: 64, vcpus: 1, ownerId: null, workerId: 'w2', env: {}, labels: {} });
      await h.orch.stop();
      await h.restart();
      const rec = await h.store.getSandbox('sb-0000abcd');
      expect(rec).toMatchObject({ state: 'running', workerId: 'local', runtimeId, ownerId: 'alice', provider: 'mock', metadata: { adopted: 'true' } });
      expect(await leaseHolder(h.store, 'sb-0000abcd')).toBe('local');
      expect(h.events.some((e) => e.type === 'sandbox.adopted' && e.sandboxId === 'sb-0000abcd')).toBe(true);
      // Another worker's runtime is not ours to adopt or destroy.
      expect(await h.store.getSandbox('sb-0000beef')).toBeUndefined();
      expect(await h.mock.status(foreign.runtimeId)).toBe('running');
    });

    it('destroys unknown runtimes when configured to', async () => {
      h = await harness({ config: { reconcile: { unknownRuntimes: 'destroy' } } });
      const { runtimeId } = await h.mock.spawn({ sandboxId: 'sb-0000abcd', image: 'x', memoryMb: 64, vcpus: 1, ownerId: null, workerId: 'local', env: {}, labels: {} });
      await h.orch.stop();
      await h.restart();
      expect(await h.mock.status(runtimeId)).toBe('missing');
      expect(await h.store.countSandboxes()).toBe(0);
    });
  });

  describe('observability', () => {
    it('exposes the seed metric names in valid Prometheus text', async () => {
      h = await harness();
      await h.orch.heartbeat('w2', beat({ status: 'unhealthy' }));
      const sb = await h.orch.spawn({}, anon);
      await h.orch.spawn({}, anon);
      await h.orch.destroy(sb.id, anon);
      await rejection(h.orch.get('sb-00000000', anon));
      const { contentType, body } = await h.orch.prometheus();
      expect(contentType).toMatch(/^text\/plain/);
      const families = new Map(parsePrometheus(body).map((f) => [f.name, f]));
      const value = (name: string, label: string, v: string): number | undefined => {
        const m = families.get(name)?.metrics.find((x) => x.labels?.[label] === v);
        return m?.value === undefined ? undefined : Number(m.value);
      };
      expect(value('stacyvm_workers_total', 'status', 'total')).toBe(2);
      expect(value('stacyvm_workers_total', 'status', 'online')).toBe(1);
      expect(value('stacyvm_workers_total', 'status', 'stale')).toBe(0);
      expect(value('stacyvm_workers_total', 'status', 'unhealthy')).toBe(1);
      expect(value('stacyvm_leases_total', 'status', 'active')).toBe(1);
      expect(value('stacyvm_leases_total', 'status', 'total')).toBeGreaterThanOrEqual(1);
      expect(value('stacyvm_leases_total', 'status', 'expired')).toBeGreaterThanOrEqual(0);
      expect(value('stacyvm_sandboxes_by_worker_total', 'worker', 'local')).toBe(1);
      expect(value('stacyvm_sandboxes_by_worker_total', 'worker', 'w2')).toBe(0);
      expect(families.get('stacyvm_operations_total')?.metrics.some((m) => m.labels?.op === 'spawn' && m.labels.outcome === 'ok' && m.value === '2')).toBe(true);
      expect(families.get('stacyvm_operations_total')?.metrics.some((m) => m.labels?.op === 'get' && m.labels.outcome === 'not_found')).toBe(true);
      expect(families.get('stacyvm_operation_duration_seconds')?.type).toBe('HISTOGRAM');

      const json = await h.orch.metrics();
      expect(json).toMatchObject({ operations: { spawn: { count: 2, failures: 0 }, get: { count: 1, failures: 1 } } });
    });

    it('reports diagnostics with workers, leases, sandboxes and a redacted config', async () => {
      h = await harness({ config: { auth: { apiKey: 'super-secret-key' }, database: { dsn: 'postgres://u:pw@127.0.0.1/db' } } });
      await h.orch.spawn({}, anon);
      const d = await h.orch.diagnostics();
      expect(d.workers).toMatchObject({ total: 1, online: 1, stale: 0, unhealthy: 0 });
      expect(d.workers.items[0]).toMatchObject({ id: 'local', stale: false });
      expect(d.leases).toMatchObject({ total: 1, active: 1, expired: 0, byHolder: { local: 1 } });
      expect(d.sandboxes).toMatchObject({ total: 1, active: 1, byState: { running: 1 }, byProvider: { mock: 1 }, byWorker: { local: 1 } });
      expect(d.store).toEqual({ dialect, healthy: true });
      expect(d.scheduler.workerId).toBe('local');
      const text = JSON.stringify(d.config);
      expect(text).not.toContain('super-secret-key');
      expect(text).not.toContain(':pw@');
      expect(d.providers.map((p) => p.name)).toEqual(['mock']);
    });
  });
}
