/**
 * Hostile and malformed input against the real server: every request gets its documented 4xx
 * `{code, message}`, the server stays healthy, nothing outside the sandbox is read or written,
 * and no half-made record is left in the store.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore } from '../../src/store/index.js';
import { type ServerProcess, call, removeDir, startServerProcess } from './server-process.js';

const BODY_LIMIT = 64 * 1024;
let server: ServerProcess;
let id: string;
let outside: string;
const CANARY = 'canary-contents-outside-the-sandbox';

beforeAll(async () => {
  server = await startServerProcess({ env: { STACYVM_SERVER_BODY_LIMIT: String(BODY_LIMIT) } });
  id = (await call('POST', `${server.api}/sandboxes`, {})).body.id;
  outside = await mkdtemp(join(tmpdir(), 'stacyvm-outside-'));
  await writeFile(join(outside, 'canary.txt'), CANARY);
});
afterAll(async () => {
  await server?.stop();
  if (server) await removeDir(server.dataDir);
  if (outside) await rm(outside, { recursive: true, force: true });
});

async function expectError(res: { status: number; body: unknown; text: string }, status: number, code: string) {
  expect(res.status, res.text).toBe(status);
  expect(res.body).toEqual({ code, message: expect.any(String) });
  expect(res.text).not.toContain(CANARY);
  expect((await call('GET', `${server.api}/health`)).status).toBe(200);
}

async function sandboxRecordCount(): Promise<number> {
  const store = openStore({ driver: 'sqlite', path: join(server.dataDir, 'stacyvm.db') });
  try {
    return (await store.listSandboxes()).length;
  } finally {
    await store.close();
  }
}

describe('bad input', () => {
  it('malformed JSON on every JSON route is 400 bad_request', async () => {
    const routes = [
      '/sandboxes',
      '/sandboxes/admission',
      `/sandboxes/${id}/exec`,
      `/sandboxes/${id}/extend`,
      `/sandboxes/${id}/files`,
      `/sandboxes/${id}/files/move`,
      `/sandboxes/${id}/files/chmod`,
      '/templates',
      '/templates/x/spawn',
      '/admin/workers/w1/heartbeat',
    ];
    for (const r of routes) {
      await expectError(await call('POST', `${server.api}${r}`, '{"command": "echo", '), 400, 'bad_request');
      await expectError(await call('POST', `${server.api}${r}`, '[1,2'), 400, 'bad_request');
    }
    await expectError(await call('PUT', `${server.api}/quotas/alice`, '{{'), 400, 'bad_request');
  });

  it('wrong types, bad durations and negative sizes are 400 and create nothing', async () => {
    const before = await sandboxRecordCount();
    const bodies: unknown[] = [
      { ttl: '10 minutes' },
      { ttl: '-1s' },
      { ttl: 600 },
      { memory_mb: -1 },
      { memory_mb: '512' },
      { memory_mb: 1.5 },
      { vcpus: 0 },
      { metadata: 'x' },
      { metadata: { k: 1 } },
      { image: 42 },
      { provider: 'nope' },
      { memory_mb: 10_000_000 },
      { owner_id: 'a/b' },
      [],
      'null',
    ];
    for (const b of bodies) await expectError(await call('POST', `${server.api}/sandboxes`, b), 400, 'bad_request');
    expect(await sandboxRecordCount()).toBe(before);

    const execBodies: unknown[] = [{}, { command: 1 }, { command: 'x', args: 'y' }, { command: 'x', mode: 'zsh' }, { command: 'x', timeout: '10 minutes' }, { command: 'x', timeout: '-1s' }, { command: 'x', env: { A: 1 } }, { command: 'x', stream: 'yes' }, { command: 'a\u0000b' }];
    for (const b of execBodies) await expectError(await call('POST', `${server.api}/sandboxes/${id}/exec`, b), 400, 'bad_request');
    await expectError(await call('POST', `${server.api}/sandboxes/${id}/extend`, { ttl: '10 minutes' }), 400, 'bad_request');
    await expectError(await call('POST', `${server.api}/sandboxes/${id}/extend`, { ttl: '-1s' }), 400, 'bad_request');
    await expectError(await call('GET', `${server.api}/sandboxes/${id}/logs?lines=-5`), 400, 'bad_request');
    await expectError(await call('POST', `${server.api}/templates`, { name: 'bad name!' }), 400, 'bad_request');
    await expectError(await call('POST', `${server.api}/templates`, { name: 't', ttl: '1 hour' }), 400, 'bad_request');
    await expectError(await call('PUT', `${server.api}/quotas/alice`, { max_sandboxes: -1 }), 400, 'bad_request');
    await expectError(await call('GET', `${server.api}/sandboxes`, undefined, { 'x-user-id': 'a b' }), 400, 'bad_request');
  });

  it('unknown ids and routes are 404 not_found', async () => {
    const missing = 'sb-00000000';
    await expectError(await call('GET', `${server.api}/sandboxes/${missing}`), 404, 'not_found');
    await expectError(await call('POST', `${server.api}/sandboxes/${missing}/exec`, { command: 'true' }), 404, 'not_found');
    await expectError(await call('POST', `${server.api}/sandboxes/${missing}/exec`, { command: 'true', stream: true }), 404, 'not_found');
    await expectError(await call('POST', `${server.api}/sandboxes/${missing}/extend`, { ttl: '1m' }), 404, 'not_found');
    await expectError(await call('GET', `${server.api}/sandboxes/${missing}/files?path=/x`), 404, 'not_found');
    await expectError(await call('GET', `${server.api}/sandboxes/${missing}/logs`), 404, 'not_found');
    await expectError(await call('GET', `${server.api}/sandboxes/../../etc/passwd`), 404, 'not_found');
    await expectError(await call('GET', `${server.api}/templates/ghost`), 404, 'not_found');
    await expectError(await call('POST', `${server.api}/templates/ghost/spawn`, {}), 404, 'not_found');
    await expectError(await call('GET', `${server.api}/providers/ghost`), 404, 'not_found');
    await expectError(await call('GET', `${server.api}/workers/ghost`), 404, 'not_found');
    await expectError(await call('GET', `${server.api}/no/such/route`), 404, 'not_found');
    await expectError(await call('GET', `${server.api}/sandboxes/${id}/files?path=/workspace/missing.txt`), 404, 'not_found');
  });

  it('bodies over the limit are 413 payload_too_large', async () => {
    const before = await sandboxRecordCount();
    const huge = { metadata: { blob: 'x'.repeat(BODY_LIMIT * 2) } };
    await expectError(await call('POST', `${server.api}/sandboxes`, huge), 413, 'payload_too_large');
    await expectError(await call('POST', `${server.api}/sandboxes/${id}/files`, { path: '/workspace/big', content: 'x'.repeat(BODY_LIMIT * 2) }), 413, 'payload_too_large');
    await expectError(await call('POST', `${server.api}/sandboxes/${id}/exec`, { command: 'x'.repeat(BODY_LIMIT * 2) }), 413, 'payload_too_large');
    expect(await sandboxRecordCount()).toBe(before);
  });

  it('path traversal and NUL bytes are 400 on every file route', async () => {
    const paths = ['../../etc/passwd', '/workspace/../../etc/passwd', '/../etc/passwd', 'etc/passwd', '/work\u0000space/x'];
    for (const p of paths) {
      const q = encodeURIComponent(p);
      await expectError(await call('GET', `${server.api}/sandboxes/${id}/files?path=${q}`), 400, 'bad_request');
      await expectError(await call('GET', `${server.api}/sandboxes/${id}/files/stat?path=${q}`), 400, 'bad_request');
      await expectError(await call('GET', `${server.api}/sandboxes/${id}/files/list?path=${q}`), 400, 'bad_request');
      await expectError(await call('DELETE', `${server.api}/sandboxes/${id}/files?path=${q}`), 400, 'bad_request');
      await expectError(await call('POST', `${server.api}/sandboxes/${id}/files`, { path: p, content: 'x' }), 400, 'bad_request');
      await expectError(await call('POST', `${server.api}/sandboxes/${id}/files/move`, { old_path: '/workspace/a', new_path: p }), 400, 'bad_request');
      await expectError(await call('POST', `${server.api}/sandboxes/${id}/files/chmod`, { path: p, mode: '644' }), 400, 'bad_request');
    }
    await expectError(await call('GET', `${server.api}/sandboxes/${id}/files/glob?pattern=${encodeURIComponent('/../../etc/*')}`), 400, 'bad_request');
    await expectError(await call('POST', `${server.api}/sandboxes/${id}/exec`, { command: 'true', workdir: '/../..' }), 400, 'bad_request');
  });

  it('symlinks pointing out of the sandbox never reach the host', async () => {
    const canary = join(outside, 'canary.txt');
    // The mock runs host processes, so links are made relative to the sandbox's workspace.
    const mk = await call('POST', `${server.api}/sandboxes/${id}/exec`, { command: `ln -sf ${canary} link-file && ln -sfn ${outside} link-dir`, workdir: '/workspace' });
    expect(mk.body.exit_code, mk.text).toBe(0);

    for (const p of ['/workspace/link-file', '/workspace/link-dir/canary.txt']) {
      const q = encodeURIComponent(p);
      await expectError(await call('GET', `${server.api}/sandboxes/${id}/files?path=${q}`), 400, 'bad_request');
      await expectError(await call('POST', `${server.api}/sandboxes/${id}/files/chmod`, { path: p, mode: '777' }), 400, 'bad_request');
    }
    await expectError(await call('POST', `${server.api}/sandboxes/${id}/files`, { path: '/workspace/link-dir/canary.txt', content: 'overwritten' }), 400, 'bad_request');
    // Writing to the link's own name may replace the link inside the sandbox; it must never follow it.
    const replace = await call('POST', `${server.api}/sandboxes/${id}/files`, { path: '/workspace/link-file', content: 'overwritten' });
    expect([200, 400]).toContain(replace.status);
    await expectError(await call('POST', `${server.api}/sandboxes/${id}/files`, { path: '/workspace/link-dir/new.txt', content: 'x' }), 400, 'bad_request');
    await expectError(await call('GET', `${server.api}/sandboxes/${id}/files/list?path=/workspace/link-dir`), 400, 'bad_request');
    expect(await readFile(canary, 'utf8')).toBe(CANARY);
    await expect(readFile(join(outside, 'new.txt'))).rejects.toThrow();
  });

  it('stays healthy and consistent afterwards', async () => {
    expect((await call('GET', `${server.api}/ready`)).status).toBe(200);
    const ex = await call('POST', `${server.api}/sandboxes/${id}/exec`, { command: 'echo ok' });
    expect(ex.body.stdout).toBe('ok\n');
    const store = openStore({ driver: 'sqlite', path: join(server.dataDir, 'stacyvm.db') });
    try {
      const records = await store.listSandboxes();
      expect(records.filter((r) => r.state === 'creating' || r.state === 'error')).toEqual([]);
    } finally {
      await store.close();
    }
  });
});
