/**
 * mTLS between real processes: a control plane configured with `worker.rpc_tls.*` drives a
 * `stacyvm worker --rpc-tls-*` over https with its client certificate; a worker that only
 * trusts another client CA refuses it, and a spawn placed there fails with 503 leaving nothing.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTestPki, type TestPki } from '../fixtures/tls.js';
import { hasBinary, hostSupports } from '../host.js';
import { startRemoteCluster, type RemoteCluster } from './remote-harness.js';
import { CLI, call } from './server-process.js';

const built = () => (existsSync(CLI) ? null : `${CLI} is not built (npm run build)`);

interface Sandbox {
  id: string;
  state: string;
  worker_id?: string;
}

describe.skipIf(!hostSupports('worker RPC mTLS between processes', built, hasBinary('openssl')))('mTLS between the control plane and worker processes', { timeout: 120_000 }, () => {
  let pki: TestPki;
  let cluster: RemoteCluster;
  beforeAll(async () => {
    pki = makeTestPki(mkdtempSync(join(tmpdir(), 'stacyvm-mtls-proc-')));
    cluster = await startRemoteCluster({
      serverEnv: {
        STACYVM_WORKER_MAX_SANDBOXES: '1',
        STACYVM_WORKER_RPC_TLS_CA: pki.file('ca.crt'),
        STACYVM_WORKER_RPC_TLS_CERT: pki.file('client.crt'),
        STACYVM_WORKER_RPC_TLS_KEY: pki.file('client.key'),
      },
    });
  });
  afterAll(async () => {
    await cluster?.stop();
    if (pki !== undefined) rmSync(pki.dir, { recursive: true, force: true });
  });

  const tlsArgs = (clientCa: string) => ['--rpc-tls-cert', pki.file('server.crt'), '--rpc-tls-key', pki.file('server.key'), '--rpc-tls-client-ca', pki.file(clientCa)];

  it('runs a sandbox on a worker that requires the control plane certificate', async () => {
    const w = await cluster.startWorker('tls1', { args: tlsArgs('ca.crt') });
    expect(w.rpcUrl.startsWith('https://127.0.0.1:')).toBe(true);
    const api = cluster.server.api;
    const filler = (await call('POST', `${api}/sandboxes`, { provider: 'mock' })).body as Sandbox;
    expect(filler.worker_id).toBe('local');
    const sb = (await call('POST', `${api}/sandboxes`, { provider: 'mock', ttl: '10m' })).body as Sandbox;
    expect(sb).toMatchObject({ worker_id: 'tls1', state: 'running' });
    const exec = await call('POST', `${api}/sandboxes/${sb.id}/exec`, { command: 'echo over-tls' });
    expect(exec.body).toMatchObject({ exit_code: 0, stdout: 'over-tls\n' });
    expect((await call('POST', `${api}/sandboxes/${sb.id}/files`, { path: '/workspace/t.txt', content: 'tls' })).status).toBe(200);
    expect((await call('GET', `${api}/sandboxes/${sb.id}/files?path=/workspace/t.txt`)).text).toBe('tls');
    expect((await call('DELETE', `${api}/sandboxes/${sb.id}`)).body).toEqual({ status: 'destroyed' });

    // Drained, so the next placement has to pick the worker that distrusts this control plane.
    expect((await call('POST', `${api}/admin/workers/tls1/drain`)).status).toBe(200);
    await cluster.startWorker('tls2', { args: tlsArgs('rogue-ca.crt') });
    const before = ((await call('GET', `${api}/sandboxes`)).body as Sandbox[]).map((s) => s.id).sort();
    const refused = await call('POST', `${api}/sandboxes`, { provider: 'mock', ttl: '10m' });
    expect(refused.status).toBe(503);
    expect(refused.body).toMatchObject({ code: 'remote_worker_rpc_unavailable' });
    expect(((await call('GET', `${api}/sandboxes`)).body as Sandbox[]).map((s) => s.id).sort()).toEqual(before);
    await call('DELETE', `${api}/sandboxes/${filler.id}`);
  });
});
