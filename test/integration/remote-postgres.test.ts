/**
 * The multi-host deployment as shipped: `stacyvm serve` on PostgreSQL (a scratch database on the
 * server at STACYVM_TEST_PG_DSN) with two `stacyvm worker` processes. Placement spreads sandboxes
 * over both, every operation reaches the owner, the store survives a `kill -9` of the control
 * plane (a new process on the same database and address picks up where it stopped), and the
 * database password never shows in diagnostics.
 */
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RemoteWorkerClient } from '../../src/worker/rpc-client.js';
import { createScratchDatabase, type ScratchDatabase } from '../fixtures/pg-scratch.js';
import { hostSupports } from '../host.js';
import { WORKER_TOKEN, startRemoteCluster, until, type RemoteCluster } from './remote-harness.js';
import { CLI, call, startServerProcess, type ServerProcess } from './server-process.js';

interface Sandbox {
  id: string;
  state: string;
  worker_id?: string;
}

const pgDsn = process.env.STACYVM_TEST_PG_DSN;
const runs = hostSupports(
  'control plane on postgres with remote workers',
  () => (existsSync(CLI) ? null : `${CLI} is not built (npm run build)`),
  () => (pgDsn ? null : 'STACYVM_TEST_PG_DSN is not set (eval "$(scripts/test-services.sh postgres)")'),
);

/** The DSN with a password the trust-auth test server ignores, so leaks of it can be looked for. */
function withPassword(dsn: string, password: string): string {
  const url = new URL(dsn);
  url.password = password;
  return url.toString();
}

describe.runIf(runs)('a control plane on PostgreSQL with two worker processes', { timeout: 180_000 }, () => {
  const password = `pw-${process.pid}-never-shown`;
  let scratch: ScratchDatabase;
  let serverEnv: Record<string, string>;
  let cluster: RemoteCluster;
  let restarted: ServerProcess | undefined;

  beforeAll(async () => {
    scratch = await createScratchDatabase(pgDsn as string, 'stacyvm_remote');
    serverEnv = {
      STACYVM_DATABASE_DRIVER: 'postgres',
      STACYVM_DATABASE_DSN: withPassword(scratch.dsn, password),
      STACYVM_WORKER_MAX_SANDBOXES: '1',
      STACYVM_RECONCILE_REAP_INTERVAL: '500ms',
    };
    cluster = await startRemoteCluster({ workers: ['pg1', 'pg2'], serverEnv });
  });
  afterAll(async () => {
    await restarted?.stop();
    await cluster?.stop();
    await scratch?.drop();
  });

  it('places, serves and survives a kill -9 of the control plane with the state in PostgreSQL', async () => {
    const api = cluster.server.api;
    const filler = (await call('POST', `${api}/sandboxes`, { provider: 'mock', ttl: '30m' })).body as Sandbox;
    expect(filler.worker_id).toBe('local');
    const made: Sandbox[] = [];
    for (let i = 0; i < 6; i += 1) {
      const res = await call('POST', `${api}/sandboxes`, { provider: 'mock', ttl: '30m' });
      expect(res.status).toBe(201);
      made.push(res.body as Sandbox);
    }
    const byWorker = (list: Sandbox[]) => list.reduce<Record<string, number>>((acc, s) => ({ ...acc, [s.worker_id ?? '?']: (acc[s.worker_id ?? '?'] ?? 0) + 1 }), {});
    expect(byWorker(made)).toEqual({ pg1: 3, pg2: 3 });
    for (const s of made) {
      const exec = await call('POST', `${api}/sandboxes/${s.id}/exec`, { command: `echo ${s.id}` });
      expect(exec.body).toMatchObject({ exit_code: 0, stdout: `${s.id}\n` });
    }
    const first = made[0] as Sandbox;
    expect((await call('POST', `${api}/sandboxes/${first.id}/files`, { path: '/workspace/kept.txt', content: 'in postgres' })).status).toBe(200);

    const diagnostics = await call('GET', `${api}/admin/diagnostics`);
    expect(diagnostics.status).toBe(200);
    expect(diagnostics.text).not.toContain(password);
    expect((diagnostics.body as { leases: { by_holder: Record<string, number> } }).leases.by_holder).toMatchObject({ local: 1, pg1: 3, pg2: 3 });

    const port = new URL(cluster.server.url).port;
    await cluster.server.kill9();
    restarted = await startServerProcess({
      dataDir: cluster.server.dataDir,
      env: { STACYVM_AUTH_WORKER_TOKEN: WORKER_TOKEN, STACYVM_WORKER_HEARTBEAT_INTERVAL: '500ms', STACYVM_WORKERS_STALE_AFTER: '3s', ...serverEnv, STACYVM_SERVER_PORT: port },
    });
    const api2 = restarted.api;
    const listed = (await call('GET', `${api2}/sandboxes`)).body as Sandbox[];
    expect(listed.map((s) => s.id).sort()).toEqual([filler.id, ...made.map((s) => s.id)].sort());
    for (const s of listed) expect(s.state).toBe('running');
    expect((await call('GET', `${api2}/sandboxes/${first.id}/files?path=/workspace/kept.txt`)).text).toBe('in postgres');
    await until('both workers to heartbeat to the new process', async () => {
      const workers = (await call('GET', `${api2}/workers`)).body as Array<{ id: string; stale: boolean }>;
      return ['pg1', 'pg2'].every((id) => workers.some((w) => w.id === id && !w.stale));
    });

    for (const s of [...made, filler]) expect((await call('DELETE', `${api2}/sandboxes/${s.id}`)).body).toEqual({ status: 'destroyed' });
    for (const w of cluster.workers) {
      const client = new RemoteWorkerClient({ workerId: w.id, url: w.rpcUrl, credential: { kind: 'token', token: WORKER_TOKEN } });
      try {
        expect((await client.call('worker.inventory', { provider: 'mock' })).runtimes).toEqual([]);
      } finally {
        await client.close();
      }
    }
    const after = (await call('GET', `${api2}/admin/diagnostics`)).body as { leases: { by_holder: Record<string, number> } };
    expect(after.leases.by_holder).toEqual({});
  });
});
