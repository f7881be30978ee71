/**
 * A real control plane (`node dist/cli/main.js serve`) plus N real worker processes
 * (`node dist/cli/main.js worker …`), each with the mock provider (unless told otherwise) and
 * its own data directory, all on 127.0.0.1 free ports. Both sides share one worker token. `stop()` tears everything down
 * and removes the data directories; every wait is bounded.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { CLI, call, makeDataDir, removeDir, startServerProcess, type ServerProcess } from './server-process.js';

export const WORKER_TOKEN = 'remote-harness-worker-token';

/** Polls `check` every 200 ms until it returns true; fails naming `what` after `ms`. */
export async function until(what: string, check: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 15_000;

export interface WorkerProcess {
  id: string;
  /** The worker's RPC base URL, as it advertises it. */
  rpcUrl: string;
  dataDir: string;
  proc: ChildProcess;
  output(): string;
  /** SIGINT (stop at once, reports offline) and wait for exit; SIGKILL after a bound. */
  stop(): Promise<void>;
  /** SIGKILL and wait for exit. */
  kill9(): Promise<void>;
}

export interface WorkerStartOptions {
  /** Extra `stacyvm worker` flags, e.g. `['--max-sandboxes', '5']`. */
  args?: string[];
  /** `--providers`; default `mock`. Enable others through `env` (e.g. STACYVM_PROVIDERS_OCI_ENABLED). */
  providers?: string;
  /** Default 500ms, so registry changes show up quickly. */
  heartbeatInterval?: string;
  /** Reuse a data dir (a restarted worker); a new one otherwise. */
  dataDir?: string;
  env?: Record<string, string>;
  /** `--listen` address; default `127.0.0.1:0`. */
  listen?: string;
  /** Argv prefix the worker runs under, e.g. `['ip', 'netns', 'exec', ns]`; default none. */
  wrap?: string[];
}

export interface RemoteCluster {
  server: ServerProcess;
  workers: WorkerProcess[];
  /** Starts one more worker and waits until the control plane lists it with its rpc_url. */
  startWorker(id: string, options?: WorkerStartOptions): Promise<WorkerProcess>;
  stop(): Promise<void>;
}

export interface RemoteClusterOptions {
  /** Worker ids to start; default none. */
  workers?: string[];
  workerOptions?: WorkerStartOptions;
  /** Extra STACYVM_* env for the control plane. */
  serverEnv?: Record<string, string>;
}

/** Environment for a worker: nothing from the caller's STACYVM_*, the mock provider only. */
function workerEnv(dataDir: string, extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('STACYVM_')) env[k] = v;
  return {
    ...env,
    STACYVM_DATA_DIR: dataDir,
    STACYVM_PROVIDERS_DEFAULT: 'mock',
    STACYVM_PROVIDERS_OCI_ENABLED: 'false',
    STACYVM_PROVIDERS_DOCKER_ENABLED: 'false',
    STACYVM_LOGGING_LEVEL: process.env.STACYVM_TEST_LOG_LEVEL ?? 'info',
    STACYVM_LOGGING_FORMAT: 'json',
    ...extra,
  };
}

async function waitExit(proc: ChildProcess, ms: number): Promise<boolean> {
  if (proc.exitCode !== null || proc.signalCode !== null) return true;
  return new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    proc.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** Starts `stacyvm worker` against `controlPlane` and waits until the control plane lists it. */
export async function startWorkerProcess(controlPlane: ServerProcess, id: string, options: WorkerStartOptions = {}): Promise<WorkerProcess> {
  const ownDir = options.dataDir === undefined;
  const dataDir = options.dataDir ?? (await makeDataDir());
  const args = [
    CLI,
    'worker',
    '--id',
    id,
    '--control-plane',
    controlPlane.url,
    '--worker-token',
    WORKER_TOKEN,
    '--listen',
    options.listen ?? '127.0.0.1:0',
    '--providers',
    options.providers ?? 'mock',
    '--heartbeat-interval',
    options.heartbeatInterval ?? '500ms',
    ...(options.args ?? []),
  ];
  const wrap = options.wrap ?? [];
  const [command, ...prefix] = wrap.length > 0 ? [...wrap, process.execPath] : [process.execPath];
  const proc = spawn(command as string, [...prefix, ...args], { env: workerEnv(dataDir, options.env ?? {}), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const kill9 = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    await waitExit(proc, STOP_TIMEOUT_MS);
  };
  try {
    const deadline = Date.now() + START_TIMEOUT_MS;
    let rpcUrl: string | undefined;
    for (;;) {
      if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`worker ${id} exited with ${proc.exitCode ?? proc.signalCode} before registering:\n${out}`);
      if (Date.now() > deadline) throw new Error(`worker ${id} did not register within ${START_TIMEOUT_MS}ms:\n${out}`);
      rpcUrl ??= /"url":"(https?:\/\/[^"]+)"[^\n]*"msg":"worker RPC listening"/.exec(out)?.[1];
      if (rpcUrl !== undefined) {
        const listed = await call('GET', `${controlPlane.api}/workers/${encodeURIComponent(id)}`);
        const body = listed.body as { status?: string; capacity?: { rpc_url?: string } } | undefined;
        if (listed.status === 200 && body?.capacity?.rpc_url === rpcUrl && body.status === 'online') break;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    return {
      id,
      rpcUrl,
      dataDir,
      proc,
      output: () => out,
      stop: async () => {
        if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGINT');
        if (!(await waitExit(proc, STOP_TIMEOUT_MS))) await kill9();
        if (ownDir) await removeDir(dataDir);
      },
      kill9,
    };
  } catch (err) {
    await kill9();
    if (ownDir) await removeDir(dataDir);
    throw err;
  }
}

/** Starts the control plane and the named workers. */
export async function startRemoteCluster(options: RemoteClusterOptions = {}): Promise<RemoteCluster> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
  const server = await startServerProcess({
    env: {
      STACYVM_AUTH_WORKER_TOKEN: WORKER_TOKEN,
      // Short enough that a killed worker turns stale within a test, longer than the local heartbeat.
      STACYVM_WORKER_HEARTBEAT_INTERVAL: '500ms',
      STACYVM_WORKERS_STALE_AFTER: '3s',
      ...options.serverEnv,
    },
  });
  const workers: WorkerProcess[] = [];
  const cluster: RemoteCluster = {
    server,
    workers,
    startWorker: async (id, o) => {
      const w = await startWorkerProcess(server, id, { ...options.workerOptions, ...o });
      workers.push(w);
      return w;
    },
    stop: async () => {
      await Promise.all(workers.map((w) => w.stop()));
      await server.stop();
      await removeDir(server.dataDir);
    },
  };
  try {
    for (const id of options.workers ?? []) await cluster.startWorker(id);
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return cluster;
}
