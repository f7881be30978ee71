/**
 * `stacyvm worker` against a real `stacyvm serve` (built CLI, as CI runs it): the worker's
 * heartbeat is accepted with a per-worker token and shows up in the API's worker registry with
 * its rpc_url and capabilities; SIGTERM makes it `draining` there, a second SIGTERM `offline`;
 * a wrong token is refused by the server.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hostSupports } from '../host.js';
import { CLI, call, makeDataDir, startServerProcess, type ServerProcess } from './server-process.js';

const TOKEN = 'control-plane-test-worker-token';

function worker(args: string[], dataDir: string): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'worker', ...args], { env: workerEnv(dataDir), timeout: 60_000 }, (err, _out, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, stderr });
    });
  });
}

function workerEnv(dataDir: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('STACYVM_')) env[k] = v;
  // Only the mock provider: probing others would only slow the start on a loaded machine.
  return {
    ...env,
    STACYVM_DATA_DIR: dataDir,
    STACYVM_LOGGING_LEVEL: 'error',
    STACYVM_PROVIDERS_DEFAULT: 'mock',
    STACYVM_PROVIDERS_OCI_ENABLED: 'false',
    STACYVM_PROVIDERS_DOCKER_ENABLED: 'false',
  };
}

const built = () => (existsSync(CLI) ? null : `${CLI} is not built (npm run build)`);

describe.skipIf(!hostSupports('worker against a real control plane', built))('worker against a real control plane', { timeout: 120_000 }, () => {
  let server: ServerProcess;
  let workerData: string;

  beforeAll(async () => {
    server = await startServerProcess({ env: { STACYVM_AUTH_WORKER_TOKENS: `wcp=${TOKEN}` } });
    workerData = await makeDataDir();
  });
  afterAll(async () => {
    if (server !== undefined) {
      await server.stop();
      await rm(server.dataDir, { recursive: true, force: true });
    }
    if (workerData !== undefined) await rm(workerData, { recursive: true, force: true });
  });

  it('registers by heartbeat, drains on SIGTERM and goes offline on the second', async () => {
    const once = await worker(['--once', '--id', 'wcp', '--control-plane', server.url, '--worker-token', TOKEN, '--providers', 'mock', '--advertise-url', 'http://127.0.0.9:7424'], workerData);
    expect(once.stderr).toBe('');
    expect(once.code).toBe(0);
    const registered = await call('GET', `${server.api}/workers/wcp`);
    expect(registered.status).toBe(200);
    expect(registered.body).toMatchObject({ id: 'wcp', status: 'online', providers: ['mock'], capacity: { rpc_url: 'http://127.0.0.9:7424' } });
    expect((registered.body as { capabilities: string[] }).capabilities).toContain('isolation:mock:none');

    const refused = await worker(['--once', '--id', 'wcp', '--control-plane', server.url, '--worker-token', 'wrong', '--providers', 'mock'], workerData);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^error: unauthorized: /);

    const proc = spawn(
      process.execPath,
      [CLI, 'worker', '--id', 'wcp', '--control-plane', server.url, '--worker-token', TOKEN, '--providers', 'mock', '--listen', '127.0.0.1:0', '--heartbeat-interval', '500ms'],
      { env: workerEnv(workerData), stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
    // A worker that exits early fails the wait at once, with what it printed.
    const alive = () => {
      if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`worker exited (${proc.exitCode ?? proc.signalCode}): ${stderr}`);
    };
    try {
      const status = async () => ((await call('GET', `${server.api}/workers/wcp`)).body as { status: string; capacity: { rpc_url?: string } });
      await until(async () => {
        alive();
        return (await status()).capacity.rpc_url?.startsWith('http://127.0.0.1:') === true;
      });
      proc.kill('SIGTERM');
      await until(async () => {
        alive();
        return (await status()).status === 'draining';
      });
      proc.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect((await status()).status).toBe('offline');
    } finally {
      if (proc.exitCode === null) proc.kill('SIGKILL');
    }
  });
});

async function until(cond: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}
