/**
 * Credentials against the real server with auth enabled: user and admin keys, the worker
 * tokens, and the rule that the three identities never open each other's routes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ServerProcess, call, removeDir, startServerProcess } from './server-process.js';

const USER = { 'x-api-key': 'user-key-0123456789' };
const ADMIN = { 'x-admin-api-key': 'admin-key-0123456789' };
const ADMIN_AS_API = { 'x-api-key': 'admin-key-0123456789' };
const WORKER = { 'x-worker-id': 'w1', 'x-worker-token': 'worker-token-0123456789' };
const WORKER_BEARER = { 'x-worker-id': 'w1', authorization: 'Bearer worker-token-0123456789' };
const beat = { hostname: 'w1.example', status: 'online', providers: ['mock'], capabilities: ['exec'], capacity: { max_sandboxes: 0 } };

let server: ServerProcess;
beforeAll(async () => {
  server = await startServerProcess({
    env: {
      STACYVM_AUTH_ENABLED: 'true',
      STACYVM_AUTH_API_KEY: USER['x-api-key'],
      STACYVM_AUTH_ADMIN_API_KEY: ADMIN['x-admin-api-key'],
      STACYVM_AUTH_WORKER_TOKEN: WORKER['x-worker-token'],
    },
  });
});
afterAll(async () => {
  await server?.stop();
  if (server) await removeDir(server.dataDir);
});

async function status(method: string, path: string, headers: Record<string, string>, body?: unknown): Promise<number> {
  const res = await call(method, `${server.api}${path}`, body, headers);
  if (res.status >= 400) expect(Object.keys(res.body ?? {}).sort(), res.text).toEqual(['code', 'message']);
  return res.status;
}

describe('auth matrix', () => {
  it('user routes', async () => {
    expect(await status('GET', '/health', {})).toBe(200);
    expect(await status('GET', '/sandboxes', {})).toBe(401);
    expect(await status('GET', '/sandboxes', { 'x-api-key': 'nope' })).toBe(401);
    expect(await status('GET', '/sandboxes', USER)).toBe(200);
    expect(await status('GET', '/sandboxes', ADMIN)).toBe(200);
    expect(await status('GET', '/sandboxes', ADMIN_AS_API)).toBe(200);
    expect(await status('GET', '/sandboxes', WORKER)).toBe(403);
    expect(await status('GET', '/workers', USER)).toBe(200);
    expect(await status('GET', '/workers', WORKER_BEARER)).toBe(403);
  });

  it('admin routes', async () => {
    for (const path of ['/admin/diagnostics', '/admin/providers', '/admin/metrics/prometheus', '/admin/quotas']) {
      expect(await status('GET', path, {}), path).toBe(401);
      expect(await status('GET', path, USER), path).toBe(403);
      expect(await status('GET', path, ADMIN), path).toBe(200);
      expect(await status('GET', path, ADMIN_AS_API), path).toBe(200);
      expect(await status('GET', path, WORKER), path).toBe(403);
    }
    expect(await status('POST', '/admin/workers/w9/heartbeat', USER, beat)).toBe(403);
    expect(await status('POST', '/admin/workers/w9/heartbeat', ADMIN, beat)).toBe(200);
    expect(await status('DELETE', '/admin/workers/w9', USER)).toBe(403);
    expect(await status('DELETE', '/admin/workers/w9', ADMIN)).toBe(200);
  });

  it('worker routes', async () => {
    expect(await status('POST', '/worker/w1/heartbeat', {}, beat)).toBe(401);
    expect(await status('POST', '/worker/w1/heartbeat', USER, beat)).toBe(401);
    expect(await status('POST', '/worker/w1/heartbeat', ADMIN, beat)).toBe(401);
    expect(await status('POST', '/worker/w1/heartbeat', { 'x-worker-id': 'w1', 'x-worker-token': 'wrong' }, beat)).toBe(401);
    expect(await status('POST', '/worker/w1/heartbeat', WORKER, beat)).toBe(200);
    expect(await status('POST', '/worker/w1/heartbeat', WORKER_BEARER, beat)).toBe(200);
    expect(await status('POST', '/worker/w2/heartbeat', WORKER, beat)).toBe(403);
    const w1 = await call('GET', `${server.api}/workers/w1`, undefined, USER);
    expect(w1.body).toMatchObject({ id: 'w1', hostname: 'w1.example', status: 'online', stale: false });
    // w1 holds no lease on this resource, so renewal is refused by the lease rules, not by auth.
    const renew = await call('POST', `${server.api}/worker/w1/leases/sb-00000000/renew`, { ttl: '1m' }, WORKER);
    expect(renew.status).toBe(409);
    expect(renew.body.code).toBe('lease_conflict');
    expect(await status('POST', '/worker/w1/leases/sb-00000000/renew', USER, { ttl: '1m' })).toBe(401);
  });
});

describe('auth disabled', () => {
  it('opens everything except worker routes', async () => {
    const open = await startServerProcess({ env: { STACYVM_AUTH_WORKER_TOKEN: WORKER['x-worker-token'] } });
    try {
      expect((await call('GET', `${open.api}/admin/diagnostics`)).status).toBe(200);
      expect((await call('POST', `${open.api}/sandboxes/admission`, {})).status).toBe(200);
      expect((await call('POST', `${open.api}/worker/w1/heartbeat`, beat)).status).toBe(401);
      expect((await call('POST', `${open.api}/worker/w1/heartbeat`, beat, WORKER)).status).toBe(200);
    } finally {
      await open.stop();
      await removeDir(open.dataDir);
    }
  });
});
