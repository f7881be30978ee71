/**
 * Lease benchmark: 8 racers, each on its own store connection, hammer acquire/renew/release on
 * a handful of resources with short TTLs, back to back. Prints one JSON line per dialect with
 * throughput, p50/p99 latency per operation and the fencing violations the history checker
 * found (must be 0). PostgreSQL runs when STACYVM_TEST_PG_DSN is set, in a scratch database.
 *
 *   npm run bench:leases            # env: BENCH_DURATION_MS (default 3000)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore, type OpenStoreOptions } from '../src/store/index.js';
import { createScratchDatabase } from '../test/fixtures/pg-scratch.js';
import { checkLeaseHistory, runLeaseRacer, type OpStats } from '../test/fixtures/lease-race.js';

const RACERS = 8;
const RESOURCES = ['bench-a', 'bench-b', 'bench-c', 'bench-d'];
const TTL_MS: [number, number] = [50, 200];
const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 3000);

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
}

const round = (n: number): number => Math.round(n * 1000) / 1000;

function summarize(stats: readonly OpStats[], seconds: number) {
  const latencies = stats.flatMap((s) => s.latencies).sort((a, b) => a - b);
  const ok = stats.reduce((n, s) => n + s.ok, 0);
  const conflict = stats.reduce((n, s) => n + s.conflict, 0);
  return {
    ok,
    conflict,
    calls_per_s: round(latencies.length / seconds),
    p50_ms: round(percentile(latencies, 50)),
    p99_ms: round(percentile(latencies, 99)),
  };
}

async function bench(dialect: string, options: OpenStoreOptions): Promise<void> {
  const stores = Array.from({ length: RACERS }, () => openStore({ ...options, poolSize: 1 }));
  try {
    await stores[0]!.migrate();
    await Promise.all(stores.map((s) => s.ping()));
    const started = performance.now();
    const results = await Promise.all(
      stores.map((store, i) =>
        runLeaseRacer(store, { holderId: `racer-${i}`, resources: RESOURCES, durationMs: DURATION_MS, ttlMs: TTL_MS, pace: 'tight' }),
      ),
    );
    const seconds = (performance.now() - started) / 1000;
    const events = results.flatMap((r) => r.events);
    const acquire = summarize(results.map((r) => r.acquire), seconds);
    const renew = summarize(results.map((r) => r.renew), seconds);
    const release = summarize(results.map((r) => r.release), seconds);
    console.log(
      JSON.stringify({
        bench: 'leases',
        dialect,
        racers: RACERS,
        resources: RESOURCES.length,
        ttl_ms: TTL_MS,
        duration_s: round(seconds),
        grants_per_s: round(events.length / seconds),
        acquire_renew_calls_per_s: round(acquire.calls_per_s + renew.calls_per_s),
        acquire,
        renew,
        release,
        fencing_violations: checkLeaseHistory(events).length,
      }),
    );
  } finally {
    await Promise.all(stores.map((s) => s.close()));
  }
}

const dir = await mkdtemp(join(tmpdir(), 'stacyvm-bench-leases-'));
try {
  await bench('sqlite', { driver: 'sqlite', path: join(dir, 'stacyvm.db') });
} finally {
  await rm(dir, { recursive: true, force: true });
}

const dsn = process.env.STACYVM_TEST_PG_DSN;
if (!dsn) {
  console.log(JSON.stringify({ bench: 'leases', dialect: 'postgres', skipped: 'STACYVM_TEST_PG_DSN is not set' }));
} else {
  const scratch = await createScratchDatabase(dsn, 'stacyvm_bench');
  try {
    await bench('postgres', { driver: 'postgres', dsn: scratch.dsn });
  } finally {
    await scratch.drop();
  }
}
