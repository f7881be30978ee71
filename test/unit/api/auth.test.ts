import { afterEach, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../../src/api/app.js';
import { type WorkerAuth, safeEqual } from '../../../src/api/auth.js';
import { StacyError } from '../../../src/core/errors.js';
import { WORKER_SCOPES } from '../../../src/workerproto/index.js';
import { testConfig } from '../../fixtures/config.js';
import { FakeService } from './fake-service.js';

const workerAuth: WorkerAuth = {
  async authenticate(workerId, token) {
    if (workerId === 'w1' && token === 'tok-w1') return { workerId, scopes: [...WORKER_SCOPES] };
    if (workerId === 'w2' && token === 'tok-w2') return { workerId, scopes: ['worker:heartbeat'] };
    if (workerId === 'w4' && token === 'tok-w4') return { workerId, scopes: [] };
    if (workerId === 'local' && token === 'tok-local') return { workerId, scopes: [...WORKER_SCOPES] };
    throw new StacyError('unauthorized', 'invalid worker credential');
  },
};

let app: FastifyInstance | undefined;
afterEach(async () => {
  await app?.close();
  app = undefined;
});

const beat = { hostname: 'h', status: 'online', providers: [], capabilities: [], capacity: {} };
const USER = { 'x-api-key': 'user-key' };
const ADMIN = { 'x-admin-api-key': 'admin-key' };
const ADMIN_AS_API = { 'x-api-key': 'admin-key' };
const WORKER = { 'x-worker-id': 'w1', 'x-worker-token': 'tok-w1' };

async function status(method: 'GET' | 'POST', url: string, headers: Record<string, string>, payload?: unknown): Promise<number> {
  const res = await app!.inject({ method, url, headers, ...(payload === undefined ? {} : { payload: payload as object }) });
  if (res.statusCode >= 400) expect(Object.keys(res.json()).sort()).toEqual(['code', 'message']);
  return res.statusCode;
}

describe('auth matrix (auth enabled, admin key configured)', () => {
  it('applies scopes to user, admin and worker credentials', async () => {
    app = await buildApp({ service: new FakeService(), config: testConfig({ auth: { enabled: true, apiKey: 'user-key', adminApiKey: 'admin-key' } }), workerAuth });
    // public probes
    expect(await status('GET', '/api/v1/health', {})).toBe(200);
    // user routes
    expect(await status('GET', '/api/v1/sandboxes', {})).toBe(401);
    expect(await status('GET', '/api/v1/sandboxes', { 'x-api-key': 'wrong' })).toBe(401);
    expect(await status('GET', '/api/v1/sandboxes', USER)).toBe(200);
    expect(await status('GET', '/api/v1/sandboxes', ADMIN)).toBe(200);
    expect(await status('GET', '/api/v1/sandboxes', WORKER)).toBe(403);
    expect(await status('GET', '/api/v1/workers', USER)).toBe(200);
    // admin routes
    expect(await status('GET', '/api/v1/admin/diagnostics', USER)).toBe(403);
    expect(await status('GET', '/api/v1/admin/diagnostics', {})).toBe(401);
    expect(await status('GET', '/api/v1/admin/diagnostics', ADMIN)).toBe(200);
    expect(await status('GET', '/api/v1/admin/diagnostics', ADMIN_AS_API)).toBe(200);
    expect(await status('GET', '/api/v1/admin/diagnostics', { 'x-admin-api-key': 'user-key' })).toBe(401);
    expect(await status('POST', '/api/v1/admin/workers/w9/heartbeat', USER, beat)).toBe(403);
    expect(await status('POST', '/api/v1/admin/workers/w9/heartbeat', ADMIN, beat)).toBe(200);
    expect(await status('GET', '/api/v1/admin/diagnostics', WORKER)).toBe(403);
    // quota writes need admin even on the plain alias
    expect(await status('GET', '/api/v1/quotas', USER)).toBe(200);
    // worker routes
    expect(await status('POST', '/api/v1/worker/w1/heartbeat', USER, beat)).toBe(401);
    expect(await status('POST', '/api/v1/worker/w1/heartbeat', ADMIN, beat)).toBe(401);
    expect(await status('POST', '/api/v1/worker/w1/heartbeat', WORKER, beat)).toBe(200);
    expect(await status('POST', '/api/v1/worker/w1/heartbeat', { 'x-worker-id': 'w1', authorization: 'Bearer tok-w1' }, beat)).toBe(200);
    expect(await status('POST', '/api/v1/worker/w1/heartbeat', { 'x-worker-id': 'w1', 'x-worker-token': 'bad' }, beat)).toBe(401);
    expect(await status('POST', '/api/v1/worker/w3/heartbeat', WORKER, beat)).toBe(403);
    expect(await status('POST', '/api/v1/worker/w1/leases/sb-1/renew', WORKER, { ttl: '2m' })).toBe(200);
    expect(await status('POST', '/api/v1/worker/w1/leases/held/renew', WORKER, { ttl: '2m' })).toBe(409);
    expect(await status('POST', '/api/v1/worker/w2/leases/sb-1/renew', { 'x-worker-id': 'w2', 'x-worker-token': 'tok-w2' }, { ttl: '2m' })).toBe(403);
    // An empty scope list grants nothing; it is not a wildcard.
    expect(await status('POST', '/api/v1/worker/w4/heartbeat', { 'x-worker-id': 'w4', 'x-worker-token': 'tok-w4' }, beat)).toBe(403);
    expect(await status('POST', '/api/v1/worker/w4/leases/sb-1/renew', { 'x-worker-id': 'w4', 'x-worker-token': 'tok-w4' }, { ttl: '2m' })).toBe(403);
    // The server's own worker id (worker.id, "local" here) is not a remote worker's to use.
    expect(await status('POST', '/api/v1/worker/local/heartbeat', { 'x-worker-id': 'local', 'x-worker-token': 'tok-local' }, beat)).toBe(403);
    expect(await status('POST', '/api/v1/worker/local/leases/sb-1/renew', { 'x-worker-id': 'local', 'x-worker-token': 'tok-local' }, { ttl: '2m' })).toBe(403);
    expect(await status('POST', '/api/v1/worker/local/heartbeat', { 'x-worker-id': 'local', 'x-worker-token': 'bad' }, beat)).toBe(401);
  });

  it('quota writes need admin on the non-admin alias', async () => {
    app = await buildApp({ service: new FakeService(), config: testConfig({ auth: { enabled: true, apiKey: 'user-key', adminApiKey: 'admin-key' } }) });
    expect(await status('POST', '/api/v1/sandboxes', USER)).toBe(201);
    const put = await app.inject({ method: 'PUT', url: '/api/v1/quotas/bob', headers: USER, payload: { max_sandboxes: 1 } });
    expect(put.statusCode).toBe(403);
    const put2 = await app.inject({ method: 'PUT', url: '/api/v1/quotas/bob', headers: ADMIN, payload: { max_sandboxes: 1 } });
    expect(put2.statusCode).toBe(200);
  });
});

describe('auth fallback and disabled auth', () => {
  it('opens admin routes to the api key only with fallback and no admin key', async () => {
    app = await buildApp({ service: new FakeService(), config: testConfig({ auth: { enabled: true, apiKey: 'user-key', adminFallbackEnabled: true } }) });
    expect(await status('GET', '/api/v1/admin/providers', USER)).toBe(200);
    await app.close();
    app = await buildApp({ service: new FakeService(), config: testConfig({ auth: { enabled: true, apiKey: 'user-key' } }) });
    expect(await status('GET', '/api/v1/admin/providers', USER)).toBe(403);
  });

  it('with auth disabled everything but worker routes is open', async () => {
    app = await buildApp({ service: new FakeService(), config: testConfig(), workerAuth });
    expect(await status('GET', '/api/v1/admin/diagnostics', {})).toBe(200);
    expect(await status('GET', '/api/v1/sandboxes', {})).toBe(200);
    expect(await status('POST', '/api/v1/worker/w1/heartbeat', {}, beat)).toBe(401);
    expect(await status('POST', '/api/v1/worker/w1/heartbeat', WORKER, beat)).toBe(200);
  });

  it('without a worker verifier worker routes stay closed', async () => {
    app = await buildApp({ service: new FakeService(), config: testConfig() });
    expect(await status('POST', '/api/v1/worker/w1/heartbeat', WORKER, beat)).toBe(401);
  });

  it('compares keys exactly', () => {
    expect(safeEqual('abc', 'abc')).toBe(true);
    expect(safeEqual('abc', 'abd')).toBe(false);
    expect(safeEqual('abc', 'abcd')).toBe(false);
  });
});
