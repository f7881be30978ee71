/**
 * The control plane killed with -9 while a remote worker runs its sandboxes, one exec is in
 * flight and one spawn is waiting on the worker. After a restart on the same store and address:
 * the running sandbox keeps working, the in-flight command was stopped on the worker, and the
 * interrupted spawn is settled (its record finished, the runtime the worker made anyway
 * removed, its lease released) instead of staying `creating` until its TTL.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RemoteWorkerClient } from '../../src/worker/rpc-client.js';
import { hostSupports } from '../host.js';
import { WORKER_TOKEN, startRemoteCluster, until, type RemoteCluster } from './remote-harness.js';
import { CLI, call, startServerProcess, type ServerProcess } from './server-process.js';

const built = () => (existsSync(CLI) ? null : `${CLI} is not built (npm run build)`);

interface Sandbox {
  id: string;
  state: string;
  worker_id?: string;
  state_reason?: string;
}

/** Whether a host process's command line contains `marker` (mock sandboxes run as host processes). */
function running(marker: string): boolean {
  try {
    return execFileSync('pgrep', ['-f', marker], { encoding: 'utf8' }).trim() !== '';
  } catch {
    return false;
  }
}

const SERVER_ENV = { STACYVM_WORKER_MAX_SANDBOXES: '1', STACYVM_RECONCILE_REAP_INTERVAL: '500ms' };

describe.skipIf(!hostSupports('control plane restart with remote workers', built))('the control plane killed with -9 and restarted', { timeout: 180_000 }, () => {
  let cluster: RemoteCluster;
  let restarted: ServerProcess | undefined;
  let client: RemoteWorkerClient;
  beforeAll(async () => {
    cluster = await startRemoteCluster({ workers: ['rw1'], serverEnv: SERVER_ENV });
    const w = cluster.workers[0];
    if (w === undefined) throw new Error('no worker');
    client = new RemoteWorkerClient({ workerId: 'rw1', url: w.rpcUrl, credential: { kind: 'token', token: WORKER_TOKEN } });
  });
  afterAll(async () => {
    const w = cluster?.workers[0];
    if (w !== undefined && w.proc.exitCode === null) w.proc.kill('SIGCONT');
    await client?.close();
    await restarted?.stop();
    await cluster?.stop();
  });

  it('keeps remote sandboxes usable and settles the spawn it was waiting on', async () => {
    const api = cluster.server.api;
    const worker = cluster.workers[0];
    if (worker === undefined) throw new Error('no worker');
    const filler = (await call('POST', `${api}/sandboxes`, { provider: 'mock' })).body as Sandbox;
    expect(filler.worker_id).toBe('local');
    const kept = (await call('POST', `${api}/sandboxes`, { provider: 'mock', ttl: '30m' })).body as Sandbox;
    expect(kept.worker_id).toBe('rw1');

    // A command in flight when the control plane dies.
    const marker = `sleep 41.${process.pid % 1000}`;
    void call('POST', `${api}/sandboxes/${kept.id}/exec`, { command: marker }).catch(() => undefined);
    await until('the command to start on the worker', async () => running(marker));

    // A spawn waiting on the worker: the worker is stopped, so the request sits in its socket.
    worker.proc.kill('SIGSTOP');
    void call('POST', `${api}/sandboxes`, { provider: 'mock', ttl: '30m' }).catch(() => undefined);
    let pending: Sandbox | undefined;
    await until('the interrupted spawn to be recorded', async () => {
      pending = ((await call('GET', `${api}/sandboxes`)).body as Sandbox[]).find((s) => s.state === 'creating');
      return pending !== undefined;
    });
    if (pending === undefined) throw new Error('unreachable');

    const port = new URL(cluster.server.url).port;
    await cluster.server.kill9();
    // The worker wakes up, makes the runtime the dead control plane asked for, and its reply is lost.
    worker.proc.kill('SIGCONT');
    await until('the worker to run the lost spawn', async () => {
      const { runtimes } = await client.call('worker.inventory', { provider: 'mock' });
      return runtimes.some((r) => r.sandbox_id === pending?.id);
    });

    restarted = await startServerProcess({
      dataDir: cluster.server.dataDir,
      env: { STACYVM_AUTH_WORKER_TOKEN: WORKER_TOKEN, STACYVM_WORKER_HEARTBEAT_INTERVAL: '500ms', STACYVM_WORKERS_STALE_AFTER: '3s', ...SERVER_ENV, STACYVM_SERVER_PORT: port },
    });
    const api2 = restarted.api;

    // The in-flight command died with the connection that carried it.
    await until('the in-flight command to be stopped', async () => !running(marker));

    // The interrupted spawn is finished, its runtime removed from the worker, its lease released.
    await until('the interrupted spawn to be settled', async () => {
      const s = (await call('GET', `${api2}/sandboxes/${pending?.id}`)).body as Sandbox;
      return s.state !== 'creating';
    });
    const settled = (await call('GET', `${api2}/sandboxes/${pending.id}`)).body as Sandbox;
    expect(['destroyed', 'error']).toContain(settled.state);
    expect(settled.state_reason).toMatch(/interrupted/);
    await until('the lost runtime to be removed from the worker', async () => {
      const { runtimes } = await client.call('worker.inventory', { provider: 'mock' });
      return !runtimes.some((r) => r.sandbox_id === pending?.id);
    });
    // The lease that destroy took is released once the worker's reply is in: only the kept
    // sandbox's lease stays.
    const leasesOfWorker = async () => ((await call('GET', `${api2}/admin/diagnostics`)).body as { leases: { by_holder: Record<string, number> } }).leases.by_holder.rw1 ?? 0;
    await until("every lease but the kept sandbox's to be released", async () => (await leasesOfWorker()) === 1);

    // The sandbox that was running keeps running and working on its worker.
    const again = (await call('GET', `${api2}/sandboxes/${kept.id}`)).body as Sandbox;
    expect(again).toMatchObject({ state: 'running', worker_id: 'rw1' });
    const exec = await call('POST', `${api2}/sandboxes/${kept.id}/exec`, { command: 'echo still-here' });
    expect(exec.body).toMatchObject({ exit_code: 0, stdout: 'still-here\n' });
    expect((await call('DELETE', `${api2}/sandboxes/${kept.id}`)).body).toEqual({ status: 'destroyed' });
    const { runtimes } = await client.call('worker.inventory', { provider: 'mock' });
    expect(runtimes.map((r) => r.sandbox_id)).toEqual([]);
    await call('DELETE', `${api2}/sandboxes/${filler.id}`);
  });
});
