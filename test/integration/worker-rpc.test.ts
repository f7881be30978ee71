import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, request as httpRequest } from 'node:http';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pino } from 'pino';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { toIso } from '../../src/core/clock.js';
import { StacyError, type ErrorCode } from '../../src/core/errors.js';
import { newSandboxId } from '../../src/core/ids.js';
import {
  WORKER_METHODS,
  WORKER_SCOPES,
  createRequest,
  issueWorkerToken,
  methodNeedsLease,
  type ParamsOf,
  type WireLease,
  type WorkerMethod,
} from '../../src/workerproto/index.js';
import { MockProvider } from '../../src/providers/mock/mock-provider.js';
import { RemoteProvider, RemoteWorkerClient, type RemoteWorkerTlsOptions } from '../../src/worker/rpc-client.js';
import { readAll } from '../fixtures/exec.js';
import { makeTestPki } from '../fixtures/tls.js';
import { hasBinary, hostSupports } from '../host.js';
import { SIGNING_KEY, TestLeases, startTestWorker, type TestWorker } from './worker-harness.js';

const now = () => Date.now();
const signed = (overrides: Record<string, unknown> = {}, key = SIGNING_KEY): string => {
  const iat = Math.floor(now() / 1000);
  return issueWorkerToken({ worker_id: 'w1', jti: `jti-${Math.random().toString(16).slice(2)}`, aud: 'worker:rpc', scopes: [...WORKER_SCOPES], iat, exp: iat + 300, ...overrides } as never, key);
};

async function codeOf(fn: () => Promise<unknown>): Promise<ErrorCode | 'ok'> {
  try {
    await fn();
    return 'ok';
  } catch (err) {
    if (err instanceof StacyError) return err.code;
    throw err;
  }
}

async function post(url: string, body: unknown, headers: Record<string, string>) {
  const res = await request(`${url}/rpc`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, body: text.length > 0 && res.headers['content-type'] === 'application/json' ? (JSON.parse(text) as Record<string, unknown>) : text };
}

const shell = (command: string, timeout = '20s') => ({ command, args: [], mode: 'shell' as const, env: {}, timeout });

describe('worker RPC over HTTP', () => {
  let w: TestWorker;
  let client: RemoteWorkerClient;
  let leases: TestLeases;
  let provider: RemoteProvider;

  beforeAll(async () => {
    w = await startTestWorker();
    client = new RemoteWorkerClient({ workerId: 'w1', url: w.url, credential: { kind: 'signing_key', keys: [SIGNING_KEY] } });
    leases = new TestLeases('w1');
    provider = await RemoteProvider.connect(client, 'mock', leases.supplier);
  });
  afterAll(async () => {
    await client.close();
    await w.stop();
  });

  it('heartbeat advertises providers, isolation and the rpc url', async () => {
    const hb = await client.heartbeat();
    expect(hb).toMatchObject({ worker_id: 'w1', status: 'online', providers: ['mock'], capacity: { max_sandboxes: 50, rpc_url: w.url } });
    expect(hb.capabilities).toContain('isolation:mock:none');
    expect(provider.capabilities.isolation).toBe('none');
  });

  it('echoes X-Request-ID and makes one up when absent', async () => {
    const token = signed();
    const req = createRequest('worker.heartbeat', 'w1', {});
    const given = await post(w.url, req, { 'x-worker-id': 'w1', 'x-worker-token': token, 'x-request-id': 'trace-123' });
    expect(given.status).toBe(200);
    expect(given.headers['x-request-id']).toBe('trace-123');
    const made = await post(w.url, req, { 'x-worker-id': 'w1', authorization: `Bearer ${token}` });
    expect(made.status).toBe(200);
    expect(String(made.headers['x-request-id'])).toMatch(/^req-/);
  });

  it('carries X-Request-ID into the worker log lines of accepted and refused calls', async () => {
    const lines: Array<Record<string, unknown>> = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        done();
      },
    });
    const logged = await startTestWorker({ logger: pino({ level: 'debug' }, sink) });
    try {
      const req = createRequest('worker.heartbeat', 'w1', {});
      await post(logged.url, req, { 'x-worker-id': 'w1', 'x-worker-token': signed(), 'x-request-id': 'trace-ok' });
      await post(logged.url, req, { 'x-worker-id': 'w1', 'x-worker-token': 'nope', 'x-request-id': 'trace-refused' });
      expect(lines.find((l) => l.request_id === 'trace-ok')).toMatchObject({ rpc_id: req.id, method: 'worker.heartbeat', credential: 'signed', worker_id: 'w1' });
      expect(lines.find((l) => l.request_id === 'trace-refused')).toMatchObject({ code: 'unauthorized', msg: 'rpc refused' });
      // RemoteProvider forwards the caller's request id on every call.
      const c = new RemoteWorkerClient({ workerId: 'w1', url: logged.url, credential: { kind: 'token', token: 'shared-worker-token' } });
      try {
        const p = await RemoteProvider.connect(c, 'mock', new TestLeases('w1').supplier, { requestId: () => 'trace-provider' });
        const { runtimeId } = await p.spawn(spec(newSandboxId()));
        await p.status(runtimeId);
        const methods = lines.filter((l) => l.request_id === 'trace-provider').map((l) => l.method);
        expect(methods).toEqual(expect.arrayContaining(['worker.spawn', 'worker.status']));
        await p.destroy(runtimeId);
      } finally {
        await c.close();
      }
    } finally {
      await logged.stop();
    }
  });

  it('refuses malformed bodies after authentication, and unknown routes', async () => {
    const auth = { 'x-worker-id': 'w1', 'x-worker-token': signed() };
    expect((await post(w.url, '{not json', auth)).status).toBe(400);
    expect((await post(w.url, '{not json', {})).status).toBe(401);
    // Without a credential the body is not even read: a large one is refused just the same.
    const big = await post(w.url, 'x'.repeat(4 * 1024 * 1024), {});
    expect(big.status).toBe(401);
    expect(big.body).toMatchObject({ id: null, error: { code: 'unauthorized' } });
    expect((await post(w.url, { id: 'x', method: 'worker.nope', worker_id: 'w1', params: {} }, auth)).status).toBe(400);
    const res = await request(`${w.url}/other`, { method: 'POST', body: '{}' });
    expect(res.statusCode).toBe(404);
    await res.body.text();
  });

  it('runs a sandbox end to end through RemoteProvider', async () => {
    const sb = newSandboxId();
    const { runtimeId } = await provider.spawn({ sandboxId: sb, image: 'host', memoryMb: 64, vcpus: 1, ownerId: null, workerId: 'w1', env: { A: '1' }, labels: {} });
    expect(RemoteProvider.parseHandle(runtimeId)?.sandboxId).toBe(sb);
    expect(await provider.status(runtimeId)).toBe('running');
    await provider.writeFile(runtimeId, '/workspace/x.txt', Buffer.from('hi'));
    const out = await client.call('worker.exec', { ...refOf(runtimeId), ...shell('cat x.txt; echo " $A"') });
    expect(out).toMatchObject({ exit_code: 0, stdout: 'hi 1\n' });
    await provider.destroy(runtimeId);
    expect(await provider.status(runtimeId)).toBe('missing');
  });

  it('a repeated spawn of one sandbox returns the runtime it already made', async () => {
    const sb = newSandboxId();
    const params = spawnParams(sb);
    const a = await client.spawn(params, leases.acquire(sb));
    const b = await client.spawn(params, leases.acquire(sb));
    expect(b.runtime_id).toBe(a.runtime_id);
    await client.destroy({ sandbox_id: sb, provider: 'mock', runtime_id: a.runtime_id }, leases.acquire(sb));
  });

  it("a runtime is not reachable through another sandbox's id", async () => {
    const sb = newSandboxId();
    const { runtime_id } = await client.spawn(spawnParams(sb), leases.acquire(sb));
    const other = newSandboxId();
    expect(await codeOf(() => client.call('worker.file_list', { sandbox_id: other, provider: 'mock', runtime_id, path: '/' }))).toBe('not_found');
    expect((await client.call('worker.status', { sandbox_id: other, provider: 'mock', runtime_id })).status).toBe('missing');
    await client.destroy({ sandbox_id: other, provider: 'mock', runtime_id }, leases.acquire(other));
    expect((await client.call('worker.status', { sandbox_id: sb, provider: 'mock', runtime_id })).status).toBe('running');
    await client.destroy({ sandbox_id: sb, provider: 'mock', runtime_id }, leases.acquire(sb));
  });

  it('reads a file larger than any string the worker could build, chunk by chunk', { timeout: 120_000 }, async () => {
    // 600 MiB is beyond V8's longest string once base64-encoded (~800M chars), so it only
    // arrives if the worker streams it rather than encoding it whole.
    const size = 600 * 1024 * 1024;
    const sb = newSandboxId();
    const { runtimeId } = await provider.spawn({ sandboxId: sb, image: 'host', memoryMb: 64, vcpus: 1, ownerId: null, workerId: 'w1', env: {}, labels: {} });
    try {
      const made = await client.call('worker.exec', { ...refOf(runtimeId), ...shell(`truncate -s ${size} big.bin && printf end >> big.bin`) });
      expect(made.exit_code).toBe(0);
      const hash = createHash('sha256');
      let received = 0;
      let tail = Buffer.alloc(0);
      for await (const chunk of await provider.readFile(runtimeId, '/workspace/big.bin')) {
        const b = chunk as Buffer;
        received += b.length;
        hash.update(b);
        tail = Buffer.concat([tail, b]).subarray(-3);
      }
      expect(received).toBe(size + 3);
      expect(tail.toString()).toBe('end');
      const expected = createHash('sha256');
      const zeros = Buffer.alloc(1024 * 1024);
      for (let i = 0; i < 600; i++) expected.update(zeros);
      expected.update('end');
      expect(hash.digest('hex')).toBe(expected.digest('hex'));
    } finally {
      await provider.destroy(runtimeId);
    }
  });

  it('a file read cut off mid-way fails as unavailable instead of ending short', { timeout: 60_000 }, async () => {
    const d = await startTestWorker();
    const c = new RemoteWorkerClient({ workerId: 'w1', url: d.url, credential: { kind: 'signing_key', keys: [SIGNING_KEY] } });
    try {
      const p = await RemoteProvider.connect(c, 'mock', new TestLeases('w1').supplier);
      const { runtimeId } = await p.spawn({ sandboxId: newSandboxId(), image: 'host', memoryMb: 64, vcpus: 1, ownerId: null, workerId: 'w1', env: {}, labels: {} });
      await c.call('worker.exec', { ...refOf(runtimeId), ...shell('truncate -s 256M big.bin') });
      const stream = await p.readFile(runtimeId, '/workspace/big.bin');
      let received = 0;
      const code = await codeOf(async () => {
        for await (const chunk of stream) {
          if (received === 0) d.server.closeAllConnections();
          received += (chunk as Buffer).length;
        }
      });
      expect(code).toBe('remote_worker_rpc_unavailable');
      expect(received).toBeGreaterThan(0);
      expect(received).toBeLessThan(256 * 1024 * 1024);
      // Errors the worker knows before it starts are ordinary refusals.
      expect(await codeOf(() => p.readFile(runtimeId, '/workspace/none.bin'))).toBe('not_found');
      expect(await codeOf(() => p.readFile(runtimeId, '/workspace'))).toBe('bad_request');
    } finally {
      await c.close();
      await d.stop();
    }
  });

  it('a file read given up before its first chunk frees the connection and the worker', { timeout: 60_000 }, async () => {
    // One connection: a read that kept it would stall every later call to the worker.
    const single = new RemoteWorkerClient({ workerId: 'w1', url: w.url, credential: { kind: 'signing_key', keys: [SIGNING_KEY] }, connections: 1 });
    const p = await RemoteProvider.connect(single, 'mock', leases.supplier);
    const { runtimeId } = await p.spawn({ sandboxId: newSandboxId(), image: 'host', memoryMb: 64, vcpus: 1, ownerId: null, workerId: 'w1', env: {}, labels: {} });
    try {
      await single.call('worker.exec', { ...refOf(runtimeId), ...shell('head -c 32M /dev/zero > big.bin') });
      for (let i = 0; i < 2; i++) (await p.readFile(runtimeId, '/workspace/big.bin')).destroy();
      const answered = await Promise.race([
        p.stat(runtimeId, '/workspace/big.bin').then((e) => e.size),
        new Promise<string>((r) => setTimeout(() => r('stalled'), 10_000)),
      ]);
      expect(answered).toBe(32 * 1024 * 1024);
    } finally {
      await p.destroy(runtimeId);
      await single.close();
    }
  });

  it('drops a reader that takes no data past the stall bound, closing the file', { timeout: 60_000 }, async () => {
    const d = await startTestWorker({ stalledWriteMs: 500 });
    const c = new RemoteWorkerClient({ workerId: 'w1', url: d.url, credential: { kind: 'signing_key', keys: [SIGNING_KEY] } });
    try {
      const p = await RemoteProvider.connect(c, 'mock', new TestLeases('w1').supplier);
      const { runtimeId } = await p.spawn({ sandboxId: newSandboxId(), image: 'host', memoryMb: 64, vcpus: 1, ownerId: null, workerId: 'w1', env: {}, labels: {} });
      await c.call('worker.exec', { ...refOf(runtimeId), ...shell('head -c 64M /dev/zero > big.bin') });
      // A raw request whose reply is not read for a while: the worker's writes stop draining.
      const body = JSON.stringify(createRequest('worker.file_read', 'w1', { ...refOf(runtimeId), path: '/workspace/big.bin' }));
      const outcome = await new Promise<{ complete: boolean; bytes: number }>((resolve, reject) => {
        const req = httpRequest(`${d.url}/rpc`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-worker-id': 'w1', 'x-worker-token': signed() } });
        req.on('response', (res) => {
          expect(res.statusCode).toBe(200);
          res.pause();
          // Well past the bound, the reader comes back: the worker has given up on it by then.
          setTimeout(() => {
            let text = '';
            res.setEncoding('utf8');
            res.on('data', (chunk: string) => (text += chunk));
            const settle = () => resolve({ complete: text.includes('"eof":true'), bytes: text.length });
            res.once('end', settle);
            res.once('aborted', settle);
            res.once('error', settle);
            res.resume();
          }, 2_000);
        });
        req.on('error', reject);
        req.end(body);
      });
      expect(outcome.complete).toBe(false);
      expect(outcome.bytes).toBeLessThan(64 * 1024 * 1024);
    } finally {
      await c.close();
      await d.stop();
    }
  });

  it('keeps a file read alive while its source pauses longer than the idle bound', { timeout: 30_000 }, async () => {
    // A source that pauses (a FIFO, a slow mount) stands in for the file.
    class PausingReads extends MockProvider {
      override async readFile(runtimeId: string, path: string): Promise<Readable> {
        const whole = await readAll(await super.readFile(runtimeId, path));
        // The first chunk has gone out (and with it the reply's headers) before the pause.
        return Readable.from(
          (async function* () {
            yield whole.subarray(0, 6);
            await new Promise((r) => setTimeout(r, 1_500));
            yield whole.subarray(6);
          })(),
        );
      }
    }
    const d = await startTestWorker({ streamKeepaliveMs: 200, provider: (root) => new PausingReads({ root }) });
    const c = new RemoteWorkerClient({ workerId: 'w1', url: d.url, credential: { kind: 'signing_key', keys: [SIGNING_KEY] }, streamIdleTimeoutMs: 700 });
    try {
      const p = await RemoteProvider.connect(c, 'mock', new TestLeases('w1').supplier);
      const { runtimeId } = await p.spawn({ sandboxId: newSandboxId(), image: 'host', memoryMb: 64, vcpus: 1, ownerId: null, workerId: 'w1', env: {}, labels: {} });
      await p.writeFile(runtimeId, '/workspace/slow.txt', Buffer.from('worth the wait'));
      const chunks: Buffer[] = [];
      for await (const chunk of await p.readFile(runtimeId, '/workspace/slow.txt')) chunks.push(chunk as Buffer);
      expect(Buffer.concat(chunks).toString()).toBe('worth the wait');
    } finally {
      await c.close();
      await d.stop();
    }
  });

  it('streams the first exec chunk before the command ends', async () => {
    const sb = newSandboxId();
    const { runtimeId } = await provider.spawn(spec(sb));
    const seen: string[] = [];
    for await (const ev of provider.execStream(runtimeId, { command: 'echo first; while [ ! -f go ]; do sleep 0.05; done; echo second', args: [], mode: 'shell', env: {}, timeoutMs: 15_000 })) {
      if (ev.type === 'stdout') {
        seen.push(ev.data.toString());
        if (seen.join('') === 'first\n') await provider.writeFile(runtimeId, '/workspace/go', Buffer.from('1'));
      } else if (ev.type === 'exit') seen.push(`<exit ${ev.exitCode}>`);
    }
    expect(seen.join('')).toBe('first\nsecond\n<exit 0>');
    await provider.destroy(runtimeId);
  });

  it('keeps a quiet stream alive with keepalive chunks shorter than the idle timeout', async () => {
    const quiet = await startTestWorker({ streamKeepaliveMs: 100 });
    const c = new RemoteWorkerClient({ workerId: 'w1', url: quiet.url, credential: { kind: 'token', token: 'shared-worker-token' }, streamIdleTimeoutMs: 400 });
    try {
      const p = new RemoteProvider({ client: c, provider: 'mock', capabilities: { isolation: 'none', features: [] }, leases: new TestLeases('w1').supplier });
      const { runtimeId } = await p.spawn(spec(newSandboxId()));
      const events = [];
      for await (const ev of p.execStream(runtimeId, { command: 'sleep 1.2; echo done', args: [], mode: 'shell', env: {}, timeoutMs: 10_000 })) events.push(ev);
      expect(events.map((e) => e.type)).toEqual(['stdout', 'exit']);
    } finally {
      await c.close();
      await quiet.stop();
    }
  });

  describe('lease fencing over the wire', () => {
    it('refuses a stale generation, a wrong holder and an expired lease, touching nothing', async () => {
      const sb = newSandboxId();
      const spawnLease: WireLease = { resource_id: sb, holder_id: 'w1', generation: 5, expires_at: toIso(now() + 60_000) };
      const { runtime_id } = await client.spawn(spawnParams(sb), spawnLease);
      const ref = { sandbox_id: sb, provider: 'mock', runtime_id };
      expect(await codeOf(() => client.destroy(ref, { ...spawnLease, generation: 4 }))).toBe('lease_conflict');
      expect(await codeOf(() => client.destroy(ref, { ...spawnLease, generation: 6, holder_id: 'w2' }))).toBe('lease_conflict');
      expect(await codeOf(() => client.destroy(ref, { ...spawnLease, generation: 6, expires_at: toIso(now() - 1000) }))).toBe('lease_conflict');
      expect(await codeOf(() => client.destroy(ref, { ...spawnLease, resource_id: newSandboxId() }))).toBe('lease_conflict');
      expect((await client.call('worker.status', ref)).status).toBe('running');
      // The new owner renews to generation 8; the old owner's generation 6 is now stale too.
      expect(await client.renewLease({ ...spawnLease, generation: 8 })).toMatchObject({ generation: 8 });
      expect(await codeOf(() => client.destroy(ref, { ...spawnLease, generation: 6 }))).toBe('lease_conflict');
      expect((await client.call('worker.status', ref)).status).toBe('running');
      expect(await client.destroy(ref, { ...spawnLease, generation: 8 })).toEqual({ status: 'destroyed' });
      expect((await client.call('worker.status', ref)).status).toBe('missing');
    });

    it('the HTTP status of a fencing refusal is 409', async () => {
      const sb = newSandboxId();
      const lease = { resource_id: sb, holder_id: 'w2', generation: 1, expires_at: toIso(now() + 60_000) };
      const res = await post(w.url, createRequest('worker.spawn', 'w1', spawnParams(sb), lease), { 'x-worker-id': 'w1', 'x-worker-token': signed() });
      expect(res.status).toBe(409);
      expect((res.body as { error: { code: string } }).error.code).toBe('lease_conflict');
    });
  });

  describe('drain', () => {
    it('worker.shutdown refuses new spawns with a typed error while existing sandboxes keep working', async () => {
      const d = await startTestWorker();
      const c = new RemoteWorkerClient({ workerId: 'w1', url: d.url, credential: { kind: 'token', token: 'shared-worker-token' } });
      try {
        const l = new TestLeases('w1');
        const p = new RemoteProvider({ client: c, provider: 'mock', capabilities: { isolation: 'none', features: [] }, leases: l.supplier });
        const { runtimeId } = await p.spawn(spec(newSandboxId()));
        expect(await c.shutdown()).toEqual({ status: 'draining' });
        expect((await c.heartbeat()).status).toBe('draining');
        const err = await p.spawn(spec(newSandboxId())).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(StacyError);
        expect((err as StacyError).code).toBe('unavailable');
        const events = [];
        for await (const ev of p.execStream(runtimeId, { command: 'echo still', args: [], mode: 'shell', env: {}, timeoutMs: 10_000 })) events.push(ev);
        expect(events[0]).toMatchObject({ type: 'stdout' });
        await p.destroy(runtimeId);
        expect(await p.status(runtimeId)).toBe('missing');
      } finally {
        await c.close();
        await d.stop();
      }
    });
  });
});

describe('misbehaving and unreachable workers', () => {
  /** A server answering every request with `reply` (status, content type, body). */
  async function fakeWorker(reply: (body: Record<string, unknown>) => { status: number; body: string; type?: string }) {
    const server = createHttpServer((req, res) => {
      let raw = '';
      req.on('data', (c: Buffer) => (raw += c.toString()));
      req.on('end', () => {
        const r = reply(JSON.parse(raw) as Record<string, unknown>);
        res.writeHead(r.status, { 'content-type': r.type ?? 'application/json' }).end(r.body);
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    return { url, close: () => new Promise<void>((r) => server.close(() => r())) };
  }

  it('a reply that breaks the protocol is internal; a proxy error page is unavailable', async () => {
    const ref = { sandbox_id: newSandboxId(), provider: 'mock', runtime_id: 'rt' };
    const cases: Array<[(b: Record<string, unknown>) => { status: number; body: string; type?: string }, ErrorCode]> = [
      [(b) => ({ status: 200, body: `${JSON.stringify({ id: b.id, result: { stream: 'stdout', data: 'not base64!' } })}\n` }), 'internal'],
      [() => ({ status: 200, body: `${JSON.stringify({ id: 'other', result: { stream: 'stdout', data: 'aGk=' } })}\n` }), 'internal'],
      [(b) => ({ status: 200, body: `${JSON.stringify({ id: b.id, result: { stream: 'stdout', data: 'aGk=' } })}\n` }), 'remote_worker_rpc_unavailable'],
      [(b) => ({ status: 404, body: JSON.stringify({ id: b.id, error: { code: 'not_found', message: 'gone' } }) }), 'not_found'],
      [() => ({ status: 502, body: '<html>bad gateway</html>', type: 'text/html' }), 'remote_worker_rpc_unavailable'],
    ];
    for (const [reply, code] of cases) {
      const fake = await fakeWorker(reply);
      const c = new RemoteWorkerClient({ workerId: 'w1', url: fake.url, credential: { kind: 'token', token: 't' } });
      try {
        expect(await codeOf(async () => {
          for await (const _ of c.execStream({ ...ref, ...shell('true') })) void _;
        })).toBe(code);
      } finally {
        await c.close();
        await fake.close();
      }
    }
  });

  it('a refused connection is 503 remote_worker_rpc_unavailable', async () => {
    const port = await freePort();
    const c = new RemoteWorkerClient({ workerId: 'w1', url: `http://127.0.0.1:${port}`, credential: { kind: 'token', token: 't' } });
    try {
      const err = (await c.heartbeat().catch((e: unknown) => e)) as StacyError;
      expect(err).toBeInstanceOf(StacyError);
      expect(err.code).toBe('remote_worker_rpc_unavailable');
      expect(err.status).toBe(503);
      const p = new RemoteProvider({ client: c, provider: 'mock', capabilities: { isolation: 'none', features: [] }, leases: new TestLeases('w1').supplier });
      expect(await codeOf(() => p.spawn(spec(newSandboxId())))).toBe('remote_worker_rpc_unavailable');
      const health = await p.health();
      expect(health.healthy).toBe(false);
    } finally {
      await c.close();
    }
  });

  it('a worker that accepts but never answers is unavailable after the reply bound, not a hang', async () => {
    const sockets = new Set<Socket>();
    const silent: Server = createServer((s) => sockets.add(s));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    const port = (silent.address() as { port: number }).port;
    const c = new RemoteWorkerClient({ workerId: 'w1', url: `http://127.0.0.1:${port}`, credential: { kind: 'token', token: 't' }, requestTimeoutMs: 300, streamIdleTimeoutMs: 300 });
    try {
      expect(await codeOf(() => c.heartbeat())).toBe('remote_worker_rpc_unavailable');
      const p = new RemoteProvider({ client: c, provider: 'mock', capabilities: { isolation: 'none', features: [] }, leases: new TestLeases('w1').supplier });
      expect(await codeOf(async () => {
        for await (const _ of p.execStream(RemoteProvider.handle(newSandboxId(), 'mock-0000000000000000'), { command: 'true', args: [], mode: 'shell', env: {}, timeoutMs: 1000 })) void _;
      })).toBe('remote_worker_rpc_unavailable');
    } finally {
      await c.close();
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => silent.close(() => r()));
    }
  });

  it('abort() cuts calls in flight (unary and streamed) at once with the reason, well inside their bounds', async () => {
    const sockets = new Set<Socket>();
    const silent: Server = createServer((s) => sockets.add(s));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    const port = (silent.address() as { port: number }).port;
    // Default bounds (60 s reply, 30 s stream idle): only abort() can end these calls quickly.
    const c = new RemoteWorkerClient({ workerId: 'w1', url: `http://127.0.0.1:${port}`, credential: { kind: 'token', token: 't' } });
    try {
      const p = new RemoteProvider({ client: c, provider: 'mock', capabilities: { isolation: 'none', features: [] }, leases: new TestLeases('w1').supplier });
      const unary = c.heartbeat().then(
        () => undefined,
        (e: unknown) => e,
      );
      const streamed = (async () => {
        for await (const _ of p.execStream(RemoteProvider.handle(newSandboxId(), 'mock-0000000000000000'), { command: 'true', args: [], mode: 'shell', env: {}, timeoutMs: 1000 })) void _;
      })().then(
        () => undefined,
        (e: unknown) => e,
      );
      await new Promise((r) => setTimeout(r, 300));
      expect(sockets.size).toBeGreaterThan(0);
      const t0 = Date.now();
      await c.abort('its heartbeat is stale');
      for (const err of [await unary, await streamed]) {
        expect(err).toBeInstanceOf(StacyError);
        expect(err).toMatchObject({ code: 'remote_worker_rpc_unavailable' });
        expect((err as StacyError).message).toContain('its heartbeat is stale');
      }
      expect(Date.now() - t0).toBeLessThan(5_000);
      // A client that was cut stays cut: later calls fail at once the same way.
      expect(await codeOf(() => c.heartbeat())).toBe('remote_worker_rpc_unavailable');
    } finally {
      await c.close();
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => silent.close(() => r()));
    }
  });

  it('a stream that goes silent without keepalives is unavailable after the idle bound, not a hang', async () => {
    const d = await startTestWorker({ streamKeepaliveMs: 60_000 });
    const c = new RemoteWorkerClient({ workerId: 'w1', url: d.url, credential: { kind: 'token', token: 'shared-worker-token' }, streamIdleTimeoutMs: 500 });
    try {
      const p = new RemoteProvider({ client: c, provider: 'mock', capabilities: { isolation: 'none', features: [] }, leases: new TestLeases('w1').supplier });
      const { runtimeId } = await p.spawn(spec(newSandboxId()));
      const types: string[] = [];
      expect(await codeOf(async () => {
        for await (const ev of p.execStream(runtimeId, { command: 'echo started; sleep 5', args: [], mode: 'shell', env: {}, timeoutMs: 10_000 })) types.push(ev.type);
      })).toBe('remote_worker_rpc_unavailable');
      expect(types).toEqual(['stdout']);
    } finally {
      await c.close();
      await d.stop();
    }
  });
});

describe('credential accept/reject matrix', () => {
  // Each method runs against its own worker, so a valid worker.shutdown cannot affect the others.
  let w: TestWorker;
  let leases: TestLeases;
  let admin: RemoteWorkerClient;
  afterEach(async () => {
    await admin?.close();
    await w?.stop();
  });

  const kinds: Array<{ kind: string; headers: () => Record<string, string>; status: number }> = [
    { kind: 'none', headers: () => ({}), status: 401 },
    { kind: 'worker id without token', headers: () => ({ 'x-worker-id': 'w1' }), status: 401 },
    { kind: 'user api key', headers: () => ({ 'x-worker-id': 'w1', authorization: 'Bearer user-api-key' }), status: 401 },
    { kind: 'admin api key', headers: () => ({ 'x-worker-id': 'w1', 'x-worker-token': 'admin-api-key' }), status: 401 },
    { kind: "other worker's static token as w1", headers: () => ({ 'x-worker-id': 'w1', 'x-worker-token': 'static-token-w2' }), status: 401 },
    { kind: "other worker's static token as itself", headers: () => ({ 'x-worker-id': 'w2', 'x-worker-token': 'static-token-w2' }), status: 403 },
    { kind: "other worker's signed token", headers: () => ({ 'x-worker-id': 'w2', 'x-worker-token': signed({ worker_id: 'w2' }) }), status: 403 },
    { kind: "other worker's signed token as w1", headers: () => ({ 'x-worker-id': 'w1', 'x-worker-token': signed({ worker_id: 'w2' }) }), status: 403 },
    { kind: 'expired', headers: () => ({ 'x-worker-id': 'w1', 'x-worker-token': signed({ iat: Math.floor(now() / 1000) - 900, exp: Math.floor(now() / 1000) - 120 }) }), status: 401 },
    {
      kind: 'not yet valid',
      headers: () => ({ 'x-worker-id': 'w1', 'x-worker-token': signed({ iat: Math.floor(now() / 1000) + 300, exp: Math.floor(now() / 1000) + 600 }) }),
      status: 401,
    },
    { kind: 'wrong audience', headers: () => ({ 'x-worker-id': 'w1', 'x-worker-token': signed({ aud: 'worker:control-plane' }) }), status: 403 },
    { kind: 'revoked', headers: () => ({ 'x-worker-id': 'w1', 'x-worker-token': signed({ jti: 'revoked-jti' }) }), status: 401 },
    { kind: 'tampered signature', headers: () => ({ 'x-worker-id': 'w1', 'x-worker-token': tamper(signed()) }), status: 401 },
    { kind: 'signed with an unknown key', headers: () => ({ 'x-worker-id': 'w1', 'x-worker-token': signed({}, 'another-key-'.padEnd(40, 'y')) }), status: 401 },
    { kind: 'signed without the method scope', headers: () => ({ 'x-worker-id': 'w1', 'x-worker-token': signed({ scopes: [] }) }), status: 403 },
    { kind: 'valid signed', headers: () => ({ 'x-worker-id': 'w1', 'x-worker-token': signed() }), status: 200 },
    { kind: 'valid signed as bearer', headers: () => ({ 'x-worker-id': 'w1', authorization: `Bearer ${signed()}` }), status: 200 },
    { kind: 'valid shared static', headers: () => ({ 'x-worker-id': 'w1', 'x-worker-token': 'shared-worker-token' }), status: 200 },
  ];

  it.each(WORKER_METHODS)('%s accepts only a valid credential for this worker', async (method) => {
    w = await startTestWorker({ auth: { revokedTokenIds: ['revoked-jti'] } });
    leases = new TestLeases('w1');
    admin = new RemoteWorkerClient({ workerId: 'w1', url: w.url, credential: { kind: 'signing_key', keys: [SIGNING_KEY] } });
    const results: Array<{ kind: string; status: number; expected: number }> = [];
    for (const k of kinds) {
      const { body, lease } = await validCall(method, admin, leases);
      const res = await post(w.url, createRequest(method, 'w1', body as never, lease), k.headers());
      results.push({ kind: k.kind, status: res.status, expected: k.status });
      if (res.status !== k.status) console.error(method, k.kind, res.body);
      if (k.status !== 200) expect((res.body as { error: { code: string } }).error.code).toBe(k.status === 401 ? 'unauthorized' : 'forbidden');
    }
    expect(results.filter((r) => r.status !== r.expected)).toEqual([]);
  });
});

describe.skipIf(!hostSupports('worker RPC mTLS', hasBinary('openssl')))('mTLS', () => {
  let dir: string;
  let w: TestWorker;
  const pem = (name: string) => readFileSync(join(dir, name));

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'stacyvm-mtls-'));
    makeTestPki(dir);
    w = await startTestWorker({ tls: { cert: pem('server.crt'), key: pem('server.key'), clientCa: pem('ca.crt') } });
  });
  afterAll(async () => {
    await w?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const clientWith = (tls: RemoteWorkerTlsOptions) =>
    new RemoteWorkerClient({ workerId: 'w1', url: w.url, credential: { kind: 'token', token: 'shared-worker-token' }, tls });

  it('accepts a client certificate signed by the client CA', async () => {
    expect(w.url.startsWith('https://')).toBe(true);
    const c = clientWith({ ca: pem('ca.crt'), cert: pem('client.crt'), key: pem('client.key') });
    try {
      expect((await c.heartbeat()).worker_id).toBe('w1');
      // Verifying against a name in the certificate instead of the address works too.
      const named = clientWith({ ca: pem('ca.crt'), cert: pem('client.crt'), key: pem('client.key'), serverName: 'worker.test' });
      expect((await named.heartbeat()).status).toBe('online');
      await named.close();
    } finally {
      await c.close();
    }
  });

  it('refuses a client without a certificate or with one from another CA', async () => {
    for (const tls of [{ ca: pem('ca.crt') }, { ca: pem('ca.crt'), cert: pem('rogue.crt'), key: pem('rogue.key') }]) {
      const c = clientWith(tls);
      try {
        expect(await codeOf(() => c.heartbeat())).toBe('remote_worker_rpc_unavailable');
      } finally {
        await c.close();
      }
    }
  });

  it('the client refuses a server it cannot verify', async () => {
    const c = clientWith({ ca: pem('rogue-ca.crt'), cert: pem('client.crt'), key: pem('client.key') });
    try {
      expect(await codeOf(() => c.heartbeat())).toBe('remote_worker_rpc_unavailable');
    } finally {
      await c.close();
    }
  });
});

function tamper(token: string): string {
  const last = token.at(-2) === 'A' ? 'B' : 'A';
  return `${token.slice(0, -2)}${last}${token.at(-1)}`;
}

function spawnParams(sandboxId: string): ParamsOf<'worker.spawn'> {
  return { sandbox_id: sandboxId, provider: 'mock', image: 'host', memory_mb: 64, vcpus: 1, owner_id: null, env: {}, labels: {} };
}

function spec(sandboxId: string) {
  return { sandboxId, image: 'host', memoryMb: 64, vcpus: 1, ownerId: null, workerId: 'w1', env: {}, labels: {} };
}

function refOf(handle: string) {
  const h = RemoteProvider.parseHandle(handle);
  if (h === undefined) throw new Error(`not a handle: ${handle}`);
  return { sandbox_id: h.sandboxId, provider: 'mock', runtime_id: h.runtimeId };
}

/** Params (and lease) that succeed for `method` with a valid credential, on a fresh sandbox where it matters. */
async function validCall(method: WorkerMethod, client: RemoteWorkerClient, leases: TestLeases): Promise<{ body: unknown; lease?: WireLease }> {
  const sb = newSandboxId();
  if (method === 'worker.spawn') return { body: spawnParams(sb), lease: leases.acquire(sb) };
  if (method === 'worker.heartbeat' || method === 'worker.shutdown') return { body: {} };
  const { runtime_id } = await client.spawn(spawnParams(sb), leases.acquire(sb));
  const ref = { sandbox_id: sb, provider: 'mock', runtime_id };
  await client.call('worker.file_write', { ...ref, path: '/workspace/f.txt', content: Buffer.from('x').toString('base64') });
  const lease = methodNeedsLease(method) ? leases.acquire(sb) : undefined;
  const bodies: Partial<Record<WorkerMethod, unknown>> = {
    'worker.destroy': ref,
    'worker.status': ref,
    'worker.exec': { ...ref, ...shell('true') },
    'worker.exec_stream': { ...ref, ...shell('true') },
    'worker.file_write': { ...ref, path: '/workspace/g.txt', content: '' },
    'worker.file_read': { ...ref, path: '/workspace/f.txt' },
    'worker.file_list': { ...ref, path: '/workspace' },
    'worker.file_delete': { ...ref, path: '/workspace/f.txt', recursive: false },
    'worker.file_move': { ...ref, old_path: '/workspace/f.txt', new_path: '/workspace/h.txt' },
    'worker.file_chmod': { ...ref, path: '/workspace/f.txt', mode: 0o600 },
    'worker.file_stat': { ...ref, path: '/workspace/f.txt' },
    'worker.file_glob': { ...ref, pattern: '/workspace/*' },
    'worker.logs': { ...ref, lines: 10 },
    'worker.renew_lease': { resource_id: sb },
    'worker.inventory': { provider: 'mock' },
  };
  if (!(method in bodies)) throw new Error(`no valid call for ${method}`);
  return { body: bodies[method], ...(lease ? { lease } : {}) };
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

