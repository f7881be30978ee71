/**
 * The provider contract end to end: ControlPlaneProvider → the control plane's REST API (a real
 * `stacyvm serve` process) → placement → worker RPC → a real `stacyvm worker` process → its
 * provider. Two runs: a mock worker and an oci (runc) worker. Each run shares one control plane
 * and one worker across the whole suite.
 *
 * The control plane's own worker is kept out of the way the way an operator would: it
 * advertises capacity 1 and holds one long-lived sandbox, so every contract sandbox must be
 * placed on the remote worker. The setup proves that with a probe (worker_id and the worker's
 * own inventory) and the cleanup checks that every sandbox the run spawned landed there.
 *
 * What differs from a provider by design is declared, not hidden: SANDBOX_ID is the control
 * plane's id (`sandboxIdOf`), and operations on a destroyed sandbox answer `conflict`
 * (`destroyedCodes`), see test/fixtures/control-plane-provider.ts.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'vitest';
import { defaultConfig } from '../../src/config/load.js';
import { ImageStore } from '../../src/images/store.js';
import { OciProvider } from '../../src/providers/oci/provider.js';
import { RemoteWorkerClient } from '../../src/worker/rpc-client.js';
import { providerContract, type ContractSetup } from '../contracts/provider.contract.js';
import { ControlPlaneProvider } from '../fixtures/control-plane-provider.js';
import { hasBinary, hostSupports, isRoot } from '../host.js';
import { WORKER_TOKEN, startRemoteCluster, type RemoteCluster } from './remote-harness.js';
import { CLI, call, makeDataDir, removeDir } from './server-process.js';

const run = promisify(execFile);
const built = () => (existsSync(CLI) ? null : `${CLI} is not built (npm run build)`);

interface RunOptions {
  provider: 'mock' | 'oci';
  image: string;
  workerId: string;
  /** Prepares the worker's data directory before it starts (e.g. installs an image). */
  prepareWorkerDir?: (dir: string) => Promise<void>;
  workerEnv?: Record<string, string>;
  /** Removes whatever the worker's provider still holds after the worker stopped. */
  sweepWorkerDir?: (dir: string) => Promise<void>;
}

async function runtimeIdsOn(cluster: RemoteCluster, workerId: string, provider: string): Promise<Map<string, string>> {
  const w = cluster.workers.find((x) => x.id === workerId);
  if (w === undefined) throw new Error(`no worker ${workerId}`);
  const client = new RemoteWorkerClient({ workerId, url: w.rpcUrl, credential: { kind: 'token', token: WORKER_TOKEN } });
  try {
    const inv = await client.call('worker.inventory', { provider });
    return new Map(inv.runtimes.flatMap((r) => (r.sandbox_id === undefined || r.sandbox_id === null ? [] : [[r.sandbox_id, r.runtime_id] as [string, string]])));
  } finally {
    await client.close();
  }
}

/** A control plane whose only free capacity is one remote worker, and the adapter over its API. */
async function controlPlaneSetup(o: RunOptions): Promise<ContractSetup> {
  const workerDir = await makeDataDir();
  let cluster: RemoteCluster | undefined;
  try {
    await o.prepareWorkerDir?.(workerDir);
    cluster = await startRemoteCluster({
      // Capacity 1 on the control plane's own worker; the filler below takes it.
      serverEnv: { STACYVM_WORKER_MAX_SANDBOXES: '1' },
    });
    const api = cluster.server.api;
    const filler = await call('POST', `${api}/sandboxes`, { provider: 'mock', ttl: '2h' });
    expect(filler.status, filler.text).toBe(201);
    expect(filler.body).toMatchObject({ worker_id: 'local', state: 'running' });
    await cluster.startWorker(o.workerId, { dataDir: workerDir, providers: o.provider, ...(o.workerEnv ? { env: o.workerEnv } : {}) });

    // The control plane runs only mock itself: an oci run proves it places a provider that only
    // its workers run.
    const own = ((await call('GET', `${api}/providers`)).body as { name: string }[]).map((p) => p.name);
    expect(own).toEqual(['mock']);
    const provider = await ControlPlaneProvider.connect({ api, provider: o.provider, workerId: o.workerId, ttl: '30m' });
    // The probe: placement picks the remote worker, and the runtime really is on it.
    const { runtimeId: probe } = await provider.spawn({
      sandboxId: 'sb-00000000',
      image: o.image,
      memoryMb: 128,
      vcpus: 1,
      ownerId: null,
      workerId: 'ignored',
      env: {},
      labels: {},
    });
    expect((await call('GET', `${api}/sandboxes/${probe}`)).body).toMatchObject({ id: probe, worker_id: o.workerId, provider: o.provider, state: 'running' });
    expect((await runtimeIdsOn(cluster, o.workerId, o.provider)).has(probe)).toBe(true);
    await provider.destroy(probe);
    expect((await runtimeIdsOn(cluster, o.workerId, o.provider)).has(probe)).toBe(false);

    const c = cluster;
    return {
      provider,
      image: o.image,
      sandboxIdOf: (_spec, runtimeId) => runtimeId,
      destroyedCodes: ['conflict'],
      cleanup: async () => {
        try {
          const elsewhere = [...provider.placements].filter(([, w]) => w !== o.workerId);
          expect(elsewhere, 'sandboxes placed off the remote worker').toEqual([]);
          expect(provider.placements.size).toBeGreaterThan(1);
          // Nothing the run spawned outlives it on the worker (the suite destroys through the API).
          const left = [...(await runtimeIdsOn(c, o.workerId, o.provider)).keys()].filter((id) => provider.placements.has(id));
          expect(left).toEqual([]);
        } finally {
          await c.stop();
          await o.sweepWorkerDir?.(workerDir);
          await removeDir(workerDir);
        }
      },
    };
  } catch (err) {
    await cluster?.stop();
    await o.sweepWorkerDir?.(workerDir).catch(() => undefined);
    await removeDir(workerDir);
    throw err;
  }
}

function cliEnv(dataDir: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('STACYVM_')) env[k] = v;
  return { ...env, STACYVM_DATA_DIR: dataDir };
}

providerContract(
  'mock',
  () => controlPlaneSetup({ provider: 'mock', image: 'host', workerId: 'cpc-mock' }),
  { skip: !hostSupports('control-plane provider contract (mock)', built), testTimeoutMs: 90_000 },
);

providerContract(
  'oci',
  () =>
    controlPlaneSetup({
      provider: 'oci',
      image: 'busybox',
      workerId: 'cpc-oci',
      workerEnv: { STACYVM_PROVIDERS_OCI_ENABLED: 'true' },
      prepareWorkerDir: async (dir) => {
        await run(process.execPath, [CLI, 'image', 'build-busybox', 'busybox'], { env: cliEnv(dir), timeout: 60_000 });
      },
      sweepWorkerDir: async (dir) => {
        // A worker that died mid-run leaves containers behind: remove them with the worker's own state root.
        const oci = new OciProvider({ config: { ...defaultConfig().providers.oci, root: join(dir, 'oci') }, images: new ImageStore(join(dir, 'images')) });
        for (const rt of await oci.inventory().catch(() => [])) await oci.destroy(rt.runtimeId).catch(() => undefined);
      },
    }),
  {
    skip: !hostSupports('control-plane provider contract (oci)', built, isRoot, hasBinary('runc'), hasBinary('busybox'), hasBinary('mount')),
    testTimeoutMs: 120_000,
  },
);
