/**
 * Spawn benchmark for the oci provider (`npm run bench:spawn`, needs root + runc + busybox-static).
 *
 * In one run, on the same busybox image:
 *  - provider: spawn → first output of `echo hi` → destroy, through the Provider API;
 *  - raw:      `runc run --detach` → `runc exec echo hi` → `runc delete -f` on a prepared bundle;
 *  - http_api: the same through the HTTP API of a real server (`stacyvm serve` started here on a
 *              free port with oci as default provider and the same image; or the server at
 *              STACYVM_BENCH_API_URL, STACYVM_BENCH_API_KEY for auth, which must serve an image
 *              named bench-busybox on oci). "First output" for HTTP is the exec response;
 *  - exec latency on a running sandbox (provider and HTTP API vs raw runc exec);
 *  - memory per idle sandbox on the host and 200 concurrent sandboxes alive.
 * Prints progress to stderr and one JSON line to stdout.
 *
 * Memory: MemAvailable drop and kernel (Slab+KernelStack+PageTables) growth per idle sandbox,
 * next to the sandbox's own cgroup usage (its workload: PID 1 shell + sleep). The host numbers are
 * noisy on a shared machine; hostProcessesPerSandbox shows there is no per-sandbox host daemon
 * (2 = the sandbox's own init shell and its sleep).
 *
 * Env: BENCH_ITERATIONS (50), BENCH_CONCURRENT (200), BENCH_IDLE (50), BENCH_IMAGE_ROOT.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ImageStore } from '../src/images/store.js';
import { echoRequest as echo, firstOutput, setupOciBench } from './lib/oci.js';
import { now, pct, round, summary } from './lib/stats.js';

const ITER = Number(process.env.BENCH_ITERATIONS ?? 50);
const CONCURRENT = Number(process.env.BENCH_CONCURRENT ?? 200);
const IDLE = Number(process.env.BENCH_IDLE ?? 50);
const API_KEY = process.env.STACYVM_BENCH_API_KEY ?? '';
const CLI_SOURCE = join(import.meta.dirname, '../src/cli/main.ts');
const SERVER_START_TIMEOUT_MS = 60_000;

const log = (msg: string): void => void process.stderr.write(`[bench] ${msg}\n`);
function meminfo(): { available: number; kernel: number } {
  const text = readFileSync('/proc/meminfo', 'utf8');
  const kib = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? 0);
  return { available: kib('MemAvailable'), kernel: kib('Slab') + kib('KernelStack') + kib('PageTables') };
}

function hostProcessCount(): number {
  return Number(spawnSync('sh', ['-c', 'ls /proc | grep -c "^[0-9]"']).stdout.toString().trim());
}

async function pool<T>(items: T[], width: number, fn: (t: T) => Promise<void>): Promise<void> {
  let i = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (i < items.length) await fn(items[i++]!);
    }),
  );
}

interface BenchServer {
  url: string;
  /** SIGTERM, then SIGKILL if it has not exited within 10 s. */
  stop(): Promise<void>;
}

/**
 * Starts `stacyvm serve` from source on a free loopback port, oci as default provider, data in
 * `dataDir` (whose image store must already hold `image`); resolves once it listens.
 */
async function startServer(dataDir: string, image: string): Promise<BenchServer> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('STACYVM_')) env[k] = v;
  Object.assign(env, {
    STACYVM_SERVER_PORT: '0',
    STACYVM_SERVER_HOST: '127.0.0.1',
    STACYVM_DATA_DIR: dataDir,
    STACYVM_PROVIDERS_DEFAULT: 'oci',
    STACYVM_PROVIDERS_OCI_ENABLED: 'true',
    STACYVM_PROVIDERS_DOCKER_ENABLED: 'false',
    STACYVM_DEFAULTS_IMAGE: image,
    STACYVM_LOGGING_FORMAT: 'json',
  });
  const proc: ChildProcess = spawn(process.execPath, ['--import', 'tsx', CLI_SOURCE, 'serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const exited = new Promise<void>((res) => proc.once('exit', () => res()));
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not listen within ${SERVER_START_TIMEOUT_MS} ms:\n${out}`)), SERVER_START_TIMEOUT_MS);
    const onData = (d: Buffer): void => {
      // Only the start-up lines matter; later request logs are dropped to keep memory flat.
      if (out.length < 64 * 1024) out += d.toString();
      const m = /"url":"(http:\/\/[^"]+)"/.exec(out);
      if (m?.[1]) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    proc.stdout?.on('data', onData);
    proc.stderr?.on('data', onData);
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`server exited before listening:\n${out}`));
    });
  });
  return {
    url,
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      const killer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(killer);
    },
  };
}

/** Removes every container and overlay mount left under an oci root (a server that died mid-run). */
function sweepOciRoot(ociRoot: string): void {
  const state = join(ociRoot, 'runc-state');
  if (existsSync(state)) {
    const ids = spawnSync('runc', ['--root', state, 'list', '--quiet'], { encoding: 'utf8' }).stdout.split('\n');
    for (const id of ids) if (id.length > 0) spawnSync('runc', ['--root', state, 'delete', '--force', id]);
  }
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mountPoint = line.split(' ')[4];
    if (mountPoint?.startsWith(ociRoot + '/')) spawnSync('umount', ['-l', mountPoint]);
  }
}

async function main(): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), 'stacyvm-bench-'));
  const externalApi = process.env.STACYVM_BENCH_API_URL ?? '';
  const serverDataDir = join(root, 'server');
  const imageRoot = process.env.BENCH_IMAGE_ROOT ?? join(serverDataDir, 'images');
  const oci = await setupOciBench(root, imageRoot);
  const { provider, spec, rawState, rawRun, rawDelete, imageBuildMs } = oci;
  // The server started here reads images from <data_dir>/images: give it the same image.
  if (!externalApi && imageRoot !== join(serverDataDir, 'images')) await new ImageStore(join(serverDataDir, 'images')).buildBusybox('bench-busybox');

  const rawExecId = `raw-${process.pid}-exec`;
  let server: BenchServer | undefined;
  const cleanupAll = async (): Promise<void> => {
    await server?.stop().catch(() => undefined);
    if (!externalApi) sweepOciRoot(join(serverDataDir, 'oci'));
    await oci.cleanup([rawExecId]);
  };

  try {
    if (!externalApi) {
      log('starting a server (oci default) from source');
      server = await startServer(serverDataDir, 'bench-busybox');
    }
    const API_URL = externalApi || server!.url;
    const auth: Record<string, string> = API_KEY ? { 'x-api-key': API_KEY } : {};
    const apiCall = async (method: string, path: string, body?: unknown): Promise<unknown> => {
      const init: RequestInit = { method, headers: auth, signal: AbortSignal.timeout(30_000) };
      // A JSON content type without a body is a malformed request to the server.
      if (body !== undefined) init.headers = { ...auth, 'content-type': 'application/json' };
      if (body !== undefined) init.body = JSON.stringify(body);
      const res = await fetch(`${API_URL}/api/v1${path}`, init);
      const parsed = (await res.json()) as unknown;
      if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(parsed)}`);
      return parsed;
    };
    const apiSpawn = async (): Promise<string> => ((await apiCall('POST', '/sandboxes', { image: 'bench-busybox', provider: 'oci', memory_mb: 256, vcpus: 1 })) as { id: string }).id;
    const apiEcho = async (id: string): Promise<void> => {
      const r = (await apiCall('POST', `/sandboxes/${id}/exec`, { command: 'echo', args: ['hi'], mode: 'argv' })) as { stdout: string };
      if (r.stdout !== 'hi\n') throw new Error(`exec through the API printed ${JSON.stringify(r.stdout)}`);
    };
    const raw = { spawnToFirstOutput: [] as number[], total: [] as number[] };
    const prov = { spawnToFirstOutput: [] as number[], total: [] as number[] };
    const api = { spawnToFirstOutput: [] as number[], total: [] as number[] };
    log(`spawn→first output→destroy, ${ITER} iterations each (interleaved)`);
    for (let i = 0; i < ITER + 2; i++) {
      const warm = i < 2;
      const r = await oci.rawRound(`raw-${process.pid}-${i}`);
      const p = await oci.providerRound();
      if (!warm) {
        raw.spawnToFirstOutput.push(r.firstOutput);
        raw.total.push(r.total);
        prov.spawnToFirstOutput.push(p.firstOutput);
        prov.total.push(p.total);
      }
      // HTTP API
      const t0 = now();
      const apiId = await apiSpawn();
      await apiEcho(apiId);
      const aFirst = now() - t0;
      await apiCall('DELETE', `/sandboxes/${apiId}`);
      if (!warm) {
        api.spawnToFirstOutput.push(aFirst);
        api.total.push(now() - t0);
      }
    }

    log('exec latency on a running sandbox');
    const rawExec: number[] = [];
    const provExec: number[] = [];
    const apiExec: number[] = [];
    rawRun(rawExecId);
    const { runtimeId: execRt } = await provider.spawn(spec());
    const apiExecId = await apiSpawn();
    for (let i = 0; i < ITER + 2; i++) {
      let t0 = now();
      await firstOutput('runc', ['--root', rawState, 'exec', rawExecId, 'echo', 'hi'], t0);
      if (i >= 2) rawExec.push(now() - t0);
      t0 = now();
      for await (const ev of provider.execStream(execRt, echo)) void ev;
      if (i >= 2) provExec.push(now() - t0);
      t0 = now();
      await apiEcho(apiExecId);
      if (i >= 2) apiExec.push(now() - t0);
    }
    rawDelete(rawExecId);
    await provider.destroy(execRt);
    await apiCall('DELETE', `/sandboxes/${apiExecId}`);

    log(`memory per idle sandbox (${IDLE} sandboxes)`);
    await new Promise((r) => setTimeout(r, 500));
    const memBefore = meminfo();
    const idleIds: string[] = [];
    for (let i = 0; i < IDLE; i++) idleIds.push((await provider.spawn(spec())).runtimeId);
    await new Promise((r) => setTimeout(r, 1000));
    const memAfter = meminfo();
    let cgroupBytes = 0;
    for (const id of idleIds) {
      try {
        cgroupBytes += Number(readFileSync(`/sys/fs/cgroup/memory/stacyvm/${id}/memory.usage_in_bytes`, 'utf8'));
      } catch {
        // cgroup v2 hosts: memory.current
        cgroupBytes += Number(readFileSync(`/sys/fs/cgroup/stacyvm/${id}/memory.current`, 'utf8'));
      }
    }
    for (const id of idleIds) await provider.destroy(id);
    const hostKiBPerSandbox = round((memBefore.available - memAfter.available) / IDLE);
    const kernelKiBPerSandbox = round((memAfter.kernel - memBefore.kernel) / IDLE);
    const cgroupKiBPerSandbox = round(cgroupBytes / 1024 / IDLE);

    log(`${CONCURRENT} concurrent sandboxes`);
    const many: string[] = [];
    const procsBefore = hostProcessCount();
    let t0 = now();
    await pool(
      Array.from({ length: CONCURRENT }, (_, i) => i),
      4,
      async () => void many.push((await provider.spawn(spec())).runtimeId),
    );
    const spawnAllMs = round(now() - t0);
    let alive = 0;
    t0 = now();
    await pool(many, 4, async (id) => {
      let out = '';
      for await (const ev of provider.execStream(id, echo)) if (ev.type === 'stdout') out += ev.data.toString();
      if (out === 'hi\n') alive++;
    });
    const execAllMs = round(now() - t0);
    const hostProcessesPerSandbox = round((hostProcessCount() - procsBefore) / CONCURRENT);
    t0 = now();
    await pool(many, 4, (id) => provider.destroy(id));
    const destroyAllMs = round(now() - t0);

    const result = {
      bench: 'spawn',
      provider: 'oci',
      iterations: ITER,
      image: 'busybox (static, host)',
      imageBuildMs,
      raw: { spawnToFirstOutputMs: summary(raw.spawnToFirstOutput), totalMs: summary(raw.total), execMs: summary(rawExec) },
      provider_api: {
        spawnToFirstOutputMs: summary(prov.spawnToFirstOutput),
        totalMs: summary(prov.total),
        execMs: summary(provExec),
      },
      http_api: {
        server: externalApi ? 'external' : 'started by the bench',
        spawnToFirstOutputMs: summary(api.spawnToFirstOutput),
        totalMs: summary(api.total),
        execMs: summary(apiExec),
      },
      ratios: {
        spawnToFirstOutputP50: round(pct(prov.spawnToFirstOutput, 50) / pct(raw.spawnToFirstOutput, 50)),
        spawnToFirstOutputP99: round(pct(prov.spawnToFirstOutput, 99) / pct(raw.spawnToFirstOutput, 99)),
        execP50: round(pct(provExec, 50) / pct(rawExec, 50)),
        httpSpawnToFirstOutputP50: round(pct(api.spawnToFirstOutput, 50) / pct(raw.spawnToFirstOutput, 50)),
        httpSpawnToFirstOutputP99: round(pct(api.spawnToFirstOutput, 99) / pct(raw.spawnToFirstOutput, 99)),
        httpTotalP50: round(pct(api.total, 50) / pct(raw.total, 50)),
        httpExecP50: round(pct(apiExec, 50) / pct(rawExec, 50)),
        httpExecP99: round(pct(apiExec, 99) / pct(rawExec, 99)),
      },
      idleMemory: { sandboxes: IDLE, hostKiBPerSandbox, cgroupKiBPerSandbox, kernelKiBPerSandbox },
      concurrent: { sandboxes: CONCURRENT, alive, spawnAllMs, execAllMs, destroyAllMs, hostProcessesPerSandbox },
    };
    process.stdout.write(JSON.stringify(result) + '\n');
  } finally {
    await cleanupAll();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
