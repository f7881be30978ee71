/**
 * API overhead on the mock provider: spawn → exec → destroy through the HTTP API (a real
 * server in this process, over loopback with keep-alive) versus the same provider calls made
 * directly, in the same run. The orchestrator called in-process is measured too, to split the
 * overhead into its service and HTTP parts. The three paths are interleaved per iteration so
 * load from other processes on a shared machine hits them alike. Prints one JSON line.
 *
 * Also reported, to explain the numbers: a no-op round trip over the same connection pool (the
 * HTTP floor), and the minor page faults this process takes per exec. The mock provider starts
 * each command with child_process.spawn, which forks this whole process; afterwards every page
 * the process writes for the first time faults, so work done after a spawn costs more than the
 * same work measured on its own, and a path that does more work after the spawn pays more.
 *
 *   npm run bench:api            (BENCH_ITERATIONS=200 by default)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Agent, request } from 'undici';
import { loadConfig } from '../src/config/load.js';
import { startServer } from '../src/main/server.js';
import type { Caller } from '../src/orchestrator/service.js';
import { MockProvider } from '../src/providers/mock/mock-provider.js';
import type { ExecRequest } from '../src/providers/provider.js';

const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 200);
const WARMUP = Math.max(5, Math.floor(ITERATIONS / 10));

function pct(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Number((sorted[idx] ?? NaN).toFixed(3));
}

class Samples {
  spawn: number[] = [];
  exec: number[] = [];
  destroy: number[] = [];
  cycle: number[] = [];
  execFaults: number[] = [];
  add(t: Timed): void {
    this.execFaults.push(t[4]);
    this.spawn.push(t[1] - t[0]);
    this.exec.push(t[2] - t[1]);
    this.destroy.push(t[3] - t[2]);
    this.cycle.push(t[3] - t[0]);
  }
  summary() {
    return {
      cycle_p50_ms: pct(this.cycle, 50),
      cycle_p99_ms: pct(this.cycle, 99),
      spawn_p50_ms: pct(this.spawn, 50),
      exec_p50_ms: pct(this.exec, 50),
      exec_p99_ms: pct(this.exec, 99),
      destroy_p50_ms: pct(this.destroy, 50),
      exec_minor_faults_p50: pct(this.execFaults, 50),
    };
  }
}

/** performance.now() at start, after spawn, after exec, after destroy; then minor page faults during exec. */
type Timed = [number, number, number, number, number];

const faults = (): number => process.resourceUsage().minorPageFault;

const EXEC: ExecRequest = { command: 'echo', args: ['42'], mode: 'argv', env: {}, timeoutMs: 10_000 };
const CALLER: Caller = { userId: null, isAdmin: true, requestId: 'bench' };

const dir = await mkdtemp(join(tmpdir(), 'stacyvm-bench-'));
const provider = new MockProvider({ root: join(dir, 'direct') });
const dataDir = join(dir, 'server');
const config = loadConfig({
  env: {},
  overrides: {
    data_dir: dataDir,
    server: { host: '127.0.0.1', port: 0 },
    database: { driver: 'sqlite', path: join(dataDir, 'stacyvm.db') },
    providers: { default: 'mock', oci: { enabled: false }, docker: { enabled: false } },
    logging: { level: 'error' },
  },
});
const server = await startServer(config, { logger: pino({ level: 'error' }) });
const agent = new Agent({ connections: 4, keepAliveTimeout: 30_000 });
const api = `${server.url}/api/v1`;

async function send(method: 'POST' | 'DELETE', path: string, body?: unknown): Promise<Record<string, unknown>> {
  const res = await request(`${api}${path}`, {
    method,
    dispatcher: agent,
    ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
  });
  const json = (await res.body.json()) as Record<string, unknown>;
  if (res.statusCode >= 300) throw new Error(`${method} ${path}: ${res.statusCode} ${JSON.stringify(json)}`);
  return json;
}

async function directCycle(i: number): Promise<Timed> {
  const t0 = performance.now();
  const { runtimeId } = await provider.spawn({ sandboxId: `sb-${i.toString(16).padStart(8, '0')}`, image: 'python:3', memoryMb: 512, vcpus: 1, ownerId: null, workerId: 'local', env: {}, labels: {} });
  const f1 = faults();
  const t1 = performance.now();
  let out = '';
  for await (const ev of provider.execStream(runtimeId, EXEC)) if (ev.type === 'stdout') out += ev.data.toString();
  if (out !== '42\n') throw new Error(`direct exec printed ${JSON.stringify(out)}`);
  const t2 = performance.now();
  const f2 = faults();
  await provider.destroy(runtimeId);
  return [t0, t1, t2, performance.now(), f2 - f1];
}

async function serviceCycle(): Promise<Timed> {
  const t0 = performance.now();
  const sb = await server.service.spawn({}, CALLER);
  const f1 = faults();
  const t1 = performance.now();
  const ex = await server.service.exec(sb.id, { command: 'echo', args: ['42'], mode: 'argv', env: {} }, CALLER);
  if (ex.stdout !== '42\n') throw new Error(`service exec printed ${JSON.stringify(ex.stdout)}`);
  const t2 = performance.now();
  const f2 = faults();
  await server.service.destroy(sb.id, CALLER);
  return [t0, t1, t2, performance.now(), f2 - f1];
}

async function httpCycle(): Promise<Timed> {
  const t0 = performance.now();
  const sb = await send('POST', '/sandboxes', {});
  const f1 = faults();
  const t1 = performance.now();
  const ex = await send('POST', `/sandboxes/${sb.id as string}/exec`, { command: 'echo', args: ['42'], mode: 'argv' });
  if (ex.stdout !== '42\n') throw new Error(`http exec printed ${JSON.stringify(ex.stdout)}`);
  const t2 = performance.now();
  const f2 = faults();
  await send('DELETE', `/sandboxes/${sb.id as string}`);
  return [t0, t1, t2, performance.now(), f2 - f1];
}

async function noopRoundTrip(): Promise<number> {
  const t0 = performance.now();
  const res = await request(`${api}/live`, { dispatcher: agent });
  await res.body.json();
  if (res.statusCode !== 200) throw new Error(`GET /live: ${res.statusCode}`);
  return performance.now() - t0;
}

try {
  const direct = new Samples();
  const service = new Samples();
  const http = new Samples();
  const noop: number[] = [];
  for (let i = 0; i < WARMUP + ITERATIONS; i++) {
    const d = await directCycle(i);
    const s = await serviceCycle();
    const h = await httpCycle();
    const n = await noopRoundTrip();
    if (i >= WARMUP) {
      direct.add(d);
      service.add(s);
      http.add(h);
      noop.push(n);
    }
  }
  const ds = direct.summary();
  const ss = service.summary();
  const hs = http.summary();
  const diff = (a: number, b: number) => Number((a - b).toFixed(3));
  console.log(
    JSON.stringify({
      bench: 'api-overhead',
      provider: 'mock',
      iterations: ITERATIONS,
      direct: ds,
      service: ss,
      http: hs,
      overhead_per_exec_p50_ms: diff(hs.exec_p50_ms, ds.exec_p50_ms),
      overhead_per_exec_p99_ms: diff(hs.exec_p99_ms, ds.exec_p99_ms),
      overhead_per_cycle_p50_ms: diff(hs.cycle_p50_ms, ds.cycle_p50_ms),
      http_layer_per_exec_p50_ms: diff(hs.exec_p50_ms, ss.exec_p50_ms),
      http_noop_round_trip_p50_ms: pct(noop, 50),
      goal_exec_overhead_p50_ms: 1,
    }),
  );
} finally {
  await agent.close();
  await server.close();
  await rm(dir, { recursive: true, force: true });
}
