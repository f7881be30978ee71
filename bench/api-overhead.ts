/**
 * API overhead on the mock provider: spawn → exec → destroy through the HTTP API (a real
 * server in this process, over loopback with keep-alive) versus the same provider calls made
 * directly, in the same run. Prints one JSON line with p50/p99 of each and the overhead.
 *
 *   npm run bench:api            (BENCH_ITERATIONS=200 by default)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { loadConfig } from '../src/config/load.js';
import { startServer } from '../src/main/server.js';
import { MockProvider } from '../src/providers/mock/mock-provider.js';
import type { ExecRequest } from '../src/providers/provider.js';
import { pino } from 'pino';

const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 200);
const WARMUP = Math.max(5, Math.floor(ITERATIONS / 10));

function pct(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Number((sorted[idx] ?? NaN).toFixed(3));
}

interface Samples {
  spawn: number[];
  exec: number[];
  destroy: number[];
  cycle: number[];
}

const summary = (s: Samples) => ({
  cycle_p50_ms: pct(s.cycle, 50),
  cycle_p99_ms: pct(s.cycle, 99),
  spawn_p50_ms: pct(s.spawn, 50),
  exec_p50_ms: pct(s.exec, 50),
  exec_p99_ms: pct(s.exec, 99),
  destroy_p50_ms: pct(s.destroy, 50),
});

const EXEC: ExecRequest = { command: 'echo', args: ['42'], mode: 'argv', env: {}, timeoutMs: 10_000 };

async function direct(root: string): Promise<Samples> {
  const provider = new MockProvider({ root });
  const s: Samples = { spawn: [], exec: [], destroy: [], cycle: [] };
  for (let i = 0; i < WARMUP + ITERATIONS; i++) {
    const t0 = performance.now();
    const { runtimeId } = await provider.spawn({ sandboxId: `sb-${i.toString(16).padStart(8, '0')}`, image: 'python:3', memoryMb: 512, vcpus: 1, ownerId: null, workerId: 'local', env: {}, labels: {} });
    const t1 = performance.now();
    let out = '';
    for await (const ev of provider.execStream(runtimeId, EXEC)) if (ev.type === 'stdout') out += ev.data.toString();
    if (out !== '42\n') throw new Error(`direct exec printed ${JSON.stringify(out)}`);
    const t2 = performance.now();
    await provider.destroy(runtimeId);
    const t3 = performance.now();
    if (i >= WARMUP) {
      s.spawn.push(t1 - t0);
      s.exec.push(t2 - t1);
      s.destroy.push(t3 - t2);
      s.cycle.push(t3 - t0);
    }
  }
  return s;
}

async function viaHttp(dataDir: string): Promise<{ http: Samples; service: Samples }> {
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
  const send = async (method: 'POST' | 'DELETE', path: string, body?: unknown) => {
    const res = await request(`${api}${path}`, {
      method,
      dispatcher: agent,
      ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
    });
    const json = (await res.body.json()) as Record<string, unknown>;
    if (res.statusCode >= 300) throw new Error(`${method} ${path}: ${res.statusCode} ${JSON.stringify(json)}`);
    return json;
  };
  const s: Samples = { spawn: [], exec: [], destroy: [], cycle: [] };
  const svc: Samples = { spawn: [], exec: [], destroy: [], cycle: [] };
  const caller = { userId: null, isAdmin: true, requestId: 'bench' };
  try {
    // The orchestrator called in-process: splits the overhead into service and HTTP parts.
    for (let i = 0; i < WARMUP + ITERATIONS; i++) {
      const t0 = performance.now();
      const sb = await server.service.spawn({}, caller);
      const t1 = performance.now();
      const ex = await server.service.exec(sb.id, { command: 'echo', args: ['42'], mode: 'argv', env: {} }, caller);
      if (ex.stdout !== '42\n') throw new Error(`service exec printed ${JSON.stringify(ex.stdout)}`);
      const t2 = performance.now();
      await server.service.destroy(sb.id, caller);
      const t3 = performance.now();
      if (i >= WARMUP) {
        svc.spawn.push(t1 - t0);
        svc.exec.push(t2 - t1);
        svc.destroy.push(t3 - t2);
        svc.cycle.push(t3 - t0);
      }
    }
    for (let i = 0; i < WARMUP + ITERATIONS; i++) {
      const t0 = performance.now();
      const sb = await send('POST', '/sandboxes', {});
      const t1 = performance.now();
      const ex = await send('POST', `/sandboxes/${sb.id as string}/exec`, { command: 'echo', args: ['42'], mode: 'argv' });
      if (ex.stdout !== '42\n') throw new Error(`http exec printed ${JSON.stringify(ex.stdout)}`);
      const t2 = performance.now();
      await send('DELETE', `/sandboxes/${sb.id as string}`);
      const t3 = performance.now();
      if (i >= WARMUP) {
        s.spawn.push(t1 - t0);
        s.exec.push(t2 - t1);
        s.destroy.push(t3 - t2);
        s.cycle.push(t3 - t0);
      }
    }
  } finally {
    await agent.close();
    await server.close();
  }
  return { http: s, service: svc };
}

const dir = await mkdtemp(join(tmpdir(), 'stacyvm-bench-'));
try {
  const d = await direct(join(dir, 'direct'));
  const layered = await viaHttp(join(dir, 'http'));
  const ds = summary(d);
  const ss = summary(layered.service);
  const hs = summary(layered.http);
  console.log(
    JSON.stringify({
      bench: 'api-overhead',
      provider: 'mock',
      iterations: ITERATIONS,
      direct: ds,
      service: ss,
      http: hs,
      overhead_per_exec_p50_ms: Number((hs.exec_p50_ms - ds.exec_p50_ms).toFixed(3)),
      overhead_per_exec_p99_ms: Number((hs.exec_p99_ms - ds.exec_p99_ms).toFixed(3)),
      overhead_per_cycle_p50_ms: Number((hs.cycle_p50_ms - ds.cycle_p50_ms).toFixed(3)),
      http_layer_per_exec_p50_ms: Number((hs.exec_p50_ms - ss.exec_p50_ms).toFixed(3)),
      goal_exec_overhead_p50_ms: 1,
    }),
  );
} finally {
  await rm(dir, { recursive: true, force: true });
}
