import { text } from 'node:stream/consumers';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { StacyError } from '../../../src/core/errors.js';
import type { SpawnRequest } from '../../../src/orchestrator/service.js';
import type { ExecEvent } from '../../../src/providers/provider.js';
import { admin, anon, harness, leaseHolder, rejection, user } from './harness.js';
import type { Harness } from './harness.js';

const exec = (command: string, args: string[] = [], extra: { timeoutMs?: number; mode?: 'shell' | 'argv' } = {}) => ({
  command,
  args,
  mode: extra.mode ?? ('argv' as const),
  env: {},
  ...(extra.timeoutMs !== undefined ? { timeoutMs: extra.timeoutMs } : {}),
});

let h: Harness;
afterEach(async () => {
  await h?.close();
});

describe('sandbox lifecycle', () => {
  it('spawns under a lease, runs commands and files, destroys idempotently and releases the lease', async () => {
    h = await harness();
    const sb = await h.orch.spawn({ metadata: { purpose: 'test' } }, anon);
    expect(sb).toMatchObject({ state: 'running', provider: 'mock', workerId: 'local', metadata: { purpose: 'test' }, stateReason: null });
    expect(sb.runtimeId).not.toBeNull();
    expect(sb.expiresAt - sb.createdAt).toBe(h.config.defaults.ttlMs);
    expect(await h.mock.status(sb.runtimeId as string)).toBe('running');
    expect(await h.store.getSandbox(sb.id)).toEqual(sb);
    expect(await leaseHolder(h.store, sb.id)).toBe('local');

    expect((await h.orch.list(anon)).map((s) => s.id)).toEqual([sb.id]);
    const out = await h.orch.exec(sb.id, exec('sh', ['-c', 'echo hi; echo err >&2; exit 3']), anon);
    expect(out).toMatchObject({ exitCode: 3, stdout: 'hi\n', stderr: 'err\n' });

    await h.orch.writeFile(sb.id, '/workspace/a.txt', Buffer.from('hello'), undefined, anon);
    expect(await text(await h.orch.readFile(sb.id, '/workspace//a.txt', anon))).toBe('hello');
    expect((await h.orch.stat(sb.id, '/workspace/a.txt', anon)).size).toBe(5);
    expect(await h.orch.glob(sb.id, '/workspace/*.txt', anon)).toEqual(['/workspace/a.txt']);
    expect((await rejection(h.orch.readFile(sb.id, '/workspace/../etc/passwd', anon))).code).toBe('bad_request');

    const logs = await h.store.listExecLogs(sb.id, 10);
    expect(logs).toHaveLength(1);
    expect(logs[0]).toMatchObject({ outcome: 'ok', exitCode: 3, command: 'sh' });

    await h.orch.destroy(sb.id, anon);
    const gone = await h.orch.get(sb.id, anon);
    expect(gone.state).toBe('destroyed');
    expect(await h.mock.status(sb.runtimeId as string)).toBe('missing');
    expect(await leaseHolder(h.store, sb.id)).toBeNull();
    await h.orch.destroy(sb.id, anon); // idempotent
    expect(await h.orch.list(anon)).toEqual([]);
    expect((await rejection(h.orch.exec(sb.id, exec('true'), anon))).code).toBe('conflict');
    expect((await rejection(h.orch.get('sb-00000000', anon))).code).toBe('not_found');
    expect((await rejection(h.orch.destroy('sb-00000000', anon))).code).toBe('not_found');

    const types = h.events.map((e) => e.type);
    expect(types).toEqual(expect.arrayContaining(['sandbox.spawned', 'exec.completed', 'sandbox.destroyed']));
    expect(h.events.find((e) => e.type === 'sandbox.spawned')?.sandboxId).toBe(sb.id);
  });

  it('a destroy racing a spawn leaves the sandbox destroyed and no runtime behind', async () => {
    h = await harness();
    const spawning = h.orch.spawn({}, anon);
    let id: string | undefined;
    await vi.waitFor(async () => {
      id = (await h.store.listSandboxes())[0]?.id;
      expect(id).toBeDefined();
    }, { timeout: 5000, interval: 1 });
    const destroying = h.orch.destroy(id as string, anon);
    const [spawned] = await Promise.all([spawning, destroying]);
    expect(spawned.id).toBe(id);
    expect((await h.store.getSandbox(id as string))?.state).toBe('destroyed');
    expect(await h.mock.inventory()).toEqual([]);
  });

  it('rejects bad requests before anything is created', async () => {
    h = await harness({ config: { defaults: { maxTtlMs: 3_600_000, maxMemoryMb: 1024, maxVcpus: 2 } } });
    const ttl = await rejection(h.orch.spawn({ ttlMs: 3_600_001 }, anon));
    expect(ttl.code).toBe('bad_request');
    expect(ttl.message).toMatch(/maximum TTL/);
    for (const req of <SpawnRequest[]>[{ memoryMb: 2048 }, { memoryMb: 0 }, { vcpus: 3 }, { provider: 'nope' }, { template: 'missing' }, { ownerId: 'a b' }, { ownerId: 'x/y' }, { env: { 'A=B': '1' } }, { env: { A: 'x\0y' } }]) {
      expect((await rejection(h.orch.spawn(req, anon))).code).toBe('bad_request');
    }
    expect((await rejection(h.orch.spawn({ ownerId: 'bob' }, user('alice')))).code).toBe('forbidden');
    expect(await h.store.countSandboxes()).toBe(0);
    expect(await h.store.listLeases()).toEqual([]);
    expect(await h.mock.inventory()).toEqual([]);
  });

  it('applies exec timeouts: omitted uses the default, above the maximum is refused, expiry is a typed timeout', async () => {
    h = await harness({ config: { defaults: { maxExecTimeoutMs: 60_000, defaultExecTimeoutMs: 300 } } });
    const sb = await h.orch.spawn({}, anon);
    expect((await rejection(h.orch.exec(sb.id, exec('true', [], { timeoutMs: 60_001 }), anon))).code).toBe('bad_request');
    expect((await rejection(h.orch.exec(sb.id, exec('true', [], { timeoutMs: 0 }), anon))).code).toBe('bad_request');
    expect((await h.orch.exec(sb.id, exec('true'), anon)).exitCode).toBe(0);
    // No timeout given: the configured default (300ms) applies.
    const err = await rejection(h.orch.exec(sb.id, exec('sleep', ['30']), anon));
    expect(err.code).toBe('timeout');
    expect((await h.orch.exec(sb.id, exec('sleep', ['0.5'], { timeoutMs: 10_000 }), anon)).exitCode).toBe(0);
    const logs = await h.store.listExecLogs(sb.id, 10);
    expect(logs.map((l) => l.outcome).sort()).toEqual(['ok', 'ok', 'timeout']);
    expect(h.events.some((e) => e.type === 'exec.timeout' && e.sandboxId === sb.id)).toBe(true);
  });

  it('streams exec output and ends with one exit event', async () => {
    h = await harness();
    const sb = await h.orch.spawn({}, anon);
    const events: ExecEvent[] = [];
    for await (const ev of h.orch.execStream(sb.id, exec('echo a; echo b >&2', [], { mode: 'shell' }), anon)) events.push(ev);
    const last = events.at(-1);
    expect(last).toMatchObject({ type: 'exit', exitCode: 0 });
    expect(events.filter((e) => e.type === 'exit')).toHaveLength(1);
    const out = Buffer.concat(events.flatMap((e) => (e.type === 'stdout' ? [e.data] : []))).toString();
    expect(out).toBe('a\n');
    const it = h.orch.execStream('sb-00000000', exec('true'), anon)[Symbol.asyncIterator]();
    expect((await rejection(it.next())).code).toBe('not_found');

    // A consumer that walks away kills the command and the exec log says so.
    for await (const ev of h.orch.execStream(sb.id, exec('echo first; sleep 30', [], { mode: 'shell' }), anon)) {
      expect(ev.type).toBe('stdout');
      break;
    }
    const logs = await h.store.listExecLogs(sb.id, 10);
    expect(logs.map((l) => l.outcome).sort()).toEqual(['error', 'ok']);
    expect(h.events.filter((e) => e.type === 'exec.failed')).toHaveLength(1);
  });

  it('extends from now, capped by the maximum TTL', async () => {
    h = await harness({ config: { defaults: { maxTtlMs: 3_600_000, ttlMs: 60_000 } } });
    const sb = await h.orch.spawn({}, anon);
    h.clock.advance(30_000);
    const ext = await h.orch.extend(sb.id, 600_000, anon);
    expect(ext.expiresAt).toBe(h.clock.now() + 600_000);
    const capped = await h.orch.extend(sb.id, 10 * 3_600_000, anon);
    expect(capped.expiresAt).toBe(h.clock.now() + 3_600_000);
    expect((await rejection(h.orch.extend(sb.id, 0, anon))).code).toBe('bad_request');
    expect(h.events.filter((e) => e.type === 'sandbox.extended').at(-1)?.data).toMatchObject({ capped: true });
  });

  it('prunes expired sandboxes, and the reaper loop expires them and later forgets them', async () => {
    h = await harness({ config: { defaults: { ttlMs: 60_000 }, server: { recordRetentionMs: 3_600_000 } } });
    const a = await h.orch.spawn({}, anon);
    const b = await h.orch.spawn({ ttlMs: 600_000 }, anon);
    h.clock.advance(61_000);
    expect(await h.orch.prune()).toBe(1);
    expect((await h.orch.get(a.id, anon)).state).toBe('expired');
    expect(await h.mock.status(a.runtimeId as string)).toBe('missing');
    expect(await leaseHolder(h.store, a.id)).toBeNull();
    expect((await h.orch.get(b.id, anon)).state).toBe('running');
    expect(h.events.some((e) => e.type === 'sandbox.expired' && e.sandboxId === a.id)).toBe(true);

    // Now the real background loop: b expires, then both records are forgotten after retention.
    const looped = await h.restart({ reconcile: { reapIntervalMs: 20 } });
    h.clock.advance(600_000);
    await vi.waitFor(async () => expect((await h.store.getSandbox(b.id))?.state).toBe('expired'), { timeout: 5000, interval: 20 });
    h.clock.advance(3_600_001);
    await vi.waitFor(async () => expect(await h.store.countSandboxes()).toBe(0), { timeout: 5000, interval: 20 });
    await looped.stop();
  });

  it('lets owners see only their own sandboxes; admins and anonymous local callers see all', async () => {
    h = await harness();
    const a = await h.orch.spawn({}, user('alice'));
    const b = await h.orch.spawn({ ownerId: 'bob' }, admin);
    expect(a.ownerId).toBe('alice');
    expect((await h.orch.list(user('alice'))).map((s) => s.id)).toEqual([a.id]);
    expect((await h.orch.list(user('bob'))).map((s) => s.id)).toEqual([b.id]);
    expect((await h.orch.list(admin)).length).toBe(2);
    expect((await h.orch.list(anon)).length).toBe(2);
    expect((await rejection(h.orch.get(b.id, user('alice')))).code).toBe('not_found');
    expect((await rejection(h.orch.destroy(b.id, user('alice')))).code).toBe('not_found');
    expect((await rejection(h.orch.exec(b.id, exec('true'), user('alice')))).code).toBe('not_found');
    expect((await h.orch.get(b.id, user('bob'))).id).toBe(b.id);
  });

  it('manages templates and spawns from them with overrides', async () => {
    h = await harness();
    const t = await h.orch.createTemplate({ name: 'py', image: 'python:3.12', memoryMb: 256, ttlMs: 120_000, metadata: { team: 'x' } });
    expect(t).toMatchObject({ name: 'py', image: 'python:3.12', vcpus: null });
    expect((await rejection(h.orch.createTemplate({ name: 'py' }))).code).toBe('conflict');
    expect((await rejection(h.orch.createTemplate({ name: '../x' }))).code).toBe('bad_request');
    const sb = await h.orch.spawnFromTemplate('py', { vcpus: 2 }, anon);
    expect(sb).toMatchObject({ image: 'python:3.12', memoryMb: 256, vcpus: 2, template: 'py', metadata: { team: 'x' } });
    expect(sb.expiresAt - sb.createdAt).toBe(120_000);
    const u = await h.orch.updateTemplate('py', { name: 'py', image: 'python:3.13' });
    expect(u).toMatchObject({ image: 'python:3.13', memoryMb: null });
    expect((await h.orch.listTemplates()).map((x) => x.name)).toEqual(['py']);
    await h.orch.deleteTemplate('py');
    expect((await rejection(h.orch.getTemplate('py'))).code).toBe('not_found');
    expect((await rejection(h.orch.spawnFromTemplate('py', {}, anon))).code).toBe('not_found');
  });

  it('reports providers, readiness and provider details', async () => {
    h = await harness();
    await h.orch.spawn({}, anon);
    const [p] = await h.orch.listProviders();
    expect(p).toMatchObject({ name: 'mock', healthy: true, default: true, runtimeCount: 1, capabilities: { isolation: 'none' } });
    expect(p?.lastChecked).toBeGreaterThan(0);
    expect(await h.orch.testProviders()).toEqual({ mock: true });
    expect(await h.orch.readiness()).toEqual({ ready: true, store: true, providers: { mock: true } });
    const d = await h.orch.getProvider('mock');
    expect(d).toMatchObject({ name: 'mock', sandboxCount: 1, healthy: true });
    expect((await rejection(h.orch.getProvider('oci'))).code).toBe('not_found');
  });
});

describe('admission limits', () => {
  it('refuses past the server limit with 429 and Retry-After, and reports without creating', async () => {
    h = await harness({ config: { defaults: { maxSandboxes: 2 } } });
    await h.orch.spawn({}, anon);
    const report1 = await h.orch.admission({}, anon);
    expect(report1).toMatchObject({ allowed: true, queueable: false, activeSandboxes: 1, maxSandboxes: 2 });
    expect(report1.scheduler).toEqual({ workerId: 'local', selectedWorkerId: 'local', eligibleWorkers: 1 });
    await h.orch.spawn({}, anon);
    const err = await rejection(h.orch.spawn({}, anon));
    expect(err.code).toBe('resource_limit');
    expect(err.status).toBe(429);
    expect(err.retryAfterSeconds).toBeGreaterThan(0);
    const report = await h.orch.admission({}, anon);
    expect(report).toMatchObject({ allowed: false, activeSandboxes: 2, maxSandboxes: 2 });
    expect(report.reason).toMatch(/limit/);
    expect((await h.orch.admission({ ttlMs: 10 * 24 * 3_600_000 }, anon)).reason).toMatch(/maximum TTL/);
    expect(await h.store.countSandboxes()).toBe(2);
  });

  it('holds the limits under concurrent spawns', async () => {
    h = await harness({ config: { defaults: { maxSandboxes: 3 } } });
    const results = await Promise.allSettled(Array.from({ length: 8 }, () => h.orch.spawn({}, anon)));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(3);
    for (const r of results) if (r.status === 'rejected') expect((r.reason as StacyError).code).toBe('resource_limit');
    expect(await h.store.countSandboxes()).toBe(3);
    expect((await h.mock.inventory()).length).toBe(3);
  });

  it('enforces the per-owner limit and owner quotas', async () => {
    h = await harness({ config: { defaults: { maxSandboxesPerOwner: 2 } } });
    await h.orch.spawn({}, user('alice'));
    await h.orch.spawn({}, user('alice'));
    expect((await rejection(h.orch.spawn({}, user('alice')))).code).toBe('resource_limit');
    await h.orch.spawn({}, user('bob'));
    const rep = await h.orch.admission({}, user('alice'));
    expect(rep).toMatchObject({ allowed: false, activeOwnerSandboxes: 2, maxOwnerSandboxes: 2 });

    await h.orch.putQuota('bob', { maxSandboxes: 1, maxMemoryMb: null, maxVcpus: null, maxTtlMs: 600_000 });
    expect((await rejection(h.orch.spawn({}, user('bob')))).code).toBe('resource_limit');
    expect((await h.orch.admission({}, user('bob'))).maxOwnerSandboxes).toBe(1);
    expect(await h.orch.quotaUsage('bob')).toMatchObject({ activeSandboxes: 1, memoryMb: h.config.defaults.memoryMb, quota: { maxSandboxes: 1 } });
    await h.orch.putQuota('carol', { maxSandboxes: null, maxMemoryMb: 100, maxVcpus: null, maxTtlMs: 600_000 });
    expect((await rejection(h.orch.spawn({ memoryMb: 101 }, user('carol')))).code).toBe('resource_limit');
    expect((await rejection(h.orch.spawn({ memoryMb: 50, ttlMs: 600_001 }, user('carol')))).code).toBe('bad_request');
    expect((await h.orch.spawn({ memoryMb: 50 }, user('carol'))).memoryMb).toBe(50);
    expect((await h.orch.listQuotas()).map((q) => q.ownerId)).toEqual(['bob', 'carol']);
    await h.orch.deleteQuota('carol');
    expect((await rejection(h.orch.getQuota('carol'))).code).toBe('not_found');
  });
});
