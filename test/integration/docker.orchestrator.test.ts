/**
 * The orchestrator driving the docker provider on a real dockerd: the client flow (spawn,
 * exec, files, destroy) with `providers.default: docker`, and start-up reconciliation adopting
 * or removing containers that outlived a server restart.
 */
import { randomBytes } from 'node:crypto';
import { text } from 'node:stream/consumers';
import type Docker from 'dockerode';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DockerProvider } from '../../src/providers/docker/index.js';
import { TEST_IMAGE, busyboxStaticProbe, dockerSocketProbe, readyTestDocker, testDockerConfig, testSpawnSpec } from '../fixtures/docker.js';
import { hostSupports } from '../host.js';
import { anon, harness, leaseHolder, type Harness } from '../unit/orchestrator/harness.js';

const supported = hostSupports('docker orchestrator', dockerSocketProbe, busyboxStaticProbe);

describe.skipIf(!supported)('orchestrator on the docker provider (real dockerd)', () => {
  let docker: Docker;
  let provider: DockerProvider;
  let h: Harness | undefined;
  // Other suites share the daemon: reconciliation here must only ever see this file's
  // containers, so its worker ids are unique to the run.
  const workerId = `docker-orch-${randomBytes(4).toString('hex')}`;
  const otherWorker = `${workerId}-other`;
  
  beforeAll(async () => {
    docker = await readyTestDocker();
  });

  const start = async (reconcile: 'adopt' | 'destroy' = 'adopt'): Promise<Harness> => {
    provider = new DockerProvider({ config: testDockerConfig() });
    h = await harness({
      providers: [provider],
      config: { worker: { id: workerId }, providers: { default: 'docker' }, defaults: { image: TEST_IMAGE }, reconcile: { unknownRuntimes: reconcile } },
    });
    return h;
  };

  afterEach(async () => {
    const current = h;
    h = undefined;
    await current?.close();
    // The harness cleans up its mock; this file's containers go here.
    for (const rt of await provider.inventory()) {
      if (rt.workerId === workerId || rt.workerId === otherWorker) await provider.destroy(rt.runtimeId);
    }
  });

  it('serves the client flow with providers.default = docker', async () => {
    const { orch } = await start();
    const sb = await orch.spawn({ metadata: { purpose: 'docker' }, env: { GREETING: 'hi' } }, anon);
    expect(sb).toMatchObject({ state: 'running', provider: 'docker', workerId, image: TEST_IMAGE });
    const info = await docker.getContainer(sb.runtimeId as string).inspect();
    expect(info.Config.Labels['stacyvm.sandbox_id']).toBe(sb.id);

    const out = await orch.exec(sb.id, { command: 'sh', args: ['-c', 'echo "$GREETING $SANDBOX_ID"; echo err >&2; exit 3'], mode: 'argv', env: {} }, anon);
    expect(out).toMatchObject({ exitCode: 3, stdout: `hi ${sb.id}\n`, stderr: 'err\n' });
    await orch.writeFile(sb.id, '/workspace/a.txt', Buffer.from('hello'), undefined, anon);
    expect(await text(await orch.readFile(sb.id, '/workspace/a.txt', anon))).toBe('hello');
    expect(await orch.glob(sb.id, '/workspace/*.txt', anon)).toEqual(['/workspace/a.txt']);

    await orch.destroy(sb.id, anon);
    expect((await orch.get(sb.id, anon)).state).toBe('destroyed');
    await expect(docker.getContainer(sb.runtimeId as string).inspect()).rejects.toMatchObject({ statusCode: 404 });
  });

  it('adopts this worker’s containers after a restart and leaves other workers’ alone', async () => {
    const hh = await start('adopt');
    const mineSpec = testSpawnSpec({ ownerId: 'alice', workerId });
    const theirSpec = testSpawnSpec({ ownerId: null, workerId: otherWorker });
    const mine = await provider.spawn(mineSpec);
    const theirs = await provider.spawn(theirSpec);
    await hh.orch.stop();
    const restarted = await hh.restart();
    const rec = await hh.store.getSandbox(mineSpec.sandboxId);
    expect(rec).toMatchObject({ state: 'running', provider: 'docker', workerId, runtimeId: mine.runtimeId, ownerId: 'alice', metadata: { adopted: 'true' } });
    expect(await leaseHolder(hh.store, mineSpec.sandboxId)).toBe(workerId);
    const out = await restarted.exec(mineSpec.sandboxId, { command: 'echo', args: ['adopted'], mode: 'argv', env: {} }, anon);
    expect(out.stdout).toBe('adopted\n');
    expect(await hh.store.getSandbox(theirSpec.sandboxId)).toBeUndefined();
    expect(await provider.status(theirs.runtimeId)).toBe('running');
  });

  it('removes stray containers after a restart when configured to destroy them', async () => {
    const hh = await start('destroy');
    const straySpec = testSpawnSpec({ workerId });
    const stray = await provider.spawn(straySpec);
    const kept = await hh.orch.spawn({}, anon);
    await hh.orch.stop();
    await hh.restart({ reconcile: { unknownRuntimes: 'destroy' } });
    expect(await provider.status(stray.runtimeId)).toBe('missing');
    expect(await hh.store.getSandbox(straySpec.sandboxId)).toBeUndefined();
    // A sandbox the store knows survives the restart untouched.
    expect(await provider.status(kept.runtimeId as string)).toBe('running');
    expect((await hh.store.getSandbox(kept.id))?.state).toBe('running');
  });
});
