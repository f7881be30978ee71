/**
 * Placement benchmark: 1,000 registered workers (and a few thousand active sandboxes spread
 * over them) in the store, then spawn admission through the orchestrator's `admission()`, which
 * runs the limits and worker placement exactly as a spawn does. Prints one JSON line per dialect
 * with admission p50/p99, the time of the store reads placement makes (listWorkerLoads) or
 * made before it existed (listWorkers + every active sandbox), and the fencing
 * violations (must be 0) of a short lease race on the same database. PostgreSQL runs when
 * STACYVM_TEST_PG_DSN is set, in a scratch database.
 *
 *   npm run bench:placement        # env: BENCH_WORKERS (1000), BENCH_SANDBOXES (3000), BENCH_ROUNDS (300)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { defaultConfig } from '../src/config/load.js';
import type { Config } from '../src/config/types.js';
import type { SandboxRecord, WorkerRecord } from '../src/core/types.js';
import { ACTIVE_SANDBOX_STATES } from '../src/core/types.js';
import { createOrchestrator } from '../src/orchestrator/index.js';
import type { Caller } from '../src/orchestrator/service.js';
import { MockProvider } from '../src/providers/mock/mock-provider.js';
import { openStore, type OpenStoreOptions } from '../src/store/index.js';
import type { Store } from '../src/store/store.js';
import { createScratchDatabase } from '../test/fixtures/pg-scratch.js';
import { checkLeaseHistory, runLeaseRacer } from '../test/fixtures/lease-race.js';

const WORKERS = Number(process.env.BENCH_WORKERS ?? 1000);
const SANDBOXES = Number(process.env.BENCH_SANDBOXES ?? 3000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 300);
const RACERS = 8;
const RACE_MS = 1500;
const caller: Caller = { userId: null, isAdmin: true, requestId: 'bench' };

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
}

const round = (n: number): number => Math.round(n * 1000) / 1000;

async function timeIt(rounds: number, fn: () => Promise<unknown>): Promise<{ p50_ms: number; p99_ms: number }> {
  const samples: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const t0 = performance.now();
    await fn();
    samples.push(performance.now() - t0);
  }
  samples.sort((a, b) => a - b);
  return { p50_ms: round(percentile(samples, 50)), p99_ms: round(percentile(samples, 99)) };
}

/** A fleet where every kind of ineligibility occurs: stale, draining, full, wrong provider. */
async function seed(store: Store, now: number): Promise<void> {
  for (let i = 0; i < WORKERS; i++) {
    const id = i === 0 ? 'local' : `w-${String(i).padStart(4, '0')}`;
    const worker: WorkerRecord = {
      id,
      hostname: `${id}.bench`,
      status: i % 50 === 7 ? 'draining' : 'online',
      providers: i % 10 === 3 ? ['oci'] : ['mock'],
      capabilities: ['spawn', 'exec', 'files'],
      capacity: { maxSandboxes: i % 20 === 5 ? 1 : 100, maxSandboxesPerOwner: 10 },
      lastHeartbeat: i % 25 === 11 ? now - 3_600_000 : now,
      createdAt: now,
      updatedAt: now,
    };
    await store.saveWorker(worker);
  }
  for (let i = 0; i < SANDBOXES; i++) {
    const record: SandboxRecord = {
      id: `sb-${i.toString(16).padStart(8, '0')}`,
      state: ACTIVE_SANDBOX_STATES[i % 2 === 0 ? 1 : 0] ?? 'running',
      provider: 'mock',
      image: 'bench',
      memoryMb: 64,
      vcpus: 1,
      ownerId: `owner-${i % 40}`,
      workerId: i % WORKERS === 0 ? 'local' : `w-${String(i % WORKERS).padStart(4, '0')}`,
      runtimeId: null,
      template: null,
      metadata: {},
      createdAt: now,
      updatedAt: now,
      expiresAt: now + 3_600_000,
      stateReason: null,
    };
    await store.createSandbox(record);
  }
}

async function bench(dialect: string, options: OpenStoreOptions, root: string): Promise<void> {
  const store = openStore(options);
  const racers: Store[] = [];
  try {
    await store.migrate();
    const now = Date.now();
    await seed(store, now);
    const config = structuredClone(defaultConfig()) as Config;
    config.reconcile.reapIntervalMs = 0;
    // The fleet is larger than one server's default limit; the bench measures placement.
    config.defaults.maxSandboxes = SANDBOXES * 10;
    const mock = new MockProvider({ root: join(root, `mock-${dialect}`) });
    const orch = createOrchestrator({ config, store, providers: [mock], version: 'bench' });
    // Warm up connections, statement caches and the JIT before measuring.
    for (let i = 0; i < 20; i++) await orch.admission({ ownerId: 'owner-1' }, caller);
    const probe = await orch.admission({ ownerId: 'owner-1' }, caller);
    const admission = await timeIt(ROUNDS, () => orch.admission({ ownerId: 'owner-1' }, caller));
    const listWorkers = await timeIt(Math.min(ROUNDS, 100), () => store.listWorkers());
    const listActive = await timeIt(Math.min(ROUNDS, 100), () => store.listSandboxes({ states: ACTIVE_SANDBOX_STATES }));
    const workerLoads = await timeIt(Math.min(ROUNDS, 100), () => store.listWorkerLoads(ACTIVE_SANDBOX_STATES, 'owner-1'));

    racers.push(...Array.from({ length: RACERS }, () => openStore({ ...options, poolSize: 1 })));
    const results = await Promise.all(
      racers.map((s, i) => runLeaseRacer(s, { holderId: `racer-${i}`, resources: ['p-a', 'p-b', 'p-c', 'p-d'], durationMs: RACE_MS, ttlMs: [50, 200], pace: 'paced' })),
    );
    const events = results.flatMap((r) => r.events);
    console.log(
      JSON.stringify({
        bench: 'placement',
        dialect,
        workers: WORKERS,
        active_sandboxes: SANDBOXES,
        rounds: ROUNDS,
        allowed: probe.allowed,
        selected_worker: probe.scheduler.selectedWorkerId,
        eligible_workers: probe.scheduler.eligibleWorkers,
        admission,
        store_list_workers: listWorkers,
        store_list_active_sandboxes: listActive,
        store_list_worker_loads: workerLoads,
        lease_race: { racers: RACERS, duration_ms: RACE_MS, grants: events.length },
        fencing_violations: checkLeaseHistory(events).length,
      }),
    );
  } finally {
    await Promise.all(racers.map((s) => s.close()));
    await store.close();
  }
}

const dir = await mkdtemp(join(tmpdir(), 'stacyvm-bench-placement-'));
try {
  await bench('sqlite', { driver: 'sqlite', path: join(dir, 'stacyvm.db') }, dir);

  const dsn = process.env.STACYVM_TEST_PG_DSN;
  if (!dsn) {
    console.log(JSON.stringify({ bench: 'placement', dialect: 'postgres', skipped: 'STACYVM_TEST_PG_DSN is not set' }));
  } else {
    const scratch = await createScratchDatabase(dsn, 'stacyvm_bench');
    try {
      await bench('postgres', { driver: 'postgres', dsn: scratch.dsn }, dir);
    } finally {
      await scratch.drop();
    }
  }
} finally {
  await rm(dir, { recursive: true, force: true });
}
