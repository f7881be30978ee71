/**
 * A worker as its own process (`stacyvm worker`, through the same command registration the CLI
 * uses): the provider contract runs through RemoteProvider against it, and a worker killed with
 * SIGKILL in the middle of an exec gives the caller a 503 instead of a hang.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StacyError } from '../../src/core/errors.js';
import { newSandboxId } from '../../src/core/ids.js';
import type { WorkerAuthSettings } from '../../src/workerproto/index.js';
import { RemoteProvider, RemoteWorkerClient } from '../../src/worker/rpc-client.js';
import { providerContract } from '../contracts/provider.contract.js';
import { TestLeases, startControlPlane } from './worker-harness.js';
import { CLI } from './server-process.js';

const TOKEN = 'process-worker-token';

interface WorkerProcess {
  child: ChildProcess;
  rpcUrl: string;
  stop: () => Promise<void>;
}

/** Starts `stacyvm worker` as a child process and waits until it has registered its rpc_url. */
async function startWorkerProcess(workerId: string): Promise<WorkerProcess> {
  const auth: WorkerAuthSettings = { workerToken: '', workerTokens: { [workerId]: TOKEN }, workerSigningKeys: [], revokedTokenIds: [] };
  const cp = await startControlPlane(auth);
  const dir = await mkdtemp(join(tmpdir(), 'stacyvm-worker-proc-'));
  const config = join(dir, 'stacyvm.yaml');
  await writeFile(config, `data_dir: ${join(dir, 'data')}\nlogging:\n  level: warn\n`);
  const child = spawn(
    process.execPath,
    [CLI, 'worker', '--id', workerId, '--control-plane', cp.url, '--worker-token', TOKEN, '--listen', '127.0.0.1:0', '--providers', 'mock', '--config', config],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const deadline = Date.now() + 30_000;
  let rpcUrl: string | undefined;
  while (rpcUrl === undefined) {
    if (Date.now() > deadline || child.exitCode !== null) {
      child.kill('SIGKILL');
      throw new Error(`worker process did not register: ${stderr}`);
    }
    rpcUrl = (cp.beats.at(-1)?.body.capacity as { rpc_url?: string } | undefined)?.rpc_url;
    await new Promise((r) => setTimeout(r, 25));
  }
  return {
    child,
    rpcUrl,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
      await cp.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

providerContract('mock', async () => {
  const worker = await startWorkerProcess('wp1');
  const client = new RemoteWorkerClient({ workerId: 'wp1', url: worker.rpcUrl, credential: { kind: 'token', token: TOKEN } });
  const provider = await RemoteProvider.connect(client, 'mock', new TestLeases('wp1').supplier);
  return {
    provider,
    image: 'host',
    cleanup: async () => {
      await client.close();
      await worker.stop();
    },
  };
});

describe('a worker process that dies', { timeout: 60_000 }, () => {
  let worker: WorkerProcess;
  let client: RemoteWorkerClient;
  beforeAll(async () => {
    worker = await startWorkerProcess('wp2');
    client = new RemoteWorkerClient({ workerId: 'wp2', url: worker.rpcUrl, credential: { kind: 'token', token: TOKEN }, requestTimeoutMs: 5_000 });
  });
  afterAll(async () => {
    await client.close();
    await worker.stop();
  });

  it('kill -9 mid-exec ends the stream with remote_worker_rpc_unavailable, and later calls fail fast', async () => {
    const provider = await RemoteProvider.connect(client, 'mock', new TestLeases('wp2').supplier);
    const { runtimeId } = await provider.spawn({ sandboxId: newSandboxId(), image: 'host', memoryMb: 64, vcpus: 1, ownerId: null, workerId: 'wp2', env: {}, labels: {} });
    const seen: string[] = [];
    let error: unknown;
    try {
      for await (const ev of provider.execStream(runtimeId, { command: 'echo started; sleep 30', args: [], mode: 'shell', env: {}, timeoutMs: 60_000 })) {
        seen.push(ev.type);
        if (ev.type === 'stdout') worker.child.kill('SIGKILL');
      }
    } catch (err) {
      error = err;
    }
    expect(seen).toEqual(['stdout']);
    expect(error).toBeInstanceOf(StacyError);
    expect((error as StacyError).code).toBe('remote_worker_rpc_unavailable');
    const after = await provider.status(runtimeId).catch((e: unknown) => e);
    expect((after as StacyError).code).toBe('remote_worker_rpc_unavailable');
    expect((await provider.health()).healthy).toBe(false);
  });
});
