/**
 * The real server process driven over HTTP: the README quick start, streaming, files, the
 * worker registry across a clean stop, Prometheus exposition and the CLI's exit codes.
 */
import { execFile } from 'node:child_process';
import { request as httpRequest } from 'node:http';
import { promisify } from 'node:util';
import { join } from 'node:path';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore } from '../../src/store/index.js';
import { CLI, type ServerProcess, call, removeDir, startServerProcess } from './server-process.js';

const run = promisify(execFile);
let server: ServerProcess;

/** How many host processes run exactly `sleep <marker>` (mock commands are host processes). */
async function sleepers(marker: string): Promise<number> {
  const { stdout } = await run('ps', ['-eo', 'args=']);
  return stdout.split('\n').filter((l) => l.trim() === `sleep ${marker}`).length;
}

beforeAll(async () => {
  server = await startServerProcess();
});
afterAll(async () => {
  await server?.stop();
  if (server) await removeDir(server.dataDir);
});

describe('quick start over HTTP', () => {
  it('spawns, runs echo 42, writes and reads a file, destroys', async () => {
    const sb = await call('POST', `${server.api}/sandboxes`, {});
    expect(sb.status).toBe(201);
    expect(sb.body).toMatchObject({ state: 'running', provider: 'mock', worker_id: 'local' });
    expect(sb.body.id).toMatch(/^sb-[0-9a-f]{8}$/);
    const id = sb.body.id as string;

    const ex = await call('POST', `${server.api}/sandboxes/${id}/exec`, { command: 'echo 42' });
    expect(ex.status).toBe(200);
    expect(ex.body).toMatchObject({ exit_code: 0, stdout: '42\n', stderr: '' });
    expect(ex.body.duration).toMatch(/^[0-9.]+(ms|s)$/);

    const nonzero = await call('POST', `${server.api}/sandboxes/${id}/exec`, { command: 'sh', args: ['-c', 'exit 5'], mode: 'argv' });
    expect(nonzero.status).toBe(200);
    expect(nonzero.body.exit_code).toBe(5);

    const w = await call('POST', `${server.api}/sandboxes/${id}/files`, { path: '/workspace/hello.txt', content: 'hello world', mode: '600' });
    expect(w.body).toEqual({ status: 'written' });
    const r = await fetch(`${server.api}/sandboxes/${id}/files?path=/workspace/hello.txt`);
    expect(r.headers.get('content-type')).toBe('application/octet-stream');
    expect(await r.text()).toBe('hello world');
    const st = await call('GET', `${server.api}/sandboxes/${id}/files/stat?path=/workspace/hello.txt`);
    expect(st.body).toMatchObject({ name: 'hello.txt', size: 11, is_dir: false, mode: '0600' });

    const d = await call('DELETE', `${server.api}/sandboxes/${id}`);
    expect(d.body).toEqual({ status: 'destroyed' });
    expect((await call('DELETE', `${server.api}/sandboxes/${id}`)).status).toBe(200);
    const list = await call('GET', `${server.api}/sandboxes`);
    expect(list.body.map((s: { id: string }) => s.id)).not.toContain(id);
  });

  it('streams the first chunk before the command ends', async () => {
    const id = (await call('POST', `${server.api}/sandboxes`, {})).body.id as string;
    // The command prints, then blocks until the test has seen that first chunk and creates a file.
    const gate = `gate-${Date.now()}`;
    const res = await fetch(`${server.api}/sandboxes/${id}/exec`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ command: `echo first; i=0; while [ ! -e ${gate} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; echo second >&2; exit 3`, stream: true, workdir: '/workspace' }),
      signal: AbortSignal.timeout(30_000),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('application/x-ndjson');
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let text = '';
    while (!text.includes('\n')) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    expect(JSON.parse(text.split('\n')[0] as string)).toEqual({ stream: 'stdout', data: 'first\n' });
    // Only now does the command get to finish: the first chunk provably arrived before its end.
    await call('POST', `${server.api}/sandboxes/${id}/files`, { path: `/workspace/${gate}`, content: '' });
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    const lines = text.trim().split('\n').map((l) => JSON.parse(l));
    expect(lines).toContainEqual({ stream: 'stderr', data: 'second\n' });
    const last = lines.at(-1);
    expect(last).toMatchObject({ stream: 'exit', data: '', exit_code: 3 });
    expect(typeof last.duration).toBe('string');
    await call('DELETE', `${server.api}/sandboxes/${id}`);
  });

  it('kills the command when the streaming client disconnects', async () => {
    const id = (await call('POST', `${server.api}/sandboxes`, {})).body.id as string;
    const marker = `${58 + Math.floor(Math.random() * 1000) / 1000}`;
    // A plain socket that is destroyed outright: an unambiguous client disconnect.
    const req = httpRequest(`${server.api}/sandboxes/${id}/exec`, { method: 'POST', headers: { 'content-type': 'application/json' } });
    const firstChunk = new Promise<string>((resolve, reject) => {
      req.on('response', (res) => res.once('data', (d: Buffer) => resolve(d.toString())));
      req.on('error', reject);
    });
    req.end(JSON.stringify({ command: `echo started; exec sleep ${marker}`, stream: true }));
    expect(await firstChunk).toContain('started');
    expect(await sleepers(marker)).toBe(1);
    req.destroy();
    for (let i = 0; i < 100 && (await sleepers(marker)) > 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect(await sleepers(marker)).toBe(0);
    await call('DELETE', `${server.api}/sandboxes/${id}`);
  });

  it('reports a timeout mid-stream as a final error line', async () => {
    const id = (await call('POST', `${server.api}/sandboxes`, {})).body.id as string;
    const res = await call('POST', `${server.api}/sandboxes/${id}/exec`, { command: 'echo start; sleep 5', timeout: '500ms', stream: true });
    const lines = res.text.trim().split('\n').map((l) => JSON.parse(l));
    expect(lines[0]).toEqual({ stream: 'stdout', data: 'start\n' });
    expect(lines.at(-1)).toMatchObject({ stream: 'error', code: 'timeout' });
    const buffered = await call('POST', `${server.api}/sandboxes/${id}/exec`, { command: 'sleep 5', timeout: '300ms' });
    expect(buffered.status).toBe(408);
    expect(buffered.body.code).toBe('timeout');
    await call('DELETE', `${server.api}/sandboxes/${id}`);
  });

  it('answers the system routes', async () => {
    expect((await call('GET', `${server.api}/live`)).body).toMatchObject({ status: 'alive' });
    expect((await call('GET', `${server.api}/health`)).body).toMatchObject({ status: 'ok' });
    expect((await call('GET', `${server.api}/ready`)).status).toBe(200);
    const openapi = await call('GET', `${server.api}/openapi.json`);
    expect(openapi.body.openapi).toMatch(/^3\./);
    const diag = (await call('GET', `${server.api}/diagnostics`)).body;
    expect(diag.workers).toMatchObject({ total: 1, online: 1, stale: 0 });
    expect(diag.scheduler.worker_id).toBe('local');
    expect(diag.sandboxes).toHaveProperty('by_worker');
    expect(diag.leases).toHaveProperty('by_holder');
  });
});

describe('events', () => {
  it('streams lifecycle events as SSE', async () => {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 20_000);
    try {
      const res = await fetch(`${server.api}/events`, { signal: abort.signal });
      expect(res.headers.get('content-type')).toContain('text/event-stream');
      const reader = (res.body as ReadableStream<Uint8Array>).getReader();
      const decoder = new TextDecoder();
      let text = decoder.decode((await reader.read()).value);
      const id = (await call('POST', `${server.api}/sandboxes`, {})).body.id as string;
      while (!text.includes(`"sandbox_id":"${id}"`)) text += decoder.decode((await reader.read()).value);
      const frame = text.split('\n\n').find((f) => f.includes(id)) ?? '';
      expect(frame).toContain('event: sandbox.spawned');
      const data = JSON.parse(/^data: (.*)$/m.exec(frame)?.[1] ?? '{}');
      expect(data).toMatchObject({ type: 'sandbox.spawned', sandbox_id: id });
      expect(data.time).toMatch(/^\d{4}-\d{2}-\d{2}T/);
      await reader.cancel();
      await call('DELETE', `${server.api}/sandboxes/${id}`);
    } finally {
      clearTimeout(timer);
    }
  });
});

describe('workers and metrics', () => {
  it('lists the local worker online and not stale', async () => {
    const list = await call('GET', `${server.api}/workers`);
    expect(list.status).toBe(200);
    const local = list.body.find((w: { id: string }) => w.id === 'local');
    expect(local).toMatchObject({ id: 'local', status: 'online', stale: false });
    expect(local.providers).toContain('mock');
    expect((await call('GET', `${server.api}/workers/local`)).body.stale).toBe(false);
    expect((await call('GET', `${server.api}/workers/nope`)).status).toBe(404);
  });

  it('exposes the seed metric names in valid Prometheus text', async () => {
    const id = (await call('POST', `${server.api}/sandboxes`, {})).body.id as string;
    const res = await fetch(`${server.api}/metrics/prometheus`);
    expect(res.headers.get('content-type')).toContain('text/plain');
    const families = parsePrometheusTextFormat(await res.text());
    const byName = new Map(families.map((f) => [f.name, f]));
    const labels = (name: string, label: string) => (byName.get(name)?.metrics ?? []).map((m) => m.labels?.[label]);
    expect(labels('stacyvm_workers_total', 'status')).toEqual(expect.arrayContaining(['total', 'online', 'stale', 'unhealthy']));
    expect(labels('stacyvm_leases_total', 'status')).toEqual(expect.arrayContaining(['active', 'expired', 'total']));
    const byWorker = byName.get('stacyvm_sandboxes_by_worker_total')?.metrics.find((m) => m.labels?.worker === 'local');
    expect(Number(byWorker?.value)).toBeGreaterThanOrEqual(1);
    const admin = await fetch(`${server.api}/admin/metrics/prometheus`);
    expect(admin.status).toBe(200);
    await call('DELETE', `${server.api}/sandboxes/${id}`);
  });
});

describe('CLI against the running server', () => {
  const cli = async (args: string[]) => {
    try {
      const r = await run(process.execPath, [CLI, '--server', server.url, ...args], { timeout: 30_000 });
      return { code: 0, stdout: r.stdout, stderr: r.stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  };

  it('spawn, exec with the command exit code, list, kill, clear errors', async () => {
    const spawned = await cli(['spawn', '--ttl', '10m', '--memory', '256']);
    expect(spawned.code).toBe(0);
    const id = spawned.stdout.trim();
    expect(id).toMatch(/^sb-[0-9a-f]{8}$/);
    const ex = await cli(['exec', id, '--', 'sh', '-c', 'echo out; echo err >&2; exit 7']);
    expect(ex).toMatchObject({ code: 7, stdout: 'out\n', stderr: 'err\n' });
    const argv = await cli(['exec', id, '--', 'echo', '$(id)', ';', 'x']);
    expect(argv).toMatchObject({ code: 0, stdout: '$(id) ; x\n' });
    const shell = await cli(['exec', id, '--shell', '--', 'echo $((6*7))']);
    expect(shell).toMatchObject({ code: 0, stdout: '42\n' });
    expect((await cli(['list'])).stdout).toContain(id);
    expect(await cli(['kill', id])).toMatchObject({ code: 0 });
    const missing = await cli(['exec', 'sb-00000000', '--', 'true']);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr.trim()).toBe('error: not_found: sandbox "sb-00000000" not found');
    const bad = await cli(['spawn', '--ttl', '10 minutes']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/^error: bad_request: /);
    const version = await cli(['version']);
    expect(version.stdout.trim()).toMatch(/^stacyvm \d+\.\d+\.\d+/);
  });
});

describe('serve refuses to start on bad configuration', () => {
  it('lists every config problem and exits 2; a taken port is a one-line error', async () => {
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('STACYVM_')) env[k] = v;
    const bad = await run(process.execPath, [CLI, 'serve'], {
      env: { ...env, STACYVM_SERVER_PORT: 'abc', STACYVM_DEFAULTS_TTL: '10 minutes', STACYVM_DATA_DIR: server.dataDir },
      timeout: 30_000,
    }).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => ({ code: e.code, stderr: e.stderr }),
    );
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('server.port');
    expect(bad.stderr).toContain('defaults.ttl');
    const port = new URL(server.url).port;
    const taken = await run(process.execPath, [CLI, 'serve'], {
      env: { ...env, STACYVM_SERVER_PORT: port, STACYVM_DATA_DIR: `${server.dataDir}/second`, STACYVM_DATABASE_PATH: `${server.dataDir}/second/db.sqlite`, STACYVM_PROVIDERS_OCI_ENABLED: 'false', STACYVM_PROVIDERS_DEFAULT: 'mock', STACYVM_LOGGING_LEVEL: 'silent' },
      timeout: 30_000,
    }).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => ({ code: e.code, stderr: e.stderr }),
    );
    expect(taken.code).not.toBe(0);
    expect(taken.stderr.trim()).toMatch(/^error: .*EADDRINUSE/);
  });
});

describe('clean stop', () => {
  it('marks the local worker offline on SIGTERM', async () => {
    const own = await startServerProcess();
    try {
      expect((await call('GET', `${own.api}/workers/local`)).body.status).toBe('online');
      // A command still streaming at shutdown is ended with a final error line, not waited on.
      const id = (await call('POST', `${own.api}/sandboxes`, {})).body.id as string;
      const marker = `${57 + Math.floor(Math.random() * 1000) / 1000}`;
      const res = await fetch(`${own.api}/sandboxes/${id}/exec`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ command: `echo started; exec sleep ${marker}`, stream: true }),
        signal: AbortSignal.timeout(30_000),
      });
      const reader = (res.body as ReadableStream<Uint8Array>).getReader();
      const decoder = new TextDecoder();
      let text = decoder.decode((await reader.read()).value);
      expect(text).toContain('started');
      const stopped = own.stop();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += decoder.decode(value, { stream: true });
      }
      expect(await stopped).toBe(0);
      expect(JSON.parse(text.trim().split('\n').at(-1) as string)).toMatchObject({ stream: 'error', code: 'unavailable' });
      expect(await sleepers(marker)).toBe(0);
      const store = openStore({ driver: 'sqlite', path: join(own.dataDir, 'stacyvm.db') });
      try {
        const rec = await store.getWorker('local');
        expect(rec?.status).toBe('offline');
      } finally {
        await store.close();
      }
    } finally {
      await own.kill9();
      await removeDir(own.dataDir);
    }
  });
});
