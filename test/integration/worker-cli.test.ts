/**
 * The worker commands as a real process (tsx running the same registration src/cli/main.ts
 * uses): token issue/inspect/verify, `worker --once`, and a long-running worker that drains on
 * SIGTERM and reports offline on the second.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WorkerAuthSettings } from '../../src/workerproto/index.js';
import { RemoteWorkerClient } from '../../src/worker/rpc-client.js';
import { startControlPlane } from './worker-harness.js';
import { CLI } from './server-process.js';

const KEY = 'cli-test-signing-key-'.padEnd(40, 'k');

/** Runs the CLI without blocking this process, whose event loop serves the control plane stand-in. */
function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 }, (err, stdout, stderr) => {
      if (err !== null && typeof err.code !== 'number') reject(err);
      else resolve({ code: err === null ? 0 : (err.code as number), stdout, stderr });
    });
  });
}

describe('stacyvm worker CLI', { timeout: 120_000 }, () => {
  let dir: string;
  let config: string;
  let cp: Awaited<ReturnType<typeof startControlPlane>>;
  const auth: WorkerAuthSettings = { workerToken: '', workerTokens: { w1: 'w1-cli-token' }, workerSigningKeys: [KEY], revokedTokenIds: [] };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'stacyvm-worker-cli-'));
    config = join(dir, 'stacyvm.yaml');
    await writeFile(config, `data_dir: ${join(dir, 'data')}\nlogging:\n  level: warn\nauth:\n  worker_signing_keys: ["${KEY}"]\n  revoked_token_ids: ["revoked-one"]\n`);
    cp = await startControlPlane(auth);
  });
  afterAll(async () => {
    await cp.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('token issue, inspect and verify', async () => {
    const issued = await cli(['worker', 'token', 'issue', '--worker-id', 'w1', '--audience', 'rpc', '--scopes', 'worker:exec,worker:status', '--ttl', '5m', '--config', config]);
    expect(issued.stderr).toBe('');
    expect(issued.code).toBe(0);
    const token = issued.stdout.trim();
    const inspected = JSON.parse((await cli(['worker', 'token', 'inspect', token])).stdout) as Record<string, unknown>;
    expect(inspected).toMatchObject({ worker_id: 'w1', aud: 'worker:rpc', scopes: ['worker:exec', 'worker:status'] });
    expect((inspected.exp as number) - (inspected.iat as number)).toBe(300);
    const ok = await cli(['worker', 'token', 'verify', token, '--audience', 'rpc', '--worker-id', 'w1', '--config', config]);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/^valid/);
    const wrongAud = await cli(['worker', 'token', 'verify', token, '--audience', 'control-plane', '--config', config]);
    expect(wrongAud.code).toBe(1);
    expect(wrongAud.stderr).toMatch(/refused \(forbidden\)/);
    const tampered = await cli(['worker', 'token', 'verify', `${token.slice(0, -1)}${token.endsWith('A') ? 'B' : 'A'}`, '--audience', 'rpc', '--config', config]);
    expect(tampered.code).toBe(1);
    expect(tampered.stderr).toMatch(/refused \(unauthorized\)/);
    const tooLong = await cli(['worker', 'token', 'issue', '--worker-id', 'w1', '--ttl', '1h', '--config', config]);
    expect(tooLong.code).not.toBe(0);
  });

  it('worker --once sends one heartbeat and exits', async () => {
    const before = cp.beats.length;
    const r = await cli(['worker', '--once', '--id', 'w1', '--control-plane', cp.url, '--worker-token', 'w1-cli-token', '--providers', 'mock', '--config', config]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(cp.beats.length).toBe(before + 1);
    expect(cp.beats.at(-1)).toMatchObject({ workerId: 'w1', credential: 'per_worker', body: { status: 'online', providers: ['mock'] } });
  });

  it('worker --once with --sign mints a control-plane token', async () => {
    const r = await cli(['worker', '--once', '--id', 'w1', '--control-plane', cp.url, '--sign', '--providers', 'mock', '--config', config]);
    expect(r.code).toBe(0);
    expect(cp.beats.at(-1)?.credential).toBe('signed');
  });

  it('a running worker serves RPC, drains on SIGTERM and reports offline on the second', async () => {
    const tokenFile = join(dir, 'token');
    await writeFile(tokenFile, 'w1-cli-token\n');
    const before = cp.beats.length;
    const child: ChildProcess = spawn(
      process.execPath,
      [CLI, 'worker', '--id', 'w1', '--control-plane', cp.url, '--worker-token-file', tokenFile, '--listen', '127.0.0.1:0', '--heartbeat-interval', '300ms', '--max-sandboxes', '9', '--providers', 'mock', '--config', config],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      await waitFor(() => cp.beats.length >= before + 2, 30_000, () => stderr, child);
      const beat = cp.beats.at(-1)?.body as { status: string; capacity: { rpc_url: string; max_sandboxes: number } };
      expect(beat).toMatchObject({ status: 'online', capacity: { max_sandboxes: 9 } });
      const client = new RemoteWorkerClient({ workerId: 'w1', url: beat.capacity.rpc_url, credential: { kind: 'token_file', path: tokenFile } });
      try {
        expect((await client.heartbeat()).status).toBe('online');
        child.kill('SIGTERM');
        await waitFor(() => cp.beats.some((b, i) => i >= before && b.body.status === 'draining'), 10_000, () => stderr, child);
        expect((await client.heartbeat()).status).toBe('draining');
      } finally {
        await client.close();
      }
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(cp.beats.at(-1)?.body.status).toBe('offline');
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});

async function waitFor(cond: () => boolean, timeoutMs: number, context: () => string, child?: ChildProcess): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline || (child !== undefined && child.exitCode !== null)) throw new Error(`condition not met in time; process stderr: ${context()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
