/**
 * Builds a real orchestrator for tests: the SQLite store (in memory), the mock provider in a
 * private temp directory, the local worker, and a ManualClock that starts at the host time so
 * timestamps line up with the store's own clock.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../../src/core/clock.js';
import { StacyError } from '../../../src/core/errors.js';
import type { Config } from '../../../src/config/types.js';
import { defaultConfig } from '../../../src/config/load.js';
import { createOrchestrator } from '../../../src/orchestrator/index.js';
import type { Orchestrator } from '../../../src/orchestrator/index.js';
import type { Caller, StacyEvent } from '../../../src/orchestrator/service.js';
import { MockProvider } from '../../../src/providers/mock/mock-provider.js';
import type { Provider } from '../../../src/providers/provider.js';
import { openSqliteStore } from '../../../src/store/sqlite.js';
import type { Store } from '../../../src/store/store.js';
import { LocalWorker } from '../../../src/worker/local-worker.js';

export const anon: Caller = { userId: null, isAdmin: false, requestId: 'req-test' };
export const admin: Caller = { userId: null, isAdmin: true, requestId: 'req-admin' };
export const user = (userId: string): Caller => ({ userId, isAdmin: false, requestId: `req-${userId}` });

type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? (T[K] extends unknown[] ? T[K] : DeepPartial<T[K]>) : T[K] };

export function testConfig(overrides: DeepPartial<Config> = {}): Config {
  const base = structuredClone(defaultConfig()) as Config;
  // The background loop is driven by hand in tests.
  base.reconcile.reapIntervalMs = 0;
  return merge(base, overrides) as Config;
}

function merge(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const out = { ...(target as Record<string, unknown>) };
  for (const [k, v] of Object.entries(patch as Record<string, unknown>)) out[k] = merge(out[k], v);
  return out;
}

/** The StacyError `p` rejects with; fails when it resolves or rejects with anything else. */
export async function rejection(p: Promise<unknown>): Promise<StacyError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof StacyError) return err;
    throw err;
  }
  throw new Error('expected a rejection');
}

/** The holder of an unexpired lease on the resource, or null (a released lease may stay as an expired row). */
export async function leaseHolder(store: Store, resourceId: string): Promise<string | null> {
  const lease = await store.getLease(resourceId);
  return lease !== undefined && lease.expiresAt > (await store.now()) ? lease.holderId : null;
}

export interface Harness {
  config: Config;
  store: Store;
  mock: MockProvider;
  providers: Provider[];
  clock: ManualClock;
  worker: LocalWorker;
  orch: Orchestrator;
  events: StacyEvent[];
  root: string;
  /** Builds a second orchestrator over the same store and mock root (a restart). */
  restart(overrides?: DeepPartial<Config>): Promise<Orchestrator>;
  close(): Promise<void>;
}

/** Opens an empty, migrated store for one test. */
export type StoreFactory = () => Promise<Store>;

export const sqliteMemory: StoreFactory = async () => {
  const store = openSqliteStore({ path: ':memory:' });
  await store.migrate();
  return store;
};

export interface HarnessOptions {
  config?: DeepPartial<Config>;
  providers?: Provider[];
  startWorker?: boolean;
  /** Defaults to a private in-memory SQLite store. */
  openStore?: StoreFactory;
}

export async function harness(options: HarnessOptions = {}): Promise<Harness> {
  const config = testConfig(options.config);
  const root = mkdtempSync(join(tmpdir(), 'stacyvm-orch-'));
  const store = await (options.openStore ?? sqliteMemory)();
  const clock = new ManualClock(Date.now());
  const mock = new MockProvider({ root: join(root, 'mock') });
  const providers = options.providers ?? [mock];
  const worker = new LocalWorker({
    store,
    id: config.worker.id,
    providers: providers.map((p) => p.name),
    capacity: { maxSandboxes: config.defaults.maxSandboxes, maxSandboxesPerOwner: config.defaults.maxSandboxesPerOwner },
    heartbeatIntervalMs: config.worker.heartbeatIntervalMs,
    clock,
  });
  if (options.startWorker !== false) await worker.start();
  const build = (cfg: Config): Orchestrator => createOrchestrator({ config: cfg, store, providers, clock, version: 'test' });
  const orch = build(config);
  const events: StacyEvent[] = [];
  orch.subscribe((e) => events.push(e));
  await orch.start();
  const extra: Orchestrator[] = [];
  return {
    config,
    store,
    mock,
    providers,
    clock,
    worker,
    orch,
    events,
    root,
    async restart(overrides = {}) {
      const o = build(merge(testConfig(options.config), overrides) as Config);
      extra.push(o);
      o.subscribe((e) => events.push(e));
      await o.start();
      return o;
    },
    async close() {
      for (const o of extra) await o.stop();
      await orch.stop();
      await worker.stop();
      // Runtimes tests left behind (and any command still running in them) go first.
      for (const rt of await mock.inventory()) await mock.destroy(rt.runtimeId);
      await store.close();
      // The mock may still append to a console log of a command it just killed.
      rmSync(root, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 });
    },
  };
}
