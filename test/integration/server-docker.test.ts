/**
 * The real server with `providers.default: docker` against the private test dockerd: the README
 * quick start behaves exactly as on oci, and a sandbox spawned before a restart is still usable
 * after it (the new process adopts the running container).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { hostSupports } from '../host.js';
import { TEST_IMAGE, busyboxStaticProbe, dockerSocketProbe, readyTestDocker } from '../fixtures/docker.js';
import { type ServerProcess, call, makeDataDir, removeDir, startServerProcess } from './server-process.js';

const supported = hostSupports('server on docker', dockerSocketProbe, busyboxStaticProbe);

let server: ServerProcess | undefined;
let dataDir: string | undefined;
const spawned: string[] = [];
afterAll(async () => {
  // Leave no containers behind on the shared daemon, whatever failed.
  if (server && server.proc.exitCode === null) {
    for (const id of spawned) await call('DELETE', `${server.api}/sandboxes/${id}`).catch(() => undefined);
  }
  await server?.stop();
  if (dataDir) await removeDir(dataDir);
});

function dockerServerEnv(): Record<string, string> {
  return {
    STACYVM_PROVIDERS_DEFAULT: 'docker',
    STACYVM_PROVIDERS_DOCKER_ENABLED: 'true',
    STACYVM_PROVIDERS_DOCKER_SOCKET: process.env.STACYVM_TEST_DOCKER_SOCKET ?? '',
    STACYVM_DEFAULTS_IMAGE: TEST_IMAGE,
  };
}

/** The NDJSON lines of a streamed exec. */
async function streamExec(s: ServerProcess, id: string, command: string): Promise<Record<string, unknown>[]> {
  const res = await call('POST', `${s.api}/sandboxes/${id}/exec`, { command, stream: true });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toContain('application/x-ndjson');
  return res.text
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe.runIf(supported)('server with the docker provider as default', () => {
  it('runs the quick start, survives a restart and reports docker as the healthy default', async () => {
    await readyTestDocker();
    dataDir = await makeDataDir();
    server = await startServerProcess({ dataDir, env: dockerServerEnv() });

    const providers = (await call('GET', `${server.api}/providers`)).body as { name: string; healthy: boolean; default: boolean }[];
    expect(providers.find((p) => p.name === 'docker')).toMatchObject({ healthy: true, default: true });
    expect(providers.filter((p) => p.default).map((p) => p.name)).toEqual(['docker']);

    const sb = await call('POST', `${server.api}/sandboxes`, {});
    expect(sb.status).toBe(201);
    const id = sb.body.id as string;
    spawned.push(id);
    expect(sb.body).toMatchObject({ provider: 'docker', image: TEST_IMAGE, worker_id: 'local', state: 'running' });

    const ex = await call('POST', `${server.api}/sandboxes/${id}/exec`, { command: 'echo 42' });
    expect(ex.status).toBe(200);
    expect(ex.body).toMatchObject({ exit_code: 0, stdout: '42\n', stderr: '' });

    const lines = await streamExec(server, id, 'echo 42');
    expect(lines[0]).toEqual({ stream: 'stdout', data: '42\n' });
    expect(lines.at(-1)).toMatchObject({ stream: 'exit', exit_code: 0 });

    expect((await call('POST', `${server.api}/sandboxes/${id}/files`, { path: '/workspace/hello.txt', content: 'hello' })).status).toBe(200);
    const read = await fetch(`${server.api}/sandboxes/${id}/files?path=/workspace/hello.txt`, { signal: AbortSignal.timeout(20_000) });
    expect(read.status).toBe(200);
    expect(await read.text()).toBe('hello');

    const list = (await call('GET', `${server.api}/sandboxes`)).body as { id: string; provider: string }[];
    expect(list.find((s) => s.id === id)).toMatchObject({ provider: 'docker' });

    // Restart: the container keeps running while no server is up, and the next server adopts it.
    expect(await server.stop()).toBe(0);
    server = await startServerProcess({ dataDir, env: dockerServerEnv() });
    const after = await call('GET', `${server.api}/sandboxes/${id}`);
    expect(after.body).toMatchObject({ id, provider: 'docker', state: 'running' });
    const again = await call('POST', `${server.api}/sandboxes/${id}/exec`, { command: 'cat /workspace/hello.txt; echo 42' });
    expect(again.body).toMatchObject({ exit_code: 0, stdout: 'hello42\n' });

    const restarted = (await call('GET', `${server.api}/providers`)).body as { name: string; healthy: boolean; default: boolean }[];
    expect(restarted.find((p) => p.name === 'docker')).toMatchObject({ healthy: true, default: true });

    expect((await call('DELETE', `${server.api}/sandboxes/${id}`)).body).toEqual({ status: 'destroyed' });
    spawned.length = 0;
    const gone = (await call('GET', `${server.api}/sandboxes`)).body as { id: string }[];
    expect(gone.map((s) => s.id)).not.toContain(id);
  });
});
