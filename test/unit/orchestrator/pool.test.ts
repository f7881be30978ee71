import { afterEach, describe, expect, it, vi } from 'vitest';
import { buildApp } from '../../../src/api/app.js';
import type { SandboxRecord } from '../../../src/core/types.js';
import { POOLED_EXPIRES_AT } from '../../../src/orchestrator/pool.js';
import { POOLED_METADATA_KEY } from '../../../src/orchestrator/validate.js';
import { type Harness, admin, anon, harness, leaseHolder, rejection, user } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

async function pooled(hh: Harness): Promise<SandboxRecord[]> {
  return (await hh.store.listSandboxes({ states: ['creating', 'running'] })).filter((r) => POOLED_METADATA_KEY in r.metadata);
}

async function withPool(size: number, extra: Record<string, unknown> = {}): Promise<Harness> {
  h = await harness({ config: { pool: { enabled: true, size, refillIntervalMs: 0 }, ...extra } });
  await h.orch.fillPool();
  return h;
}

describe('warm pool', () => {
  it('is off by default and keeps nothing', async () => {
    h = await harness();
    await h.orch.fillPool();
    expect(await pooled(h)).toHaveLength(0);
    expect(await h.orch.poolStatus()).toMatchObject({ enabled: false, targetSize: 0, ready: 0 });
  });

  it('fills to size with leases held by the local worker, one acquire per sandbox', async () => {
    const hh = await withPool(3);
    const rows = await pooled(hh);
    expect(rows).toHaveLength(3);
    for (const r of rows) {
      expect(r).toMatchObject({ state: 'running', ownerId: null, workerId: 'local', image: hh.config.defaults.image, provider: 'mock', expiresAt: POOLED_EXPIRES_AT });
      expect(r.runtimeId).not.toBeNull();
      const lease = await hh.store.getLease(r.id);
      expect(lease).toMatchObject({ holderId: 'local', resourceType: 'sandbox', generation: 1 });
    }
    expect(await hh.orch.poolStatus()).toEqual({
      enabled: true,
      targetSize: 3,
      ready: 3,
      creating: 0,
      image: hh.config.defaults.image,
      provider: 'mock',
      claimsTotal: 0,
      missesTotal: 0,
    });
    // A second pass finds the pool full and creates nothing.
    await hh.orch.fillPool();
    expect(await pooled(hh)).toHaveLength(3);
  });

  it('answers a matching spawn with a warm sandbox without calling the provider, then refills', async () => {
    const hh = await withPool(2);
    const before = new Set((await pooled(hh)).map((r) => r.id));
    const spawn = vi.spyOn(hh.mock, 'spawn');
    const sb = await hh.orch.spawn({ ttlMs: 60_000, metadata: { job: 'a' } }, user('alice'));
    expect(spawn).not.toHaveBeenCalled();
    expect(before.has(sb.id)).toBe(true);
    expect(sb).toMatchObject({ state: 'running', ownerId: 'alice', metadata: { job: 'a' }, expiresAt: hh.clock.now() + 60_000 });
    expect(await leaseHolder(hh.store, sb.id)).toBe('local');
    expect((await hh.store.getLease(sb.id))?.generation).toBe(2);
    // The claimed sandbox works like any other.
    expect((await hh.orch.exec(sb.id, { command: 'echo hi', args: [], mode: 'shell', env: {} }, user('alice'))).stdout).toBe('hi\n');
    await hh.orch.fillPool();
    expect(await pooled(hh)).toHaveLength(2);
    expect(spawn).toHaveBeenCalledTimes(1);
    expect(await hh.orch.poolStatus()).toMatchObject({ ready: 2, claimsTotal: 1, missesTotal: 0 });
    expect(hh.events.some((e) => e.type === 'sandbox.spawned' && e.sandboxId === sb.id && e.data.pooled === true)).toBe(true);
  });

  it('creates a non-matching spawn normally and leaves the pool alone', async () => {
    const hh = await withPool(1);
    const warm = (await pooled(hh))[0]?.id;
    const spawn = vi.spyOn(hh.mock, 'spawn');
    for (const request of [{ memoryMb: 256 }, { image: 'alpine:3' }, { env: { A: '1' } }, { vcpus: 2 }]) {
      const sb = await hh.orch.spawn(request, anon);
      expect(sb.id).not.toBe(warm);
    }
    expect(spawn).toHaveBeenCalledTimes(4);
    expect((await pooled(hh)).map((r) => r.id)).toEqual([warm]);
    expect(await hh.orch.poolStatus()).toMatchObject({ claimsTotal: 0, missesTotal: 0 });
  });

  it('concurrent claims never hand out the same sandbox; the surplus is created normally and counted as misses', async () => {
    const hh = await withPool(2);
    const warm = new Set((await pooled(hh)).map((r) => r.id));
    const got = await Promise.all(Array.from({ length: 5 }, (_, i) => hh.orch.spawn({}, user(`u${i}`))));
    const ids = got.map((r) => r.id);
    expect(new Set(ids).size).toBe(5);
    for (const id of warm) expect(ids.filter((x) => x === id).length).toBeLessThanOrEqual(1);
    expect(ids.filter((id) => warm.has(id))).toHaveLength(2);
    for (const r of got) expect((await hh.store.getSandbox(r.id))?.ownerId).toBe(r.ownerId);
    // Refills run in the background meanwhile and may serve a later spawn too.
    const status = await hh.orch.poolStatus();
    expect(status.claimsTotal).toBeGreaterThanOrEqual(2);
    expect(status.claimsTotal + status.missesTotal).toBe(5);
  });

  it('does not claim a warm sandbox whose lease another worker holds', async () => {
    const hh = await withPool(2);
    const [taken, free] = await pooled(hh);
    if (taken === undefined || free === undefined) throw new Error('pool did not fill');
    await hh.store.releaseLease(taken.id, 'local');
    await hh.store.acquireLease({ resourceId: taken.id, resourceType: 'sandbox', holderId: 'w2', ttlMs: 60_000 });
    const a = await hh.orch.spawn({}, user('a'));
    const b = await hh.orch.spawn({}, user('b'));
    expect(a.id).toBe(free.id);
    expect(b.id).not.toBe(taken.id);
    expect((await hh.store.getSandbox(taken.id))?.ownerId).toBeNull();
  });

  it('keeps warm sandboxes out of lists, owner counts and TTL reaping, and refuses the reserved metadata key', async () => {
    const hh = await withPool(2, { defaults: { maxSandboxesPerOwner: 1 } });
    expect(await hh.orch.list(admin)).toEqual([]);
    expect(await hh.orch.list(anon)).toEqual([]);
    expect((await hh.orch.quotaUsage('alice')).activeSandboxes).toBe(0);
    await hh.orch.spawn({}, user('alice'));
    expect((await hh.orch.list(admin)).map((r) => r.ownerId)).toEqual(['alice']);
    // The owner limit applies to claims as to any spawn.
    expect((await rejection(hh.orch.spawn({}, user('alice')))).code).toBe('resource_limit');
    hh.clock.advance(30 * 24 * 3_600_000);
    expect(await hh.orch.prune()).toBe(1);
    // The claim was refilled in the background; nothing of the pool was reaped.
    await hh.orch.fillPool();
    expect(await pooled(hh)).toHaveLength(2);
    expect(await hh.orch.poolStatus()).toMatchObject({ ready: 2, claimsTotal: 1 });
    expect((await rejection(hh.orch.spawn({ metadata: { [POOLED_METADATA_KEY]: 'x' } }, anon))).code).toBe('bad_request');
  });

  it('warm sandboxes survive a restart; the new process claims them and drains them when the pool is turned off', async () => {
    const hh = await withPool(2);
    const ids = (await pooled(hh)).map((r) => r.id).sort();
    await hh.orch.stop();
    const again = await hh.restart();
    await again.fillPool();
    expect((await pooled(hh)).map((r) => r.id).sort()).toEqual(ids);
    const sb = await again.spawn({}, user('bob'));
    expect(ids).toContain(sb.id);
    await again.stop();
    const off = await hh.restart({ pool: { enabled: false } });
    await off.fillPool();
    expect(await pooled(hh)).toHaveLength(0);
    expect((await hh.store.getSandbox(sb.id))?.state).toBe('running');
  });

  it('replaces warm sandboxes of a shape the configuration no longer asks for, and never hands them out', async () => {
    const hh = await withPool(1);
    const old = (await pooled(hh))[0];
    if (old === undefined) throw new Error('pool did not fill');
    await hh.orch.stop();
    const again = await hh.restart({ pool: { image: 'alpine:3' } });
    await again.fillPool();
    expect((await hh.store.getSandbox(old.id))?.state).toBe('destroyed');
    const fresh = await pooled(hh);
    expect(fresh.map((r) => r.image)).toEqual(['alpine:3']);
    const plain = await again.spawn({}, anon);
    expect(plain.id).not.toBe(old.id);
    expect(plain.image).toBe(hh.config.defaults.image);
    const claimed = await again.spawn({ image: 'alpine:3' }, anon);
    expect(claimed.id).toBe(fresh[0]?.id);
  });

  it('refuses to grow past the server limit', async () => {
    const hh = await withPool(3, { defaults: { maxSandboxes: 2, maxSandboxesPerOwner: 0 } });
    expect(await pooled(hh)).toHaveLength(2);
    // At the limit a claim still succeeds: it adds no runtime.
    const sb = await hh.orch.spawn({}, user('carol'));
    expect(sb.ownerId).toBe('carol');
  });

  it('GET /api/v1/pool/status and its admin alias render the status', async () => {
    const hh = await withPool(1);
    await hh.orch.spawn({}, anon);
    await hh.orch.fillPool();
    const app = await buildApp({ service: hh.orch, config: hh.config });
    try {
      for (const url of ['/api/v1/pool/status', '/api/v1/admin/pool/status']) {
        const res = await app.inject({ method: 'GET', url });
        expect(res.statusCode, url).toBe(200);
        expect(res.json()).toEqual({ enabled: true, target_size: 1, ready: 1, creating: 0, image: hh.config.defaults.image, provider: 'mock', claims_total: 1, misses_total: 0 });
      }
      const prom = await app.inject({ method: 'GET', url: '/api/v1/metrics/prometheus' });
      expect(prom.body).toContain('stacyvm_pool_ready 1');
      expect(prom.body).toContain('stacyvm_pool_claims_total 1');
      expect(prom.body).toContain('stacyvm_pool_misses_total 0');
    } finally {
      await app.close();
    }
  });
});
