import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { toIso } from '../../src/core/clock.js';
import { StacyError } from '../../src/core/errors.js';
import { newSandboxId } from '../../src/core/ids.js';
import { MockProvider } from '../../src/providers/mock/mock-provider.js';
import type { WorkerAuthSettings } from '../../src/workerproto/index.js';
import { startControlPlane } from './worker-harness.js';
import { WorkerDaemon } from '../../src/worker/daemon.js';
import { RemoteWorkerClient } from '../../src/worker/rpc-client.js';

const KEY = 'daemon-test-key-'.padEnd(40, 'z');

const auth: WorkerAuthSettings = { workerToken: '', workerTokens: { w1: 'w1-static' }, workerSigningKeys: [KEY], revokedTokenIds: [] };

describe('stacyvm worker daemon', () => {
  let root: string;
  let provider: MockProvider;
  let cp: Awaited<ReturnType<typeof startControlPlane>>;
  const daemons: WorkerDaemon[] = [];

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'stacyvm-daemon-'));
    provider = new MockProvider({ root: join(root, 'mock') });
    cp = await startControlPlane(auth);
  });
  afterEach(async () => {
    for (const d of daemons.splice(0)) await d.stop();
    await cp.close();
    await provider.close();
    await rm(root, { recursive: true, force: true });
  });

  const daemon = (overrides: Partial<ConstructorParameters<typeof WorkerDaemon>[0]> = {}) => {
    const d = new WorkerDaemon({
      workerId: 'w1',
      controlPlaneUrl: cp.url,
      credential: { kind: 'signing_key', keys: [KEY] },
      rpcAuth: auth,
      providers: [provider],
      heartbeatIntervalMs: 60_000,
      capacity: { maxSandboxes: 7, maxSandboxesPerOwner: 3, previewDomain: 'preview.test' },
      hostname: 'worker-host',
      ...overrides,
    });
    daemons.push(d);
    return d;
  };

  it('one heartbeat carries the snake_case document with a control-plane credential', async () => {
    await daemon({ advertiseUrl: 'http://10.1.2.3:7424' }).heartbeatOnce();
    expect(cp.beats).toHaveLength(1);
    expect(cp.beats[0]).toMatchObject({
      workerId: 'w1',
      credential: 'signed',
      body: {
        hostname: 'worker-host',
        status: 'online',
        providers: ['mock'],
        capacity: { max_sandboxes: 7, max_sandboxes_per_owner: 3, rpc_url: 'http://10.1.2.3:7424', preview_domain: 'preview.test' },
      },
    });
    expect(cp.beats[0]?.body.capabilities).toContain('isolation:mock:none');
  });

  it('re-reads the token file on every heartbeat', async () => {
    const file = join(root, 'token');
    await writeFile(file, 'w1-static\n');
    const d = daemon({ credential: { kind: 'token_file', path: file } });
    await d.heartbeatOnce();
    await writeFile(file, 'rotated-elsewhere\n');
    const err = await d.heartbeatOnce().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StacyError);
    expect((err as StacyError).code).toBe('unauthorized');
    await writeFile(file, 'w1-static');
    await d.heartbeatOnce();
    expect(cp.beats.map((b) => b.credential)).toEqual(['per_worker', 'per_worker']);
  });

  it('start fails when the control plane refuses the credential', async () => {
    const d = daemon({ credential: { kind: 'token', token: 'wrong' }, listen: { host: '127.0.0.1', port: 0 } });
    await expect(d.start()).rejects.toMatchObject({ code: 'unauthorized' });
  });

  it('an unreachable control plane is a typed error, not a hang', async () => {
    const d = daemon({ controlPlaneUrl: 'http://127.0.0.1:1', heartbeatTimeoutMs: 1000 });
    await expect(d.heartbeatOnce()).rejects.toMatchObject({ code: 'unavailable' });
  });

  it('serves RPC on its listener, advertises it, and reports draining at once after worker.shutdown', async () => {
    const d = daemon({ listen: { host: '127.0.0.1', port: 0 } });
    await d.start();
    const url = d.rpcUrl as string;
    expect(cp.beats.at(-1)?.body).toMatchObject({ status: 'online', capacity: { rpc_url: url } });
    const client = new RemoteWorkerClient({ workerId: 'w1', url, credential: { kind: 'signing_key', keys: [KEY] } });
    try {
      const sb = newSandboxId();
      const lease = { resource_id: sb, holder_id: 'w1', generation: 1, expires_at: toIso(Date.now() + 60_000) };
      const { runtime_id } = await client.spawn({ sandbox_id: sb, provider: 'mock', image: 'host', memory_mb: 64, vcpus: 1, owner_id: null, env: {}, labels: {} }, lease);
      await client.shutdown();
      await waitFor(() => cp.beats.some((b) => b.body.status === 'draining'));
      const other = newSandboxId();
      await expect(
        client.spawn({ sandbox_id: other, provider: 'mock', image: 'host', memory_mb: 64, vcpus: 1, owner_id: null, env: {}, labels: {} }, { ...lease, resource_id: other }),
      ).rejects.toMatchObject({ code: 'unavailable' });
      expect((await client.call('worker.status', { sandbox_id: sb, provider: 'mock', runtime_id })).status).toBe('running');
    } finally {
      await client.close();
    }
    await d.stop();
    expect(cp.beats.at(-1)?.body.status).toBe('offline');
  });

  it('a restarted worker still serves the sandboxes its providers run', async () => {
    const first = daemon({ listen: { host: '127.0.0.1', port: 0 } });
    await first.start();
    const c1 = new RemoteWorkerClient({ workerId: 'w1', url: first.rpcUrl as string, credential: { kind: 'token', token: 'w1-static' } });
    const sb = newSandboxId();
    const { runtime_id } = await c1.spawn(
      { sandbox_id: sb, provider: 'mock', image: 'host', memory_mb: 64, vcpus: 1, owner_id: null, env: {}, labels: {} },
      { resource_id: sb, holder_id: 'w1', generation: 1, expires_at: toIso(Date.now() + 60_000) },
    );
    await c1.close();
    await first.stop();
    const second = daemon({ listen: { host: '127.0.0.1', port: 0 } });
    await second.start();
    const c2 = new RemoteWorkerClient({ workerId: 'w1', url: second.rpcUrl as string, credential: { kind: 'token', token: 'w1-static' } });
    try {
      // The restarted worker knows the runtime belongs to `sb`, so another sandbox id cannot reach it.
      expect((await c2.call('worker.status', { sandbox_id: sb, provider: 'mock', runtime_id })).status).toBe('running');
      expect((await c2.call('worker.status', { sandbox_id: newSandboxId(), provider: 'mock', runtime_id })).status).toBe('missing');
    } finally {
      await c2.close();
    }
  });
});

async function waitFor(cond: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
