/** The remote harness itself: two worker processes register with a real control plane and go away cleanly. */
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hostSupports } from '../host.js';
import { startRemoteCluster, type RemoteCluster } from './remote-harness.js';
import { CLI, call } from './server-process.js';

const built = () => (existsSync(CLI) ? null : `${CLI} is not built (npm run build)`);

describe.skipIf(!hostSupports('remote harness', built))('remote harness', { timeout: 120_000 }, () => {
  let cluster: RemoteCluster;
  beforeAll(async () => {
    cluster = await startRemoteCluster({ workers: ['hw1', 'hw2'] });
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  it('lists both workers online with their own rpc_url and separate data dirs', async () => {
    const [a, b] = cluster.workers;
    expect(a?.dataDir).not.toBe(b?.dataDir);
    for (const w of cluster.workers) {
      const res = await call('GET', `${cluster.server.api}/workers/${w.id}`);
      expect(res.body).toMatchObject({ id: w.id, status: 'online', providers: ['mock'], capacity: { rpc_url: w.rpcUrl } });
    }
  });

  it('a stopped worker reports offline and its process is gone', async () => {
    const w = cluster.workers[1];
    if (w === undefined) throw new Error('no second worker');
    await w.stop();
    expect(w.proc.exitCode).toBe(0);
    expect((await call('GET', `${cluster.server.api}/workers/${w.id}`)).body).toMatchObject({ status: 'offline' });
  });
});
