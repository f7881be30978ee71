/**
 * Remote exec benchmark, in one process and one run so both sides see the same machine load:
 * - round trip of a trivial exec through RemoteProvider → HTTP /rpc → WorkerNode → mock, against
 *   the same exec on a mock provider called directly (interleaved), p50/p99 and the added ms;
 *   also the buffered `worker.exec` method;
 * - exec-stream throughput: a command writing BENCH_STREAM_MB MiB to stdout, read through the
 *   relay (NDJSON, base64) and directly;
 * - file-read throughput: a file of the same size read through `worker.file_read` (chunked
 *   NDJSON) and directly.
 * Prints one JSON document.
 *
 * The worker runs in this process by default; BENCH_WORKER=process runs it as a child process
 * (test/fixtures/rpc-worker.ts), so caller and worker do not share one event loop.
 *
 *   npm run bench:remote            # env: BENCH_ITERATIONS (default 300), BENCH_STREAM_MB (default 256), BENCH_WORKER
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { newSandboxId } from '../src/core/ids.js';
import { toIso } from '../src/core/clock.js';
import { systemClock } from '../src/core/clock.js';
import { MockProvider } from '../src/providers/mock/mock-provider.js';
import type { ExecRequest, Provider } from '../src/providers/provider.js';
import { WorkerAuthenticator } from '../src/workerproto/index.js';
import { WorkerNode } from '../src/worker/node.js';
import { RemoteProvider, RemoteWorkerClient } from '../src/worker/rpc-client.js';
import { WorkerRpcServer } from '../src/worker/rpc-server.js';

const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 300);
const STREAM_MB = Number(process.env.BENCH_STREAM_MB ?? 256);
const WORKER_MODE = process.env.BENCH_WORKER === 'process' ? 'process' : 'in-process';
const WARMUP = 20;
const KEY = 'bench-remote-signing-key-'.padEnd(40, 'b');

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] as number;
}
const round = (n: number): number => Math.round(n * 1000) / 1000;
const stats = (samples: number[]) => {
  const s = [...samples].sort((a, b) => a - b);
  return { p50_ms: round(percentile(s, 50)), p99_ms: round(percentile(s, 99)), mean_ms: round(s.reduce((a, b) => a + b, 0) / s.length) };
};

async function drain(provider: Provider, runtimeId: string, request: ExecRequest): Promise<number> {
  let bytes = 0;
  let exit: number | undefined;
  for await (const ev of provider.execStream(runtimeId, request)) {
    if (ev.type === 'exit') exit = ev.exitCode;
    else bytes += ev.data.length;
  }
  if (exit !== 0) throw new Error(`command exited ${String(exit)}`);
  return bytes;
}

async function main(): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'stacyvm-bench-remote-'));
  const workerMock = new MockProvider({ root: join(root, 'worker') });
  const localMock = new MockProvider({ root: join(root, 'local') });
  let url: string;
  let stopWorker: () => Promise<void>;
  if (WORKER_MODE === 'process') {
    const child = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, '..', 'test', 'fixtures', 'rpc-worker.ts')], {
      env: { ...process.env, STACYVM_FIXTURE_WORKER_ID: 'bench', STACYVM_FIXTURE_SIGNING_KEY: KEY },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const [first] = (await once(child.stdout, 'data')) as [Buffer];
    url = first.toString().trim();
    stopWorker = async () => {
      child.kill('SIGTERM');
      await once(child, 'exit');
    };
  } else {
    const server = new WorkerRpcServer({
      node: new WorkerNode({ workerId: 'bench', providers: [workerMock] }),
      authenticator: new WorkerAuthenticator({ workerToken: '', workerTokens: {}, workerSigningKeys: [KEY], revokedTokenIds: [] }, systemClock),
    });
    url = await server.listen(0, '127.0.0.1');
    stopWorker = () => server.close();
  }
  const client = new RemoteWorkerClient({ workerId: 'bench', url, credential: { kind: 'signing_key', keys: [KEY] } });
  let generation = 0;
  const remote = await RemoteProvider.connect(client, 'mock', async (resourceId) => ({
    resource_id: resourceId,
    holder_id: 'bench',
    generation: ++generation,
    expires_at: toIso(Date.now() + 600_000),
  }));
  const spec = (sandboxId: string) => ({ sandboxId, image: 'host', memoryMb: 64, vcpus: 1, ownerId: null, workerId: 'bench', env: {}, labels: {} });
  const remoteRt = (await remote.spawn(spec(newSandboxId()))).runtimeId;
  const localRt = (await localMock.spawn(spec(newSandboxId()))).runtimeId;
  const ref = RemoteProvider.parseHandle(remoteRt) as { sandboxId: string; runtimeId: string };
  const trivial: ExecRequest = { command: 'true', args: [], mode: 'argv', env: {}, timeoutMs: 30_000 };

  const local: number[] = [];
  const viaStream: number[] = [];
  const viaUnary: number[] = [];
  for (let i = 0; i < WARMUP + ITERATIONS; i++) {
    const t0 = performance.now();
    await drain(localMock, localRt, trivial);
    const t1 = performance.now();
    await drain(remote, remoteRt, trivial);
    const t2 = performance.now();
    await client.call('worker.exec', { sandbox_id: ref.sandboxId, provider: 'mock', runtime_id: ref.runtimeId, command: 'true', args: [], mode: 'argv', env: {}, timeout: '30s' });
    const t3 = performance.now();
    if (i >= WARMUP) {
      local.push(t1 - t0);
      viaStream.push(t2 - t1);
      viaUnary.push(t3 - t2);
    }
  }
  const l = stats(local);
  const r = stats(viaStream);
  const u = stats(viaUnary);

  const size = STREAM_MB * 1024 * 1024;
  const big: ExecRequest = { command: `head -c ${size} /dev/zero`, args: [], mode: 'shell', env: {}, timeoutMs: 300_000 };
  /** MiB/s of `transfer`, which must move exactly `size` bytes. */
  const mibPerSecond = async (transfer: () => Promise<number>) => {
    const t0 = performance.now();
    const bytes = await transfer();
    const seconds = (performance.now() - t0) / 1000;
    if (bytes !== size) throw new Error(`expected ${size} bytes, got ${bytes}`);
    return round(bytes / 1024 / 1024 / seconds);
  };
  const throughput = (provider: Provider, rt: string) => mibPerSecond(() => drain(provider, rt, big));
  await throughput(remote, remoteRt); // warm
  const streamRemote = await throughput(remote, remoteRt);
  const streamLocal = await throughput(localMock, localRt);

  // The same amount as a file, read through worker.file_read's chunked relay and directly.
  const makeFile: ExecRequest = { command: `head -c ${size} /dev/zero > big.bin`, args: [], mode: 'shell', env: {}, timeoutMs: 300_000 };
  await drain(remote, remoteRt, makeFile);
  await drain(localMock, localRt, makeFile);
  const readThroughput = (provider: Provider, rt: string) =>
    mibPerSecond(async () => {
      let bytes = 0;
      for await (const chunk of await provider.readFile(rt, '/workspace/big.bin')) bytes += (chunk as Buffer).length;
      return bytes;
    });
  await readThroughput(remote, remoteRt); // warm
  const readRemote = await readThroughput(remote, remoteRt);
  const readLocal = await readThroughput(localMock, localRt);

  console.log(
    JSON.stringify(
      {
        iterations: ITERATIONS,
        worker: WORKER_MODE,
        exec_round_trip: {
          local_mock: l,
          remote_exec_stream: r,
          remote_exec_buffered: u,
          added_ms: { stream_p50: round(r.p50_ms - l.p50_ms), stream_p99: round(r.p99_ms - l.p99_ms), buffered_p50: round(u.p50_ms - l.p50_ms), buffered_p99: round(u.p99_ms - l.p99_ms) },
        },
        exec_stream_throughput_mib_s: { stream_mib: STREAM_MB, remote_relay: streamRemote, local_mock: streamLocal },
        file_read_throughput_mib_s: { file_mib: STREAM_MB, remote_relay: readRemote, local_mock: readLocal },
      },
      null,
      2,
    ),
  );

  await remote.destroy(remoteRt);
  await localMock.destroy(localRt);
  await client.close();
  await stopWorker();
  await workerMock.close();
  await localMock.close();
  await rm(root, { recursive: true, force: true });
}

await main();
