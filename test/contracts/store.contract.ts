/**
 * The store contract: every Store implementation must pass this suite unchanged. A test file
 * calls `storeContract` with a factory that hands out fresh, empty databases of its dialect.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { isStacyError } from '../../src/core/errors.js';
import type { QuotaRecord, SandboxRecord, TemplateRecord, WorkerRecord } from '../../src/core/types.js';
import { openStore, type OpenStoreOptions } from '../../src/store/index.js';
import type { KyselyStore } from '../../src/store/kysely-store.js';
import { MIGRATIONS } from '../../src/store/migrations.js';
import type { Store } from '../../src/store/store.js';
import { checkLeaseHistory, runLeaseRacer, type RacerOptions, type RacerResult } from '../fixtures/lease-race.js';
import type { RacerProcessConfig } from '../fixtures/lease-racer-process.js';

export interface StoreContractFactory {
  dialect: 'sqlite' | 'postgres';
  /** Prepares whatever holds the test databases (e.g. a scratch PostgreSQL database). */
  setup(): Promise<void>;
  /** Removes everything `setup` and `fresh` created. */
  teardown(): Promise<void>;
  /** Options for a new, empty, unmigrated database; every call returns a different one. */
  fresh(): Promise<OpenStoreOptions>;
}

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const racerScript = fileURLToPath(new URL('../fixtures/lease-racer-process.ts', import.meta.url));
const ALL_VERSIONS = MIGRATIONS.map((m) => m.version).sort((a, b) => a - b);

/** Registers the full contract suite for one dialect. */
export function storeContract(factory: StoreContractFactory): void {
  const opened: Store[] = [];

  /** A store on `options`, closed after the test. */
  const open = (options: OpenStoreOptions): Store => {
    const store = openStore(options);
    opened.push(store);
    return store;
  };
  /** A migrated store on a fresh database. */
  const freshStore = async (): Promise<Store> => {
    const store = open(await factory.fresh());
    await store.migrate();
    return store;
  };

  beforeAll(() => factory.setup());
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((s) => s.close()));
  });
  afterAll(() => factory.teardown());

  describe('basics and migrations', () => {
    it('reports its dialect, answers ping and reads a clock close to the host clock', async () => {
      const store = await freshStore();
      expect(store.dialect).toBe(factory.dialect);
      await store.ping();
      const now = await store.now();
      expect(Number.isInteger(now)).toBe(true);
      // Same host: the store clock and ours agree to well within a minute.
      expect(Math.abs(now - Date.now())).toBeLessThan(60_000);
    });

    it('migrate is idempotent and records every version once', async () => {
      const options = await factory.fresh();
      const store = open(options);
      await store.migrate();
      await store.migrate();
      expect(await (store as KyselyStore).appliedMigrations()).toEqual(ALL_VERSIONS);
      const again = open(options);
      await again.migrate();
      expect(await (again as KyselyStore).appliedMigrations()).toEqual(ALL_VERSIONS);
      await again.createSandbox(sandbox('sb-after-remigrate'));
      expect(await store.getSandbox('sb-after-remigrate')).toBeDefined();
    });

    it('stores migrating the same database concurrently all succeed, applying each version once', async () => {
      const options = await factory.fresh();
      const stores = Array.from({ length: 4 }, () => open(options));
      await Promise.all(stores.map((s) => s.migrate()));
      for (const s of stores) expect(await (s as KyselyStore).appliedMigrations()).toEqual(ALL_VERSIONS);
    });

    it('ping fails with unavailable after close', async () => {
      const store = openStore(await factory.fresh());
      await store.close();
      await expect(store.ping()).rejects.toMatchObject({ code: 'unavailable' });
      await store.close();
    });
  });

  describe('sandboxes', () => {
    it('round-trips every field, including metadata JSON and nulls', async () => {
      const store = await freshStore();
      const full = sandbox('sb-full', {
        ownerId: 'owner-1',
        workerId: 'worker-1',
        runtimeId: 'rt-1',
        template: 'python',
        vcpus: 1.5,
        metadata: { team: 'ml', quote: 'it\'s "quoted"', unicode: 'héllo ✓', empty: '' },
        stateReason: 'provider said no',
      });
      await store.createSandbox(full);
      expect(await store.getSandbox('sb-full')).toEqual(full);
      const bare = sandbox('sb-bare');
      await store.createSandbox(bare);
      expect(await store.getSandbox('sb-bare')).toEqual(bare);
      expect(await store.getSandbox('sb-missing')).toBeUndefined();
    });

    it('createSandbox with an existing id is a conflict and keeps the original', async () => {
      const store = await freshStore();
      await store.createSandbox(sandbox('sb-dup', { image: 'first' }));
      const err = await store.createSandbox(sandbox('sb-dup', { image: 'second' })).catch((e: unknown) => e);
      expect(isStacyError(err, 'conflict')).toBe(true);
      expect((await store.getSandbox('sb-dup'))?.image).toBe('first');
    });

    it('updateSandbox applies the patch, bumps updatedAt and returns the row', async () => {
      const store = await freshStore();
      const base = sandbox('sb-up', { runtimeId: 'rt', stateReason: 'x', updatedAt: 1000 });
      await store.createSandbox(base);
      const before = await store.now();
      const updated = await store.updateSandbox('sb-up', {
        state: 'error',
        runtimeId: null,
        stateReason: 'boom',
        metadata: { k: 'v' },
        expiresAt: base.expiresAt + 5000,
        workerId: 'w2',
      });
      expect(updated).toMatchObject({
        id: 'sb-up',
        state: 'error',
        runtimeId: null,
        stateReason: 'boom',
        metadata: { k: 'v' },
        expiresAt: base.expiresAt + 5000,
        workerId: 'w2',
        createdAt: base.createdAt,
        image: base.image,
      });
      expect(updated.updatedAt).toBeGreaterThanOrEqual(before);
      expect(await store.getSandbox('sb-up')).toEqual(updated);
      const explicit = await store.updateSandbox('sb-up', { updatedAt: 4242 });
      expect(explicit.updatedAt).toBe(4242);
      expect(explicit.state).toBe('error');
    });

    it('updateSandbox on a missing id is not_found', async () => {
      const store = await freshStore();
      await expect(store.updateSandbox('nope', { state: 'running' })).rejects.toMatchObject({ code: 'not_found' });
    });

    it('lists and counts with every filter', async () => {
      const store = await freshStore();
      const t0 = 1_800_000_000_000;
      const rows: SandboxRecord[] = [
        sandbox('a', { state: 'running', ownerId: 'o1', workerId: 'w1', provider: 'mock', expiresAt: t0 + 10, createdAt: t0 + 1 }),
        sandbox('b', { state: 'running', ownerId: 'o2', workerId: 'w1', provider: 'oci', expiresAt: t0 + 20, createdAt: t0 + 2 }),
        sandbox('c', { state: 'destroyed', ownerId: 'o1', workerId: 'w2', provider: 'mock', expiresAt: t0 + 30, createdAt: t0 + 3 }),
        sandbox('d', { state: 'error', ownerId: null, workerId: null, provider: 'docker', expiresAt: t0 + 40, createdAt: t0 + 4 }),
      ];
      for (const r of rows) await store.createSandbox(r);
      const ids = async (filter?: Parameters<Store['listSandboxes']>[0]) => (await store.listSandboxes(filter)).map((s) => s.id);
      const cases: Array<[Parameters<Store['listSandboxes']>[0], string[]]> = [
        [undefined, ['a', 'b', 'c', 'd']],
        [{}, ['a', 'b', 'c', 'd']],
        [{ states: ['running'] }, ['a', 'b']],
        [{ states: ['running', 'error'] }, ['a', 'b', 'd']],
        [{ states: [] }, []],
        [{ ownerId: 'o1' }, ['a', 'c']],
        [{ workerId: 'w1' }, ['a', 'b']],
        [{ provider: 'mock' }, ['a', 'c']],
        [{ expiresBefore: t0 + 20 }, ['a', 'b']],
        [{ expiresBefore: t0 }, []],
        [{ states: ['running', 'destroyed'], ownerId: 'o1', provider: 'mock', workerId: 'w2' }, ['c']],
      ];
      for (const [filter, expected] of cases) {
        expect(await ids(filter), JSON.stringify(filter)).toEqual(expected);
        expect(await store.countSandboxes(filter), JSON.stringify(filter)).toBe(expected.length);
      }
      expect(await store.listSandboxes({ ownerId: 'o2' })).toEqual([rows[1]]);
    });

    it('deleteSandboxes removes the given rows, counts them, ignores unknown ids and drops their exec logs', async () => {
      const store = await freshStore();
      for (const id of ['x1', 'x2', 'x3']) await store.createSandbox(sandbox(id));
      await store.appendExecLog(execLog('x1'));
      expect(await store.deleteSandboxes([])).toBe(0);
      expect(await store.deleteSandboxes(['x1', 'x2', 'unknown'])).toBe(2);
      expect((await store.listSandboxes()).map((s) => s.id)).toEqual(['x3']);
      expect(await store.listExecLogs('x1', 10)).toEqual([]);
    });

    it('deleteSandboxes handles more ids than one statement binds', async () => {
      const store = await freshStore();
      const ids = Array.from({ length: 1203 }, (_, i) => `bulk-${i}`);
      for (const id of ids) await store.createSandbox(sandbox(id));
      expect(await store.deleteSandboxes([...ids, 'not-there'])).toBe(ids.length);
      expect(await store.countSandboxes()).toBe(0);
    });
  });

  describe('text the databases disagree on', () => {
    it('rejects NUL characters with bad_request in every kind of argument, storing nothing', async () => {
      const store = await freshStore();
      const nul = 'a\u0000b';
      const attempts: Array<() => Promise<unknown>> = [
        () => store.createSandbox(sandbox(nul)),
        () => store.createSandbox(sandbox('sb-meta', { metadata: { k: nul } })),
        () => store.createSandbox(sandbox('sb-meta-key', { metadata: { [nul]: 'v' } })),
        () => store.getSandbox(nul),
        () => store.listSandboxes({ ownerId: nul }),
        () => store.deleteSandboxes(['ok', nul]),
        () => store.createTemplate(template('t', { env: { A: nul } })),
        () => store.saveWorker(worker('w', { capabilities: [nul] })),
        () => store.acquireLease({ resourceId: nul, resourceType: 'sandbox', holderId: 'h', ttlMs: 1000 }),
        () => store.releaseLease('r', nul),
        () => store.putQuota({ ownerId: nul, maxSandboxes: 1, maxMemoryMb: null, maxVcpus: null, maxTtlMs: null, updatedAt: 1 }),
      ];
      for (const attempt of attempts) await expect(attempt()).rejects.toMatchObject({ code: 'bad_request' });
      await store.createSandbox(sandbox('sb-ok'));
      await expect(store.updateSandbox('sb-ok', { stateReason: nul })).rejects.toMatchObject({ code: 'bad_request' });
      await expect(store.appendExecLog(execLog('sb-ok', { args: [nul] }))).rejects.toMatchObject({ code: 'bad_request' });
      expect((await store.listSandboxes()).map((s) => s.id)).toEqual(['sb-ok']);
      expect(await store.listExecLogs('sb-ok', 10)).toEqual([]);
      expect(await store.listTemplates()).toEqual([]);
      expect(await store.listWorkers()).toEqual([]);
      expect(await store.listLeases()).toEqual([]);
      expect(await store.listQuotas()).toEqual([]);
    });
  });

  describe('exec logs', () => {
    it('appends with increasing ids and lists newest first up to the limit', async () => {
      const store = await freshStore();
      await store.createSandbox(sandbox('sb-log'));
      await store.createSandbox(sandbox('sb-other'));
      const first = await store.appendExecLog(execLog('sb-log', { command: 'echo', args: ['a b', '$(x)', ''], startedAt: 1 }));
      const second = await store.appendExecLog(
        execLog('sb-log', { command: 'sleep', args: [], exitCode: null, outcome: 'timeout', mode: 'shell', startedAt: 2 }),
      );
      await store.appendExecLog(execLog('sb-other'));
      expect(second.id).toBeGreaterThan(first.id);
      expect(first).toEqual({ id: first.id, ...execLog('sb-log', { command: 'echo', args: ['a b', '$(x)', ''], startedAt: 1 }) });
      expect(await store.listExecLogs('sb-log', 10)).toEqual([second, first]);
      expect(await store.listExecLogs('sb-log', 1)).toEqual([second]);
      expect(await store.listExecLogs('sb-log', 0)).toEqual([]);
      expect(await store.listExecLogs('sb-none', 10)).toEqual([]);
    });

    it('appending for a missing sandbox is not_found', async () => {
      const store = await freshStore();
      await expect(store.appendExecLog(execLog('ghost'))).rejects.toMatchObject({ code: 'not_found' });
    });
  });

  describe('templates', () => {
    it('creates, reads, lists by name, updates and deletes', async () => {
      const store = await freshStore();
      const py = template('python', { image: 'python:3.12', memoryMb: 1024, vcpus: 2, ttlMs: 600_000, env: { A: '1' }, metadata: { m: 'x' } });
      const bare = template('alpine');
      await store.createTemplate(py);
      await store.createTemplate(bare);
      expect(await store.getTemplate('python')).toEqual(py);
      expect(await store.getTemplate('alpine')).toEqual(bare);
      expect(await store.getTemplate('nope')).toBeUndefined();
      expect((await store.listTemplates()).map((t) => t.name)).toEqual(['alpine', 'python']);

      const updated = await store.updateTemplate('python', { memoryMb: null, env: { B: '2' }, networkMode: 'none', updatedAt: 99 });
      expect(updated).toEqual({ ...py, memoryMb: null, env: { B: '2' }, networkMode: 'none', updatedAt: 99 });
      expect(await store.getTemplate('python')).toEqual(updated);
      const bumped = await store.updateTemplate('alpine', { image: 'alpine:3' });
      expect(bumped.updatedAt).toBeGreaterThan(bare.updatedAt);

      await store.deleteTemplate('python');
      expect(await store.getTemplate('python')).toBeUndefined();
    });

    it('duplicate name is conflict; update/delete of a missing name is not_found', async () => {
      const store = await freshStore();
      await store.createTemplate(template('t1'));
      await expect(store.createTemplate(template('t1'))).rejects.toMatchObject({ code: 'conflict' });
      await expect(store.updateTemplate('t2', { image: 'x' })).rejects.toMatchObject({ code: 'not_found' });
      await expect(store.deleteTemplate('t2')).rejects.toMatchObject({ code: 'not_found' });
    });
  });

  describe('workers', () => {
    it('saveWorker inserts, then upserts keeping createdAt', async () => {
      const store = await freshStore();
      const w = worker('w1', { createdAt: 1000, updatedAt: 1000, lastHeartbeat: 1000 });
      expect(await store.saveWorker(w)).toEqual(w);
      const later = worker('w1', {
        hostname: 'host-b',
        status: 'draining',
        providers: ['oci'],
        capabilities: ['spawn'],
        capacity: { maxSandboxes: 3, maxSandboxesPerOwner: 1, rpcUrl: 'http://127.0.0.1:9', previewDomain: 'p.test' },
        createdAt: 5000,
        updatedAt: 5000,
        lastHeartbeat: 5000,
      });
      const stored = await store.saveWorker(later);
      expect(stored).toEqual({ ...later, createdAt: 1000 });
      expect(await store.getWorker('w1')).toEqual(stored);
    });

    it('lists by id, deletes, and delete of a missing worker is not_found', async () => {
      const store = await freshStore();
      await store.saveWorker(worker('wb'));
      await store.saveWorker(worker('wa'));
      expect((await store.listWorkers()).map((w) => w.id)).toEqual(['wa', 'wb']);
      await store.deleteWorker('wa');
      expect(await store.getWorker('wa')).toBeUndefined();
      expect((await store.listWorkers()).map((w) => w.id)).toEqual(['wb']);
      await expect(store.deleteWorker('wa')).rejects.toMatchObject({ code: 'not_found' });
    });

    it('listWorkerLoads gives every worker, by id, with its sandboxes in the given states, in total and of one owner', async () => {
      const store = await freshStore();
      const cap = { maxSandboxes: 5, maxSandboxesPerOwner: 2 };
      await store.saveWorker(worker('wb', { capacity: cap, providers: ['mock'] }));
      await store.saveWorker(worker('wa'));
      await store.saveWorker(worker('wc'));
      const rows: Array<[string, SandboxRecord['state'], string | null, string | null]> = [
        ['sb-1', 'running', 'wa', 'alice'],
        ['sb-2', 'creating', 'wa', 'bob'],
        ['sb-3', 'destroyed', 'wa', 'alice'],
        ['sb-4', 'running', 'wb', 'alice'],
        ['sb-5', 'running', 'wb', 'alice'],
        ['sb-6', 'running', 'gone-worker', 'alice'],
        ['sb-7', 'running', null, 'alice'],
        ['sb-8', 'error', 'wb', null],
      ];
      for (const [id, state, workerId, ownerId] of rows) await store.createSandbox(sandbox(id, { state, workerId, ownerId }));
      const loads = await store.listWorkerLoads(['creating', 'running', 'error'], 'alice');
      expect(loads.map((l) => [l.worker.id, l.active, l.ownerActive])).toEqual([
        ['wa', 2, 1],
        ['wb', 3, 2],
        ['wc', 0, 0],
      ]);
      expect(loads[1]?.worker).toEqual(await store.getWorker('wb'));
      expect((await store.listWorkerLoads(['running'], null)).map((l) => [l.worker.id, l.active, l.ownerActive])).toEqual([
        ['wa', 1, 0],
        ['wb', 2, 0],
        ['wc', 0, 0],
      ]);
      expect((await store.listWorkerLoads([], 'alice')).map((l) => l.active)).toEqual([0, 0, 0]);
    });
  });

  describe('quotas', () => {
    it('puts, replaces, reads, lists and deletes', async () => {
      const store = await freshStore();
      const q: QuotaRecord = { ownerId: 'o1', maxSandboxes: 5, maxMemoryMb: 4096, maxVcpus: 2.5, maxTtlMs: 3_600_000, updatedAt: 10 };
      expect(await store.putQuota(q)).toEqual(q);
      const nulls: QuotaRecord = { ownerId: 'o0', maxSandboxes: null, maxMemoryMb: null, maxVcpus: null, maxTtlMs: null, updatedAt: 11 };
      await store.putQuota(nulls);
      const replaced = { ...q, maxSandboxes: null, updatedAt: 20 };
      expect(await store.putQuota(replaced)).toEqual(replaced);
      expect(await store.getQuota('o1')).toEqual(replaced);
      expect(await store.getQuota('nobody')).toBeUndefined();
      expect(await store.listQuotas()).toEqual([nulls, replaced]);
      await store.deleteQuota('o1');
      expect(await store.getQuota('o1')).toBeUndefined();
      await expect(store.deleteQuota('o1')).rejects.toMatchObject({ code: 'not_found' });
    });
  });

  describe('leases', () => {
    const acquire = (store: Store, resourceId: string, holderId: string, ttlMs = 30_000) =>
      store.acquireLease({ resourceId, resourceType: 'sandbox', holderId, ttlMs });

    it('acquires a free resource at generation 1 with expiry on the store clock', async () => {
      const store = await freshStore();
      const before = await store.now();
      const lease = await acquire(store, 'r1', 'h1', 10_000);
      const after = await store.now();
      expect(lease).toMatchObject({ resourceId: 'r1', resourceType: 'sandbox', holderId: 'h1', generation: 1 });
      expect(lease.updatedAt).toBeGreaterThanOrEqual(before);
      expect(lease.updatedAt).toBeLessThanOrEqual(after);
      expect(lease.createdAt).toBe(lease.updatedAt);
      expect(lease.expiresAt).toBe(lease.updatedAt + 10_000);
      expect(await store.getLease('r1')).toEqual(lease);
      expect(await store.getLease('r-none')).toBeUndefined();
    });

    it('the holder re-acquires (generation +1); another holder gets lease_conflict and changes nothing', async () => {
      const store = await freshStore();
      const first = await acquire(store, 'r1', 'h1');
      const again = await acquire(store, 'r1', 'h1');
      expect(again.generation).toBe(first.generation + 1);
      expect(again.createdAt).toBe(first.createdAt);
      const err = await acquire(store, 'r1', 'h2').catch((e: unknown) => e);
      expect(isStacyError(err, 'lease_conflict')).toBe(true);
      expect((err as { status: number }).status).toBe(409);
      expect(await store.getLease('r1')).toEqual(again);
    });

    it('an expired lease goes to the next holder with a higher generation', async () => {
      const store = await freshStore();
      const first = await acquire(store, 'r1', 'h1', 50);
      await untilStoreTime(store, first.expiresAt);
      const second = await acquire(store, 'r1', 'h2', 30_000);
      expect(second.holderId).toBe('h2');
      expect(second.generation).toBe(first.generation + 1);
      expect(second.createdAt).toBe(first.createdAt);
    });

    it('renew: holder only, before expiry only, incrementing generation and extending expiry', async () => {
      const store = await freshStore();
      const lease = await acquire(store, 'r1', 'h1', 5_000);
      const renewed = await store.renewLease('r1', 'h1', 60_000);
      expect(renewed.generation).toBe(lease.generation + 1);
      expect(renewed.expiresAt).toBe(renewed.updatedAt + 60_000);
      expect(renewed.holderId).toBe('h1');
      await expect(store.renewLease('r1', 'h2', 60_000)).rejects.toMatchObject({ code: 'lease_conflict' });
      await expect(store.renewLease('r-none', 'h1', 60_000)).rejects.toMatchObject({ code: 'lease_conflict' });
      expect(await store.getLease('r1')).toEqual(renewed);

      const short = await acquire(store, 'r2', 'h1', 50);
      await untilStoreTime(store, short.expiresAt);
      await expect(store.renewLease('r2', 'h1', 60_000)).rejects.toMatchObject({ code: 'lease_conflict' });
      expect(await store.getLease('r2')).toEqual(short);
    });

    it('release: holder only; a missing lease is a no-op; the next acquire continues the generation', async () => {
      const store = await freshStore();
      await store.releaseLease('r-none', 'h1');
      const lease = await acquire(store, 'r1', 'h1');
      await expect(store.releaseLease('r1', 'h2')).rejects.toMatchObject({ code: 'lease_conflict' });
      expect(await store.getLease('r1')).toEqual(lease);
      await store.releaseLease('r1', 'h1');
      const released = await store.getLease('r1');
      expect(released?.expiresAt).toBeLessThanOrEqual(await store.now());
      await store.releaseLease('r1', 'h1');
      // Nobody holds a released lease, so releasing it is a no-op for anyone.
      await store.releaseLease('r1', 'h2');
      await expect(store.renewLease('r1', 'h1', 1000)).rejects.toMatchObject({ code: 'lease_conflict' });
      const next = await acquire(store, 'r1', 'h2');
      expect(next.holderId).toBe('h2');
      expect(next.generation).toBe(lease.generation + 1);
    });

    it('generation keeps increasing across holders, expiry and release (the fencing token never resets)', async () => {
      const store = await freshStore();
      const seen: number[] = [];
      seen.push((await acquire(store, 'r1', 'a')).generation);
      seen.push((await store.renewLease('r1', 'a', 30_000)).generation);
      await store.releaseLease('r1', 'a');
      seen.push((await acquire(store, 'r1', 'b', 50)).generation);
      const b = await store.getLease('r1');
      await untilStoreTime(store, b!.expiresAt);
      seen.push((await acquire(store, 'r1', 'c')).generation);
      seen.push((await acquire(store, 'r1', 'c')).generation);
      await store.releaseLease('r1', 'c');
      seen.push((await acquire(store, 'r1', 'a')).generation);
      expect(seen).toEqual([1, 2, 3, 4, 5, 6]);
    });

    it('lists leases, filtered by holder; resources are independent', async () => {
      const store = await freshStore();
      await acquire(store, 'r2', 'h1');
      await acquire(store, 'r1', 'h1');
      await acquire(store, 'r3', 'h2');
      expect((await store.listLeases()).map((l) => l.resourceId)).toEqual(['r1', 'r2', 'r3']);
      expect((await store.listLeases({ holderId: 'h1' })).map((l) => l.resourceId)).toEqual(['r1', 'r2']);
      expect(await store.listLeases({ holderId: 'nobody' })).toEqual([]);
      expect((await store.getLease('r3'))?.generation).toBe(1);
    });

    it('rejects a non-positive or fractional ttl', async () => {
      const store = await freshStore();
      for (const ttl of [0, -1, 1.5, Number.NaN]) {
        await expect(acquire(store, 'r1', 'h1', ttl)).rejects.toMatchObject({ code: 'bad_request' });
      }
      await acquire(store, 'r1', 'h1');
      await expect(store.renewLease('r1', 'h1', 0)).rejects.toMatchObject({ code: 'bad_request' });
    });

    it('pruneLeases deletes only long-expired leases whose resource is gone, never a live one', async () => {
      const store = await freshStore();
      await store.createSandbox(sandbox('sb-kept'));
      const kept = await store.acquireLease({ resourceId: 'sb-kept', resourceType: 'sandbox', holderId: 'h1', ttlMs: 50 });
      const gone = await store.acquireLease({ resourceId: 'sb-gone', resourceType: 'sandbox', holderId: 'h1', ttlMs: 50 });
      const other = await acquire(store, 'pool-1', 'h1', 50);
      const live = await store.acquireLease({ resourceId: 'sb-live', resourceType: 'sandbox', holderId: 'h2', ttlMs: 60_000 });
      await untilStoreTime(store, Math.max(kept.expiresAt, gone.expiresAt, other.expiresAt));
      // A cutoff before their expiry keeps everything.
      expect(await store.pruneLeases(gone.expiresAt - 1)).toBe(0);
      // A cutoff in the future still never reaches a live lease.
      const now = await store.now();
      expect(await store.pruneLeases(now + 3_600_000)).toBe(2);
      expect((await store.listLeases()).map((l) => l.resourceId)).toEqual(['sb-kept', 'sb-live']);
      expect(await store.getLease('sb-live')).toEqual(live);
      expect(await store.pruneLeases(now + 3_600_000)).toBe(0);
      await expect(store.pruneLeases(Number.NaN)).rejects.toMatchObject({ code: 'bad_request' });
    });

    it('a pruned resource acquired again continues above every pruned generation (the fencing token never goes back)', async () => {
      const store = await freshStore();
      let last = await acquire(store, 'r-old', 'a', 30_000);
      for (let i = 0; i < 4; i++) last = await store.renewLease('r-old', 'a', 30_000);
      expect(last.generation).toBe(5);
      await store.releaseLease('r-old', 'a');
      await acquire(store, 'r-young', 'b', 30_000);
      await store.releaseLease('r-young', 'b');
      await untilStoreTime(store, last.updatedAt);
      expect(await store.pruneLeases(await store.now())).toBe(2);
      expect(await store.getLease('r-old')).toBeUndefined();
      const again = await acquire(store, 'r-old', 'c');
      expect(again.generation).toBeGreaterThan(last.generation);
      // Resources never pruned keep their own sequence; new ones start above the floor too.
      expect((await acquire(store, 'r-new', 'c')).generation).toBeGreaterThan(last.generation);
      expect((await store.renewLease('r-old', 'c', 30_000)).generation).toBe(again.generation + 1);
    });

    it('concurrent acquires of one free resource from separate connections have exactly one winner', async () => {
      const options = await factory.fresh();
      const stores = Array.from({ length: 8 }, () => open(options));
      await stores[0]!.migrate();
      for (let round = 0; round < 5; round++) {
        const outcomes = await Promise.allSettled(stores.map((s, i) => acquire(s, `contended-${round}`, `h${i}`)));
        const winners = outcomes.filter((o) => o.status === 'fulfilled');
        expect(winners).toHaveLength(1);
        for (const o of outcomes) {
          if (o.status === 'rejected') expect(isStacyError(o.reason, 'lease_conflict')).toBe(true);
        }
      }
    });
  });

  describe('lease race', () => {
    it('pruning expired leases while 6 racers hammer them never lowers a generation or lets two hold at once', async () => {
      const options = await factory.fresh();
      const racers = Array.from({ length: 6 }, () => open({ ...options, poolSize: 1 }));
      const pruner = open({ ...options, poolSize: 1 });
      await pruner.migrate();
      const resources = ['prune-a', 'prune-b'];
      let racing = true;
      let pruned = 0;
      const pruning = (async () => {
        while (racing) {
          // Everything expired by now goes: racer leases are not sandbox leases, so nothing else guards them.
          pruned += await pruner.pruneLeases(await pruner.now());
          await sleep(2);
        }
      })();
      let results: RacerResult[];
      try {
        results = await Promise.all(racers.map((s, i) => runLeaseRacer(s, { holderId: `pr-${i}`, resources, durationMs: 2000, ttlMs: [10, 40], pace: 'paced' })));
      } finally {
        racing = false;
        await pruning;
      }
      const events = results.flatMap((r) => r.events);
      expect(checkLeaseHistory(events)).toEqual([]);
      expect(pruned).toBeGreaterThan(0);
      expect(new Set(events.map((e) => e.resourceId))).toEqual(new Set(resources));
    }, 60_000);

    it(
      '8 racers on separate connections and processes never share a resource, and generations only grow',
      async () => {
        const options = await factory.fresh();
        const resources = ['race-a', 'race-b', 'race-c', 'race-d'];
        const racer = (holderId: string): RacerOptions => ({ holderId, resources, durationMs: 3000, ttlMs: [50, 200], pace: 'paced' });
        // Half the racers are child processes that migrate the fresh database concurrently with
        // each other while starting up.
        const children = Array.from({ length: 4 }, (_, i) => startRacerProcess({ store: options, racer: racer(`proc-${i}`) }));
        const readies = await Promise.all(children.map((c) => c.ready));
        for (const r of readies) expect(r.versions).toEqual(ALL_VERSIONS);
        const inProcess = Array.from({ length: 4 }, () => open({ ...options, poolSize: 1 }));
        await Promise.all(inProcess.map((s) => s.migrate()));

        for (const c of children) c.go();
        const results: RacerResult[] = await Promise.all([
          ...inProcess.map((s, i) => runLeaseRacer(s, racer(`conn-${i}`))),
          ...children.map((c) => c.result),
        ]);

        const events = results.flatMap((r) => r.events);
        const violations = checkLeaseHistory(events);
        expect(violations).toEqual([]);
        // The race must have been a race: grants on every resource, conflicts, and handovers.
        expect(new Set(events.map((e) => e.resourceId))).toEqual(new Set(resources));
        expect(new Set(events.map((e) => e.holderId)).size).toBeGreaterThanOrEqual(6);
        expect(results.reduce((n, r) => n + r.acquire.conflict, 0)).toBeGreaterThan(0);
        // Racers sometimes sleep past their TTL before renewing, so renewals must have failed.
        expect(results.reduce((n, r) => n + r.renew.conflict, 0)).toBeGreaterThan(0);
        expect(new Set(events.filter((e) => e.holderId.startsWith('proc-')).map((e) => e.holderId)).size).toBe(children.length);
        const handovers = resources.map((id) => {
          const chain = events.filter((e) => e.resourceId === id).sort((a, b) => a.generation - b.generation);
          return chain.filter((e, i) => i > 0 && chain[i - 1]!.holderId !== e.holderId).length;
        });
        for (const n of handovers) expect(n).toBeGreaterThan(0);
        // The store's final generation on each resource is the highest grant anyone saw there.
        const check = open(options);
        for (const id of resources) {
          const max = Math.max(...events.filter((e) => e.resourceId === id).map((e) => e.generation));
          expect((await check.getLease(id))?.generation).toBe(max);
        }
      },
      90_000,
    );
  });
}

// --- helpers -------------------------------------------------------------------------------

/** Polls the store clock until it is past `instant`; bounded. */
async function untilStoreTime(store: Store, instant: number): Promise<void> {
  const giveUp = Date.now() + 10_000;
  while ((await store.now()) <= instant) {
    if (Date.now() > giveUp) throw new Error(`store clock did not pass ${instant}`);
    await sleep(10);
  }
}

interface RacerProcess {
  ready: Promise<{ pid: number; versions: number[] }>;
  result: Promise<RacerResult>;
  go(): void;
}

/** Starts test/fixtures/lease-racer-process.ts; killed if it has not finished within a minute. */
function startRacerProcess(config: RacerProcessConfig): RacerProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', racerScript, JSON.stringify(config)], {
    cwd: repoRoot,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const killer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  // Never keep the test worker alive; an orphaned racer exits when its stdin closes.
  killer.unref();
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  let onReady: (v: { pid: number; versions: number[] }) => void = () => {};
  let onResult: (v: RacerResult) => void = () => {};
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  const failure = exited.then((code) => {
    clearTimeout(killer);
    return new Error(`racer process exited with ${code}: ${stderr.slice(-2000)}`);
  });
  const ready = new Promise<{ pid: number; versions: number[] }>((resolve, reject) => {
    onReady = resolve;
    void failure.then(reject);
  });
  const result = new Promise<RacerResult>((resolve, reject) => {
    onResult = resolve;
    void failure.then(reject);
  });
  // A rejection before anyone awaits must not surface as unhandled.
  ready.catch(() => {});
  result.catch(() => {});
  createInterface({ input: child.stdout }).on('line', (line) => {
    const message = JSON.parse(line) as { ready?: { pid: number; versions: number[] }; result?: RacerResult };
    if (message.ready) onReady(message.ready);
    if (message.result) onResult(message.result);
  });
  return { ready, result, go: () => child.stdin.write('go\n') };
}

function sandbox(id: string, overrides: Partial<SandboxRecord> = {}): SandboxRecord {
  return {
    id,
    state: 'running',
    provider: 'mock',
    image: 'debian:12',
    memoryMb: 512,
    vcpus: 1,
    ownerId: null,
    workerId: null,
    runtimeId: null,
    template: null,
    metadata: {},
    createdAt: 1_790_000_000_000,
    updatedAt: 1_790_000_000_000,
    expiresAt: 1_790_000_600_000,
    stateReason: null,
    ...overrides,
  };
}

function execLog(sandboxId: string, overrides: Partial<Parameters<Store['appendExecLog']>[0]> = {}): Parameters<Store['appendExecLog']>[0] {
  return {
    sandboxId,
    command: 'true',
    args: ['x'],
    mode: 'argv',
    exitCode: 0,
    outcome: 'ok',
    durationMs: 12,
    startedAt: 1_790_000_000_000,
    ...overrides,
  };
}

function template(name: string, overrides: Partial<TemplateRecord> = {}): TemplateRecord {
  return {
    name,
    image: null,
    provider: null,
    memoryMb: null,
    vcpus: null,
    ttlMs: null,
    networkMode: null,
    env: {},
    metadata: {},
    createdAt: 1_790_000_000_000,
    updatedAt: 1_790_000_000_000,
    ...overrides,
  };
}

function worker(id: string, overrides: Partial<WorkerRecord> = {}): WorkerRecord {
  return {
    id,
    hostname: 'host-a',
    status: 'online',
    providers: [],
    capabilities: ['api', 'single_node'],
    capacity: {},
    lastHeartbeat: 1_790_000_000_000,
    createdAt: 1_790_000_000_000,
    updatedAt: 1_790_000_000_000,
    ...overrides,
  };
}
