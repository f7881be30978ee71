/**
 * The real server with `providers.default: auto` on a host where runc works and the default
 * image is installed: auto picks oci, and the quick start runs inside a container.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { hasBinary, hostSupports, isRoot } from '../host.js';
import { CLI, type ServerProcess, call, makeDataDir, removeDir, startServerProcess } from './server-process.js';

const run = promisify(execFile);
const supported = hostSupports('server on oci', isRoot, hasBinary('runc'), hasBinary('busybox'));

let server: ServerProcess | undefined;
let dataDir: string | undefined;
afterAll(async () => {
  await server?.stop();
  if (dataDir) await removeDir(dataDir);
});

describe.runIf(supported)('server with auto provider on oci', () => {
  it('picks oci and runs the quick start in a container', async () => {
    dataDir = await makeDataDir();
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('STACYVM_')) env[k] = v;
    await run(process.execPath, [CLI, 'image', 'build-busybox', 'busybox'], { env: { ...env, STACYVM_DATA_DIR: dataDir }, timeout: 60_000 });
    server = await startServerProcess({ dataDir, env: { STACYVM_PROVIDERS_DEFAULT: 'auto', STACYVM_PROVIDERS_OCI_ENABLED: 'true', STACYVM_DEFAULTS_IMAGE: 'busybox' } });

    const providers = (await call('GET', `${server.api}/providers`)).body as { name: string; default: boolean; capabilities: { isolation: string } }[];
    expect(providers.find((p) => p.default)).toMatchObject({ name: 'oci', capabilities: { isolation: 'container' } });

    const sb = await call('POST', `${server.api}/sandboxes`, {});
    expect(sb.status).toBe(201);
    expect(sb.body).toMatchObject({ provider: 'oci', image: 'busybox', worker_id: 'local' });
    const id = sb.body.id as string;
    const ex = await call('POST', `${server.api}/sandboxes/${id}/exec`, { command: 'echo 42; hostname; exit 3' });
    expect(ex.body).toMatchObject({ exit_code: 3, stdout: `42\n${id}\n` });
    expect((await call('POST', `${server.api}/sandboxes/${id}/files`, { path: '/tmp/hello.txt', content: 'hello' })).status).toBe(200);
    expect(await (await fetch(`${server.api}/sandboxes/${id}/files?path=/tmp/hello.txt`)).text()).toBe('hello');
    await expectTraversalRefused(server, id);
    expect((await call('DELETE', `${server.api}/sandboxes/${id}`)).body).toEqual({ status: 'destroyed' });
  });
});

async function expectTraversalRefused(s: ServerProcess, id: string): Promise<void> {
  for (const p of ['../../etc/passwd', '/tmp/../../etc/passwd']) {
    const res = await call('GET', `${s.api}/sandboxes/${id}/files?path=${encodeURIComponent(p)}`);
    expect(res.status).toBe(400);
    expect(res.body.code).toBe('bad_request');
  }
}
