/**
 * A spawn that outlasts its lease: the worker renews the lease through the control plane's
 * renewal (here the store's renewLease, which is what the endpoint calls) every third of its
 * lifetime and raises its fence with each renewal, so the sandbox ends running under a lease the
 * worker still holds with a higher generation. A spawn whose lease is lost meanwhile answers
 * lease_conflict and leaves no runtime. Time is a ManualClock with hand-driven timers.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock, toIso } from '../../src/core/clock.js';
import { StacyError } from '../../src/core/errors.js';
import { MockProvider } from '../../src/providers/mock/mock-provider.js';
import type { Provider, SpawnResult, SpawnSpec } from '../../src/providers/provider.js';
import type { Store } from '../../src/store/store.js';
import { LeaseFence, createRequest, leaseToWire, type WireLease } from '../../src/workerproto/index.js';
import { LeaseKeeper, type KeeperTimers, type LeaseRenewer } from '../../src/worker/lease-keeper.js';
import { WorkerNode } from '../../src/worker/node.js';
import { sqliteMemory } from './orchestrator/harness.js';

const SB = 'sb-0a0b0c0d';
const TTL = 60_000;

/** Timers that fire only when the test advances the ManualClock past them. */
class ManualTimers implements KeeperTimers {
  private next = 0;
  private readonly pending = new Map<number, { at: number; fn: () => void }>();
  constructor(private readonly clock: ManualClock) {}
  set(fn: () => void, ms: number): unknown {
    const id = ++this.next;
    this.pending.set(id, { at: this.clock.now() + ms, fn });
    return id;
  }
  clear(handle: unknown): void {
    this.pending.delete(handle as number);
  }
  get count(): number {
    return this.pending.size;
  }
  /** Moves time forward by `ms`, firing due timers in order and letting each renewal settle. */
  async advance(ms: number): Promise<void> {
    const target = this.clock.now() + ms;
    for (;;) {
      const due = [...this.pending.entries()].filter(([, t]) => t.at <= target).sort((a, b) => a[1].at - b[1].at)[0];
      if (due === undefined) break;
      this.pending.delete(due[0]);
      this.clock.set(due[1].at);
      due[1].fn();
      await settle();
    }
    this.clock.set(target);
  }
}

/** Lets pending promise chains (a renewal against the in-memory store) run to completion. */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i += 1) await new Promise((r) => setImmediate(r));
}

/** A provider whose spawn waits until the test lets it finish (an image still being pulled). */
class SlowSpawn implements Provider {
  readonly name: string;
  readonly capabilities: Provider['capabilities'];
  private release: (() => void) | undefined;
  private gate = new Promise<void>((r) => (this.release = r));
  constructor(private readonly inner: MockProvider) {
    this.name = inner.name;
    this.capabilities = inner.capabilities;
  }
  finish(): void {
    this.release?.();
  }
  async spawn(spec: SpawnSpec): Promise<SpawnResult> {
    await this.gate;
    return this.inner.spawn(spec);
  }
  status = (id: string) => this.inner.status(id);
  destroy = (id: string) => this.inner.destroy(id);
  execStream = (...a: Parameters<MockProvider['execStream']>) => this.inner.execStream(...a);
  writeFile = (...a: Parameters<MockProvider['writeFile']>) => this.inner.writeFile(...a);
  readFile = (...a: Parameters<MockProvider['readFile']>) => this.inner.readFile(...a);
  listFiles = (...a: Parameters<MockProvider['listFiles']>) => this.inner.listFiles(...a);
  deleteFile = (...a: Parameters<MockProvider['deleteFile']>) => this.inner.deleteFile(...a);
  moveFile = (...a: Parameters<MockProvider['moveFile']>) => this.inner.moveFile(...a);
  chmod = (...a: Parameters<MockProvider['chmod']>) => this.inner.chmod(...a);
  stat = (...a: Parameters<MockProvider['stat']>) => this.inner.stat(...a);
  glob = (...a: Parameters<MockProvider['glob']>) => this.inner.glob(...a);
  consoleLog = (...a: Parameters<MockProvider['consoleLog']>) => this.inner.consoleLog(...a);
  inventory = () => this.inner.inventory();
  health = () => this.inner.health();
}

describe('a spawn that outlasts its lease', () => {
  let root: string;
  let store: Store;
  let clock: ManualClock;
  let timers: ManualTimers;
  let mock: MockProvider;
  let slow: SlowSpawn;
  let fence: LeaseFence;
  let node: WorkerNode;
  let renewals: number;
  let renew: LeaseRenewer;

  beforeEach(async () => {
    root = mkdtempSync(join(tmpdir(), 'stacyvm-keeper-'));
    store = await sqliteMemory();
    clock = new ManualClock(Date.now());
    timers = new ManualTimers(clock);
    mock = new MockProvider({ root });
    slow = new SlowSpawn(mock);
    fence = new LeaseFence('w1', clock);
    renewals = 0;
    // What POST /api/v1/worker/w1/leases/{id}/renew does, minus HTTP. The store dates leases by
    // the host clock; the worker judges them by the test's clock, so the expiry is restated in it.
    renew = async (id, ttlMs) => {
      renewals += 1;
      return { ...leaseToWire(await store.renewLease(id, 'w1', ttlMs)), expires_at: toIso(clock.now() + ttlMs) };
    };
    node = new WorkerNode({ workerId: 'w1', providers: [slow], leaseKeeper: new LeaseKeeper({ fence, renew: (id, ttl) => renew(id, ttl), clock, timers }) });
  });
  afterEach(async () => {
    slow.finish();
    await mock.close();
    await store.close();
    rmSync(root, { recursive: true, force: true });
  });

  /** The control plane's side: acquire for w1, present it; the gate admits it through the fence. */
  async function startSpawn(): Promise<{ presented: WireLease; reply: Promise<unknown> }> {
    const presented = { ...leaseToWire(await store.acquireLease({ resourceId: SB, resourceType: 'sandbox', holderId: 'w1', ttlMs: TTL })), expires_at: toIso(clock.now() + TTL) };
    fence.admit(presented, SB);
    const request = createRequest(
      'worker.spawn',
      'w1',
      { sandbox_id: SB, provider: 'mock', image: 'host', memory_mb: 64, vcpus: 1, owner_id: null, env: {}, labels: {} },
      presented,
    );
    const reply = node.call(request);
    reply.catch(() => undefined);
    return { presented, reply };
  }

  it('renews every third of the lease while the spawn runs; the sandbox ends running under a higher generation the worker still holds', async () => {
    const { presented, reply } = await startSpawn();
    let settled = false;
    reply.finally(() => (settled = true)).catch(() => undefined);
    // Three lease lifetimes pass while the image is "pulled".
    for (let i = 1; i <= 9; i += 1) {
      await timers.advance(TTL / 3);
      expect(renewals).toBe(i);
      const lease = await store.getLease(SB);
      expect(lease).toMatchObject({ holderId: 'w1', generation: presented.generation + i });
      // The worker's fence follows every renewal, so the older generations are refused from now on.
      expect(fence.highestGeneration(SB)).toBe(presented.generation + i);
      // Nobody else can take the sandbox meanwhile.
      await expect(store.acquireLease({ resourceId: SB, resourceType: 'sandbox', holderId: 'w2', ttlMs: TTL })).rejects.toMatchObject({ code: 'lease_conflict' });
      expect(settled).toBe(false);
    }
    slow.finish();
    const result = (await reply) as { sandbox_id: string; runtime_id: string };
    expect(result.sandbox_id).toBe(SB);
    expect(await mock.status(result.runtime_id)).toBe('running');
    expect(node.hasSandbox(SB)).toBe(true);
    expect((await store.getLease(SB))?.generation).toBe(presented.generation + 9);
    // Renewal stops with the operation.
    expect(timers.count).toBe(0);
    await timers.advance(TTL);
    expect(renewals).toBe(9);
  });

  it('a spawn whose lease was taken meanwhile answers lease_conflict and leaves no runtime', async () => {
    const { reply } = await startSpawn();
    await timers.advance(TTL / 3);
    expect(renewals).toBe(1);
    // The lease is lost (released and taken by another worker, as after an expiry).
    await store.releaseLease(SB, 'w1');
    await store.acquireLease({ resourceId: SB, resourceType: 'sandbox', holderId: 'w2', ttlMs: TTL });
    await timers.advance(TTL / 3);
    expect(renewals).toBe(2);
    // A refused renewal ends renewing.
    await timers.advance(TTL);
    expect(renewals).toBe(2);
    slow.finish();
    const err = await reply.then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(StacyError);
    expect(err).toMatchObject({ code: 'lease_conflict' });
    expect((err as Error).message).toMatch(/runtime made meanwhile was removed/);
    expect(await mock.inventory()).toEqual([]);
    expect(node.hasSandbox(SB)).toBe(false);
  });

  it('a spawn that could not renew before its lease ran out answers lease_conflict', async () => {
    renew = async () => {
      renewals += 1;
      throw new StacyError('unavailable', 'control plane unreachable');
    };
    const { reply } = await startSpawn();
    // Unreachable renewals are retried each third of the lifetime...
    await timers.advance(TTL);
    expect(renewals).toBe(3);
    slow.finish();
    // ...but once the last known lease has expired, the worker cannot claim the sandbox.
    await expect(reply).rejects.toMatchObject({ code: 'lease_conflict' });
    expect(await mock.inventory()).toEqual([]);
  });

  it('a spawn shorter than a third of the lease renews nothing', async () => {
    const { presented, reply } = await startSpawn();
    await timers.advance(TTL / 3 - 1);
    slow.finish();
    await reply;
    expect(renewals).toBe(0);
    expect((await store.getLease(SB))?.generation).toBe(presented.generation);
  });
});
