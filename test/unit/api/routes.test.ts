import { request as httpRequest } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../../src/api/app.js';
import type { WorkerAuth } from '../../../src/api/auth.js';
import { StacyError, resourceLimit } from '../../../src/core/errors.js';
import { testConfig } from '../../fixtures/config.js';
import { FakeService } from './fake-service.js';

let app: FastifyInstance | undefined;
afterEach(async () => {
  await app?.close();
  app = undefined;
});

async function make(opts: Parameters<typeof testConfig>[0] = {}, workerAuth?: WorkerAuth) {
  const service = new FakeService();
  app = await buildApp({ service, config: testConfig(opts), ...(workerAuth ? { workerAuth } : {}) });
  return { service, app };
}

const json = (body: unknown) => ({ 'content-type': 'application/json', payload: JSON.stringify(body) });

describe('sandbox routes', () => {
  it('spawns, renders the wire object and maps durations and snake_case', async () => {
    const { app, service } = await make({ server: { previewDomain: 'preview.test' } });
    const res = await app.inject({ method: 'POST', url: '/api/v1/sandboxes', headers: { 'content-type': 'application/json', 'x-user-id': ' alice ' }, payload: { memory_mb: 256, ttl: '2h', metadata: { a: 'b' } } });
    expect(res.statusCode).toBe(201);
    const sb = res.json();
    expect(sb).toMatchObject({ state: 'running', memory_mb: 256, worker_id: 'local', owner_id: 'alice', created_at: '2026-01-01T00:00:00.000Z', expires_at: '2026-01-01T02:00:00.000Z', metadata: { a: 'b' } });
    expect(sb.preview_domain).toBe(`${sb.id}.preview.test`);
    expect(service.calls[0]?.args[0]).toEqual({ memoryMb: 256, ttlMs: 7_200_000, metadata: { a: 'b' } });
    expect((service.calls[0]?.args[1] as { userId: string }).userId).toBe('alice');
  });

  it('accepts a spawn without any body', async () => {
    const { app } = await make();
    const res = await app.inject({ method: 'POST', url: '/api/v1/sandboxes' });
    expect(res.statusCode).toBe(201);
  });

  it('rejects bad input with 400 bad_request and never calls the service', async () => {
    const { app, service } = await make();
    for (const payload of [{ ttl: '10 minutes' }, { ttl: '-1s' }, { memory_mb: -5 }, { memory_mb: '512' }, { metadata: { a: 1 } }]) {
      const res = await app.inject({ method: 'POST', url: '/api/v1/sandboxes', ...json(payload) });
      expect(res.statusCode, JSON.stringify(payload)).toBe(400);
      expect(res.json()).toMatchObject({ code: 'bad_request' });
      expect(Object.keys(res.json()).sort()).toEqual(['code', 'message']);
    }
    const malformed = await app.inject({ method: 'POST', url: '/api/v1/sandboxes', headers: { 'content-type': 'application/json' }, payload: '{"image": ' });
    expect(malformed.statusCode).toBe(400);
    expect(malformed.json().code).toBe('bad_request');
    expect(service.calls.filter((c) => c.method === 'spawn')).toHaveLength(0);
  });

  it('maps over-limit bodies to 413, unknown routes to 404 and ids to not_found', async () => {
    const { app } = await make({ server: { bodyLimitBytes: 1024 } });
    const big = await app.inject({ method: 'POST', url: '/api/v1/sandboxes', ...json({ metadata: { x: 'y'.repeat(4096) } }) });
    expect(big.statusCode).toBe(413);
    expect(big.json()).toEqual({ code: 'payload_too_large', message: expect.any(String) });
    const route = await app.inject({ method: 'GET', url: '/api/v1/nope' });
    expect(route.statusCode).toBe(404);
    expect(route.json().code).toBe('not_found');
    const missing = await app.inject({ method: 'GET', url: '/api/v1/sandboxes/sb-deadbeef' });
    expect(missing.statusCode).toBe(404);
    expect(missing.json()).toEqual({ code: 'not_found', message: 'sandbox "sb-deadbeef" not found' });
  });

  it('sends Retry-After on 429 and hides unknown errors', async () => {
    const { app, service } = await make();
    service.spawnError = resourceLimit('too many sandboxes', 7);
    const limited = await app.inject({ method: 'POST', url: '/api/v1/sandboxes', ...json({}) });
    expect(limited.statusCode).toBe(429);
    expect(limited.headers['retry-after']).toBe('7');
    expect(limited.json().code).toBe('resource_limit');
    service.spawnError = new StacyError('resource_limit', 'full');
    expect((await app.inject({ method: 'POST', url: '/api/v1/sandboxes' })).headers['retry-after']).toBe('1');
    service.spawn = async () => {
      throw new Error('secret database path /var/lib/x');
    };
    const boom = await app.inject({ method: 'POST', url: '/api/v1/sandboxes', ...json({}) });
    expect(boom.statusCode).toBe(500);
    expect(boom.json()).toEqual({ code: 'internal', message: 'internal server error' });
  });

  it('echoes or generates X-Request-ID and passes it to the caller', async () => {
    const { app, service } = await make();
    const given = await app.inject({ method: 'POST', url: '/api/v1/sandboxes', headers: { 'x-request-id': 'abc-123' } });
    expect(given.headers['x-request-id']).toBe('abc-123');
    expect((service.calls[0]?.args[1] as { requestId: string }).requestId).toBe('abc-123');
    const made = await app.inject({ method: 'GET', url: '/api/v1/nothing-here' });
    expect(made.headers['x-request-id']).toMatch(/^req-[0-9a-f]{16}$/);
  });

  it('validates X-User-ID', async () => {
    const { app } = await make();
    for (const bad of ['a b', 'a/b', 'a\\b', 'x'.repeat(129), 'a\tb']) {
      const res = await app.inject({ method: 'GET', url: '/api/v1/sandboxes', headers: { 'x-user-id': bad } });
      expect(res.statusCode, bad).toBe(400);
    }
  });

  it('extends, destroys idempotently and reads logs', async () => {
    const { app } = await make();
    const id = (await app.inject({ method: 'POST', url: '/api/v1/sandboxes' })).json().id;
    const ext = await app.inject({ method: 'POST', url: `/api/v1/sandboxes/${id}/extend`, ...json({ ttl: '1h30m' }) });
    expect(ext.json().expires_at).toBe('2026-01-01T01:30:00.000Z');
    expect((await app.inject({ method: 'GET', url: `/api/v1/sandboxes/${id}/logs?lines=5` })).json()).toEqual(['5 lines']);
    expect((await app.inject({ method: 'GET', url: `/api/v1/sandboxes/${id}/logs?lines=abc` })).statusCode).toBe(400);
    expect((await app.inject({ method: 'DELETE', url: `/api/v1/sandboxes/${id}` })).json()).toEqual({ status: 'destroyed' });
    expect((await app.inject({ method: 'DELETE', url: `/api/v1/sandboxes/${id}` })).statusCode).toBe(200);
    expect((await app.inject({ method: 'GET', url: '/api/v1/sandboxes' })).json()).toEqual([]);
    expect((await app.inject({ method: 'POST', url: '/api/v1/sandboxes/admission' })).json()).toMatchObject({ allowed: true, max_ttl: '24h0m0s', scheduler: { worker_id: 'local', selected_worker_id: 'local', eligible_workers: 1 } });
  });
});

describe('exec', () => {
  it('buffers and renders exit code and Go duration; non-zero exit is 200', async () => {
    const { app, service } = await make();
    const id = (await app.inject({ method: 'POST', url: '/api/v1/sandboxes' })).json().id;
    const res = await app.inject({ method: 'POST', url: `/api/v1/sandboxes/${id}/exec`, ...json({ command: 'false', args: ['x'], mode: 'argv', timeout: '5s' }) });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ exit_code: 1, stdout: 'false x\n', stderr: '', duration: '1.5s' });
    expect(service.calls.find((c) => c.method === 'exec')?.args[0]).toEqual({ command: 'false', args: ['x'], mode: 'argv', env: {}, timeoutMs: 5000 });
    const to = await app.inject({ method: 'POST', url: `/api/v1/sandboxes/${id}/exec`, ...json({ command: 'slow' }) });
    expect(to.statusCode).toBe(408);
    expect(to.json().code).toBe('timeout');
    expect((await app.inject({ method: 'POST', url: `/api/v1/sandboxes/${id}/exec`, ...json({ command: 'x', mode: 'bash' }) })).statusCode).toBe(400);
    expect((await app.inject({ method: 'POST', url: `/api/v1/sandboxes/${id}/exec`, ...json({ command: 'x', timeout: 'soon' }) })).statusCode).toBe(400);
  });

  it('streams NDJSON ending with the exit line', async () => {
    const { app } = await make();
    const id = (await app.inject({ method: 'POST', url: '/api/v1/sandboxes' })).json().id;
    const res = await app.inject({ method: 'POST', url: `/api/v1/sandboxes/${id}/exec`, ...json({ command: 'x', stream: true }) });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toContain('application/x-ndjson');
    expect(res.body.trim().split('\n').map((l) => JSON.parse(l))).toEqual([
      { stream: 'stdout', data: 'first\n' },
      { stream: 'stderr', data: 'second\n' },
      { stream: 'exit', data: '', exit_code: 3, duration: '250ms' },
    ]);
  });

  it('sends a multi-byte character split across chunks whole, and flushes an unfinished one before exit', async () => {
    const { app } = await make();
    const id = (await app.inject({ method: 'POST', url: '/api/v1/sandboxes' })).json().id;
    const res = await app.inject({ method: 'POST', url: `/api/v1/sandboxes/${id}/exec`, ...json({ command: 'split-utf8', stream: true }) });
    expect(res.body.trim().split('\n').map((l) => JSON.parse(l))).toEqual([
      { stream: 'stdout', data: 'p: ' },
      { stream: 'stdout', data: '€\n' },
      { stream: 'stderr', data: '\ufffd' },
      { stream: 'exit', data: '', exit_code: 0, duration: '1ms' },
    ]);
  });

  it('a client gone before the first output stops the command', async () => {
    const { app, service } = await make();
    const id = (await app.inject({ method: 'POST', url: '/api/v1/sandboxes' })).json().id;
    const url = await app.listen({ port: 0, host: '127.0.0.1' });
    const req = httpRequest(`${url}/api/v1/sandboxes/${id}/exec`, { method: 'POST', headers: { 'content-type': 'application/json' } });
    req.on('error', () => undefined);
    req.end(JSON.stringify({ command: 'silent', stream: true }));
    // Gone while the server still waits for the first event, before any status line.
    await new Promise((r) => setTimeout(r, 20));
    req.destroy();
    const deadline = Date.now() + 3_000;
    while (!service.silentAborted && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(service.silentAborted).toBe(true);
  });

  it('ends a failing stream with an error line, and an unknown sandbox with a 404', async () => {
    const { app } = await make();
    const id = (await app.inject({ method: 'POST', url: '/api/v1/sandboxes' })).json().id;
    const res = await app.inject({ method: 'POST', url: `/api/v1/sandboxes/${id}/exec`, ...json({ command: 'fail-mid', stream: true }) });
    const lines = res.body.trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.at(-1)).toEqual({ stream: 'error', data: 'exec exceeded its deadline', code: 'timeout' });
    const missing = await app.inject({ method: 'POST', url: '/api/v1/sandboxes/sb-00000000/exec', ...json({ command: 'x', stream: true }) });
    expect(missing.statusCode).toBe(404);
    expect(missing.json().code).toBe('not_found');
  });
});

describe('files', () => {
  it('writes utf8/base64, reads raw bytes, converts modes and rejects traversal', async () => {
    const { app, service } = await make();
    const id = (await app.inject({ method: 'POST', url: '/api/v1/sandboxes' })).json().id;
    const w = await app.inject({ method: 'POST', url: `/api/v1/sandboxes/${id}/files`, ...json({ path: '/work/a.bin', content: Buffer.from([0, 1, 2, 255]).toString('base64'), encoding: 'base64', mode: '644' }) });
    expect(w.json()).toEqual({ status: 'written' });
    expect(service.calls.find((c) => c.method === 'writeFile')?.args[2]).toBe(0o644);
    const r = await app.inject({ method: 'GET', url: `/api/v1/sandboxes/${id}/files?path=/work/a.bin` });
    expect(r.headers['content-type']).toBe('application/octet-stream');
    expect([...r.rawPayload]).toEqual([0, 1, 2, 255]);
    const list = await app.inject({ method: 'GET', url: `/api/v1/sandboxes/${id}/files/list?path=/work` });
    expect(list.json()[0]).toMatchObject({ name: 'a.txt', is_dir: false, mode: '0644', mod_time: '2026-01-01T00:00:00.000Z' });
    expect((await app.inject({ method: 'POST', url: `/api/v1/sandboxes/${id}/files/chmod`, ...json({ path: '/work/a.bin', mode: '0755' }) })).statusCode).toBe(200);
    expect(service.calls.find((c) => c.method === 'chmod')?.args[1]).toBe(0o755);
    const bad = [
      { method: 'GET' as const, url: `/api/v1/sandboxes/${id}/files?path=../../etc/passwd` },
      { method: 'GET' as const, url: `/api/v1/sandboxes/${id}/files?path=/work/../../etc/passwd` },
      { method: 'GET' as const, url: `/api/v1/sandboxes/${id}/files?path=/a%00b` },
      { method: 'POST' as const, url: `/api/v1/sandboxes/${id}/files`, ...json({ path: '/a\u0000b', content: 'x' }) },
      { method: 'POST' as const, url: `/api/v1/sandboxes/${id}/files`, ...json({ path: '/a', content: 'x', mode: '999' }) },
      { method: 'POST' as const, url: `/api/v1/sandboxes/${id}/files`, ...json({ path: '/a', content: '!!!', encoding: 'base64' }) },
      { method: 'POST' as const, url: `/api/v1/sandboxes/${id}/files/move`, ...json({ old_path: '/a', new_path: '/../x' }) },
    ];
    for (const req of bad) {
      const res = await app.inject(req);
      expect(res.statusCode, req.url).toBe(400);
      expect(res.json().code).toBe('bad_request');
    }
    expect((await app.inject({ method: 'DELETE', url: `/api/v1/sandboxes/${id}/files?path=/work/a.bin&recursive=true` })).json()).toEqual({ status: 'deleted' });
    expect((await app.inject({ method: 'GET', url: `/api/v1/sandboxes/${id}/files?path=/work/a.bin` })).statusCode).toBe(404);
  });
});

describe('templates, providers, workers, quotas, system', () => {
  it('covers templates with conflict and template spawn', async () => {
    const { app } = await make();
    const c = await app.inject({ method: 'POST', url: '/api/v1/templates', ...json({ name: 'py', image: 'python:3', ttl: '90m' }) });
    expect(c.statusCode).toBe(201);
    expect(c.json()).toMatchObject({ name: 'py', image: 'python:3', ttl: '1h30m0s' });
    expect((await app.inject({ method: 'POST', url: '/api/v1/templates', ...json({ name: 'py' }) })).statusCode).toBe(409);
    const s = await app.inject({ method: 'POST', url: '/api/v1/templates/py/spawn' });
    expect(s.statusCode).toBe(201);
    expect(s.json().image).toBe('python:3');
    expect((await app.inject({ method: 'DELETE', url: '/api/v1/templates/py' })).json()).toEqual({ status: 'deleted' });
  });

  it('renders providers, diagnostics in snake_case and prometheus text', async () => {
    const { app } = await make();
    expect((await app.inject({ method: 'GET', url: '/api/v1/providers' })).json()[0]).toMatchObject({ name: 'mock', latency_ms: 0.5, capabilities: { isolation: 'none' } });
    expect((await app.inject({ method: 'GET', url: '/api/v1/providers/nope' })).statusCode).toBe(404);
    const d = (await app.inject({ method: 'GET', url: '/api/v1/diagnostics' })).json();
    expect(d).toMatchObject({ uptime: '1m1s', scheduler: { worker_id: 'local', selected_worker_id: 'local', eligible_workers: 1 }, workers: { total: 1, online: 1, stale: 0, unhealthy: 0 }, leases: { by_holder: { local: 1 } }, sandboxes: { by_worker: { local: 1 } } });
    expect(d.workers.items[0]).toMatchObject({ id: 'local', stale: false, capacity: { max_sandboxes: 100 } });
    const p = await app.inject({ method: 'GET', url: '/api/v1/admin/metrics/prometheus' });
    expect(p.headers['content-type']).toContain('text/plain');
    expect(p.body).toContain('stacyvm_workers_total{status="total"} 1');
    expect((await app.inject({ method: 'GET', url: '/api/v1/live' })).json()).toMatchObject({ status: 'alive', version: '0.1.0' });
    const openapi = (await app.inject({ method: 'GET', url: '/api/v1/openapi.json' })).json();
    expect(Object.keys(openapi.paths)).toContain('/api/v1/sandboxes/{id}/exec');
  });

  it('answers 503 from /ready when nothing is healthy', async () => {
    const { app, service } = await make();
    service.ready = false;
    const r = await app.inject({ method: 'GET', url: '/api/v1/ready' });
    expect(r.statusCode).toBe(503);
    expect(r.json()).toMatchObject({ code: 'unavailable' });
  });

  it('renders workers and quotas', async () => {
    const { app } = await make();
    expect((await app.inject({ method: 'GET', url: '/api/v1/workers/local' })).json()).toMatchObject({ id: 'local', status: 'online', stale: false });
    expect((await app.inject({ method: 'GET', url: '/api/v1/workers/ghost' })).statusCode).toBe(404);
    const hb = await app.inject({ method: 'POST', url: '/api/v1/admin/workers/w2/heartbeat', ...json({ hostname: 'h2', status: 'online', providers: ['mock'], capabilities: [], capacity: { max_sandboxes: 3 } }) });
    expect(hb.json()).toMatchObject({ id: 'w2', capacity: { max_sandboxes: 3 } });
    expect((await app.inject({ method: 'DELETE', url: '/api/v1/admin/workers/w2' })).json()).toEqual({ status: 'deleted' });
    const q = await app.inject({ method: 'PUT', url: '/api/v1/quotas/alice', ...json({ max_sandboxes: 2, max_ttl: '1h' }) });
    expect(q.json()).toMatchObject({ owner_id: 'alice', max_sandboxes: 2, max_ttl: '1h0m0s', max_memory_mb: null });
    expect((await app.inject({ method: 'GET', url: '/api/v1/quotas/alice/usage' })).json()).toMatchObject({ owner_id: 'alice', quota: { max_sandboxes: 2 } });
    expect((await app.inject({ method: 'GET', url: '/api/v1/admin/quotas/summary' })).json()).toMatchObject({ total: 1 });
  });
});

describe('cors', () => {
  it('answers preflights and tags responses only for allowed origins', async () => {
    const { app } = await make({ server: { corsAllowedOrigins: ['https://app.example'] } });
    const pre = await app.inject({ method: 'OPTIONS', url: '/api/v1/sandboxes', headers: { origin: 'https://app.example', 'access-control-request-method': 'POST' } });
    expect(pre.statusCode).toBe(204);
    expect(pre.headers['access-control-allow-origin']).toBe('https://app.example');
    expect(pre.headers['access-control-allow-headers']).toContain('X-API-Key');
    const get = await app.inject({ method: 'GET', url: '/api/v1/sandboxes', headers: { origin: 'https://app.example' } });
    expect(get.headers['access-control-allow-origin']).toBe('https://app.example');
    const other = await app.inject({ method: 'GET', url: '/api/v1/sandboxes', headers: { origin: 'https://evil.example' } });
    expect(other.headers['access-control-allow-origin']).toBeUndefined();
  });
});

describe('free-form objects', () => {
  it('become snake_case except for data-keyed maps', async () => {
    const { snakeKeys } = await import('../../../src/api/wire.js');
    expect(
      snakeKeys({ uptimeMs: 5, operations: { exec_stream: { latencyMs: { p50: 1 } } }, sandboxes: { byWorker: { workerA: 1 } }, auth: { workerTokens: { myWorker: 'x' }, adminApiKey: '' }, list: [{ runtimeCount: 1 }] }),
    ).toEqual({ uptime_ms: 5, operations: { exec_stream: { latency_ms: { p50: 1 } } }, sandboxes: { by_worker: { workerA: 1 } }, auth: { worker_tokens: { myWorker: 'x' }, admin_api_key: '' }, list: [{ runtime_count: 1 }] });
  });

  it('renders /metrics in snake_case', async () => {
    const { app, service } = await make();
    service.metrics = async () => ({ uptimeMs: 1, sandboxes: { byState: { running: 2 } } });
    expect((await app.inject({ method: 'GET', url: '/api/v1/metrics' })).json()).toEqual({ uptime_ms: 1, sandboxes: { by_state: { running: 2 } } });
  });
});
