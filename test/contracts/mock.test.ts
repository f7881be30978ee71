import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collectExec } from '../../src/providers/exec-util.js';
import { MockProvider, mockRootFrom } from '../../src/providers/mock/mock-provider.js';
import type { ExecRequest, SpawnSpec } from '../../src/providers/provider.js';
import { expectCode, providerContract } from './provider.contract.js';

providerContract('mock', async () => {
  const root = await mkdtemp(join(tmpdir(), 'stacyvm-mock-contract-'));
  const provider = new MockProvider({ root });
  return {
    provider,
    image: 'host',
    cleanup: async () => {
      await provider.close();
      await rm(root, { recursive: true, force: true });
    },
  };
});

/** PIDs of host processes whose command line is exactly `commandLine` (read from /proc). */
async function hostProcessesRunning(commandLine: string): Promise<string[]> {
  const found: string[] = [];
  for (const pid of (await readdir('/proc')).filter((n) => /^\d+$/.test(n))) {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.split('\0').filter((a) => a !== '').join(' ') === commandLine) found.push(pid);
  }
  return found;
}

const spec: SpawnSpec = {
  sandboxId: 'sb-0123abcd',
  image: 'host',
  memoryMb: 64,
  vcpus: 1,
  ownerId: 'owner-1',
  workerId: 'local',
  env: {},
  labels: { team: 'a' },
};
const shell = (command: string, extra: Partial<ExecRequest> = {}): ExecRequest => ({ command, args: [], mode: 'shell', env: {}, timeoutMs: 10_000, ...extra });

describe('mock provider specifics', () => {
  let root: string;
  let hostDir: string;
  let provider: MockProvider;
  let rt: string;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'stacyvm-mock-'));
    hostDir = await mkdtemp(join(tmpdir(), 'stacyvm-mock-host-'));
    await writeFile(join(hostDir, 'secret'), 'HOST');
    provider = new MockProvider({ root });
    rt = (await provider.spawn(spec)).runtimeId;
  });

  afterAll(async () => {
    await provider.close();
    await rm(root, { recursive: true, force: true });
    await rm(hostDir, { recursive: true, force: true });
  });

  it('says isolation none in capabilities and health', async () => {
    expect(provider.capabilities.isolation).toBe('none');
    const health = await provider.health();
    expect(health.healthy).toBe(true);
    expect(health.details.isolation).toBe('none');
  });

  it('is unhealthy when its root cannot be used', async () => {
    const file = join(root, 'not-a-dir');
    await writeFile(file, 'x');
    const broken = new MockProvider({ root: join(file, 'sub') });
    const health = await broken.health();
    expect(health.healthy).toBe(false);
    expect(health.error).toMatch(/not writable/);
    expect(health.details.isolation).toBe('none');
  });

  it('defaults its root to <dataDir>/mock', () => {
    expect(mockRootFrom({ dataDir: '/data', providers: { mock: { enabled: true, root: '' } } } as never)).toBe('/data/mock');
    expect(mockRootFrom({ dataDir: '/data', providers: { mock: { enabled: true, root: '/elsewhere' } } } as never)).toBe('/elsewhere');
  });

  it('keeps its bookkeeping outside the sandbox filesystem', async () => {
    expect((await provider.listFiles(rt, '/')).map((e) => e.name)).toEqual(['tmp', 'workspace']);
  });

  it('writes lifecycle lines to the console log', async () => {
    await collectExec(provider.execStream(rt, shell('exit 5')));
    const lines = await provider.consoleLog(rt, 100);
    expect(lines[0]).toMatch(/spawned sandbox=sb-0123abcd/);
    expect(lines.some((l) => l.includes('exec exited code=5'))).toBe(true);
    expect(await provider.consoleLog(rt, 1)).toHaveLength(1);
    expect(await provider.consoleLog(rt, 0)).toEqual([]);
  });

  it('keeps the console log bounded for busy sandboxes', async () => {
    const small = new MockProvider({ root, consoleLogMaxBytes: 2048 });
    const { runtimeId } = await small.spawn({ ...spec, sandboxId: 'sb-0000c0de' });
    for (let i = 0; i < 60; i++) await collectExec(small.execStream(runtimeId, shell(`exit ${i % 7}`)));
    const size = (await stat(join(root, runtimeId, 'console.log'))).size;
    expect(size).toBeLessThanOrEqual(2048 + 2048 / 16 + 200);
    const lines = await small.consoleLog(runtimeId, 1000);
    expect(lines.at(-1)).toMatch(/exec exited code=3$/);
    for (const line of lines) expect(line).toMatch(/^\d{4}-\d\d-\d\dT\S+Z /);
    await small.destroy(runtimeId);
  });

  it('rejects file operations through symlinks that leave the sandbox with bad_request', async () => {
    const plant = await collectExec(provider.execStream(rt, shell(`ln -s '${hostDir}/secret' out-file && ln -s '${hostDir}' out-dir && ln -s ../../../../../../../../..${hostDir} out-rel`)));
    expect(plant.exitCode).toBe(0);
    await expectCode(() => provider.readFile(rt, '/workspace/out-file'), 'bad_request');
    await expectCode(() => provider.readFile(rt, '/workspace/out-dir/secret'), 'bad_request');
    await expectCode(() => provider.readFile(rt, '/workspace/out-rel/secret'), 'bad_request');
    await expectCode(() => provider.writeFile(rt, '/workspace/out-dir/new', Buffer.from('x')), 'bad_request');
    await expectCode(() => provider.listFiles(rt, '/workspace/out-dir'), 'bad_request');
    await expectCode(() => provider.stat(rt, '/workspace/out-file'), 'bad_request');
    await expectCode(() => provider.chmod(rt, '/workspace/out-file', 0o777), 'bad_request');
    await expectCode(() => provider.moveFile(rt, '/workspace/out-dir/secret', '/workspace/stolen'), 'bad_request');
    await expectCode(() => provider.deleteFile(rt, '/workspace/out-dir/secret', false), 'bad_request');
    await expectCode(() => provider.execStream(rt, shell('pwd', { workdir: '/workspace/out-dir' }))[Symbol.asyncIterator]().next(), 'bad_request');
    // Writing onto the link replaces the link inside the sandbox; the host file is untouched.
    await provider.writeFile(rt, '/workspace/out-file', Buffer.from('replaced'));
    expect(await readFile(join(hostDir, 'secret'), 'utf8')).toBe('HOST');
    expect(existsSync(join(hostDir, 'new'))).toBe(false);
    // Symlinks that stay inside are followed.
    await collectExec(provider.execStream(rt, shell('echo inside > real.txt && ln -s real.txt in-link && ln -s /workspace in-abs')));
    expect((await provider.stat(rt, '/workspace/in-link')).size).toBe(7);
  });

  it('treats malformed runtime ids as missing without touching the filesystem', async () => {
    for (const id of ['../x', `${rt}/..`, '..', '', 'mock-../../etc']) {
      expect(await provider.status(id)).toBe('missing');
      await provider.destroy(id);
      await expectCode(() => provider.stat(id, '/'), 'not_found');
    }
    expect(existsSync(root)).toBe(true);
    expect(await provider.status(rt)).toBe('running');
  });

  it('does not hand the server environment to commands', async () => {
    process.env.STACYVM_TEST_SERVER_ONLY = 'leak';
    try {
      const r = await collectExec(provider.execStream(rt, { command: 'env', args: [], mode: 'argv', env: {}, timeoutMs: 10_000 }));
      expect(r.stdout).not.toContain('STACYVM_TEST_SERVER_ONLY');
      expect(r.stdout).toContain('SANDBOX_ID=sb-0123abcd');
    } finally {
      delete process.env.STACYVM_TEST_SERVER_ONLY;
    }
  });

  it('refuses to read FIFOs and devices instead of blocking on them', async () => {
    await collectExec(provider.execStream(rt, shell('mkfifo pipe')));
    await expectCode(() => provider.readFile(rt, '/workspace/pipe'), 'bad_request');
  });

  it('rejects requests a process cannot receive with bad_request', async () => {
    const run = (patch: Partial<ExecRequest>) => collectExec(provider.execStream(rt, { ...shell('true'), ...patch }));
    await expectCode(() => run({ env: { A: 'a\0b' } }), 'bad_request');
    await expectCode(() => run({ command: '', mode: 'argv' }), 'bad_request');
    await expectCode(() => run({ timeoutMs: 0 }), 'bad_request');
    expect((await run({ command: 'echo ok', timeoutMs: 2 ** 40 })).stdout).toBe('ok\n');
    await expectCode(() => run({ workdir: '/workspace/missing-dir' }), 'not_found');
  });

  it('reports a missing argv binary as exit 127', async () => {
    const r = await collectExec(provider.execStream(rt, { command: 'no-such-binary-xyz', args: [], mode: 'argv', env: {}, timeoutMs: 10_000 }));
    expect(r.exitCode).toBe(127);
  });

  it('survives a restart: a new instance on the same root finds runtimes and their files', async () => {
    await provider.writeFile(rt, '/workspace/persist.txt', Buffer.from('kept'));
    const again = new MockProvider({ root });
    const listed = (await again.inventory()).find((r) => r.runtimeId === rt);
    expect(listed).toMatchObject({ runtimeId: rt, status: 'running', sandboxId: 'sb-0123abcd', workerId: 'local', ownerId: 'owner-1' });
    expect(await again.status(rt)).toBe('running');
    expect((await collectExec(again.execStream(rt, shell('cat persist.txt')))).stdout).toBe('kept');
  });

  it('never shows a half-made runtime and sweeps stale spawn leftovers', async () => {
    const stale = join(root, '.spawning-mock-00000000deadbeef');
    await mkdir(join(stale, 'fs'), { recursive: true });
    const old = new Date(Date.now() - 60 * 60_000);
    await utimes(stale, old, old);
    const ids = (await provider.inventory()).map((r) => r.runtimeId);
    expect(ids.every((id) => /^mock-[0-9a-f]{16}$/.test(id))).toBe(true);
    expect(existsSync(stale)).toBe(false);
  });

  it('destroy racing fresh execs leaves no process behind and reports each exec as killed or not_found', async () => {
    const marker = 'sleep 29.8765';
    const outcomes = await Promise.all(
      Array.from({ length: 6 }, async (_, i) => {
        const { runtimeId } = await provider.spawn({ ...spec, sandboxId: `sb-0000fa0${i}` });
        const execs = Array.from({ length: 3 }, () =>
          collectExec(provider.execStream(runtimeId, shell(`echo x; ${marker} & ${marker}`))).then(
            (r) => `exit ${r.exitCode}`,
            (e: { code?: string }) => `error ${e.code}`,
          ),
        );
        await new Promise((r) => setTimeout(r, i * 15));
        await provider.destroy(runtimeId);
        return Promise.all(execs);
      }),
    );
    for (const o of outcomes.flat()) expect(['exit 137', 'error not_found']).toContain(o);
    expect(await hostProcessesRunning(marker)).toEqual([]);
  });

  it('destroy kills commands still running in the sandbox', async () => {
    const { runtimeId } = await provider.spawn({ ...spec, sandboxId: 'sb-0000beef' });
    const iter = provider.execStream(runtimeId, shell('echo up; sleep 30'))[Symbol.asyncIterator]();
    expect((await iter.next()).value).toMatchObject({ type: 'stdout' });
    const pending = iter.next();
    await provider.destroy(runtimeId);
    await expect(pending).resolves.toMatchObject({ value: { type: 'exit', exitCode: 137 } });
    expect(await provider.status(runtimeId)).toBe('missing');
  });
});
