import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isStacyError } from '../../src/core/errors.js';
import { OciProvider } from '../../src/providers/oci/provider.js';
import { createOciFixture, ociSupported, run, spawnSpec, type OciFixture } from './oci-fixture.js';

const supported = ociSupported('oci provider');

describe.skipIf(!supported)('oci provider', () => {
  let fx: OciFixture;
  let id: string;
  beforeAll(async () => {
    fx = await createOciFixture();
    id = (await fx.provider.spawn(spawnSpec({ env: { GREETING: 'hello' } }))).runtimeId;
  });
  afterAll(async () => {
    await fx?.cleanup();
  });

  const leftovers = async (rt: string): Promise<string> =>
    (await run(fx.provider, rt, { command: 'ps -o args | grep "sleep 1000" | grep -vc grep' })).stdout.trim();

  it('is healthy', async () => {
    const h = await fx.provider.health();
    expect(h.error).toBeUndefined();
    expect(h.healthy).toBe(true);
  });

  it('runs shell and argv commands with env and workdir', async () => {
    expect(await fx.provider.status(id)).toBe('running');
    const r = await run(fx.provider, id, { command: 'echo $GREETING $EXTRA; pwd; id -u', env: { EXTRA: 'x y' } });
    expect(r).toEqual({ stdout: 'hello x y\n/workspace\n1000\n', stderr: '', exitCode: 0 });
    const a = await run(fx.provider, id, { command: 'echo', args: ['a b', '$HOME'], mode: 'argv', workdir: '/tmp' });
    expect(a.stdout).toBe('a b $HOME\n');
    const q = await run(fx.provider, id, { command: 'echo', args: ["it's", '$(id)'] });
    expect(q.stdout).toBe("it's $(id)\n");
    const e = await run(fx.provider, id, { command: 'echo oops >&2; exit 3' });
    expect(e).toEqual({ stdout: '', stderr: 'oops\n', exitCode: 3 });
    const missing = await run(fx.provider, id, { command: 'no-such-binary', mode: 'argv' });
    expect(missing.exitCode).toBe(127);
    expect((await run(fx.provider, id, { command: '/etc/passwd', mode: 'argv' })).exitCode).toBe(126);
    await expect(run(fx.provider, id, { command: 'pwd', workdir: '/nope' })).rejects.toSatisfy((e: unknown) => isStacyError(e, 'not_found'));
    await expect(run(fx.provider, id, { command: 'pwd', workdir: '/etc/passwd' })).rejects.toSatisfy((e: unknown) => isStacyError(e, 'bad_request'));
    await expect(run(fx.provider, id, { command: 'true', timeoutMs: 0 })).rejects.toSatisfy((e: unknown) => isStacyError(e, 'bad_request'));
  });

  it('times out and kills the whole process tree', async () => {
    const started = Date.now();
    let err: unknown;
    try {
      await run(fx.provider, id, { command: 'sleep 1000 & (sleep 1000 &) ; sleep 1000', timeoutMs: 500 });
    } catch (e) {
      err = e;
    }
    expect(isStacyError(err, 'timeout')).toBe(true);
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(await leftovers(id)).toBe('0');
  });

  it('the timeout also kills daemons that left the session', async () => {
    const err = await run(fx.provider, id, {
      command: 'setsid sh -c "sleep 1000" & (setsid sleep 1000 &); sleep 1000',
      env: { STACYVM_EXEC_ID: 'forged' },
      timeoutMs: 500,
    }).catch((e: unknown) => e);
    expect(isStacyError(err, 'timeout')).toBe(true);
    expect(await leftovers(id)).toBe('0');
  });

  it('streams output live', async () => {
    const times: number[] = [];
    for await (const ev of fx.provider.execStream(id, {
      command: 'echo a; sleep 0.3; echo b',
      args: [],
      mode: 'shell',
      env: {},
      timeoutMs: 10_000,
    })) {
      if (ev.type === 'stdout') times.push(Date.now());
    }
    expect(times.length).toBe(2);
  });

  it('breaking out of the iteration kills the command', async () => {
    for await (const ev of fx.provider.execStream(id, { command: 'echo started; sleep 1000', args: [], mode: 'shell', env: {}, timeoutMs: 60_000 })) {
      if (ev.type === 'stdout') break;
    }
    expect(await leftovers(id)).toBe('0');
  });

  it('reads, writes, lists, stats, moves, chmods, deletes and globs files', async () => {
    const p = fx.provider;
    await p.writeFile(id, '/workspace/dir/a.txt', Buffer.from('hello\n'));
    const bin = Buffer.from([0, 1, 2, 255, 10, 13, 0]);
    await p.writeFile(id, '/workspace/b.bin', bin, 0o600);
    const read = async (path: string): Promise<Buffer> => {
      const chunks: Buffer[] = [];
      for await (const c of await p.readFile(id, path)) chunks.push(c as Buffer);
      return Buffer.concat(chunks);
    };
    expect((await read('/workspace/dir/a.txt')).toString()).toBe('hello\n');
    expect((await read('/workspace/b.bin')).equals(bin)).toBe(true);
    expect(await read('/workspace/empty').catch((e: unknown) => e)).toSatisfy((e: unknown) => isStacyError(e, 'not_found'));
    expect(await read('/workspace/dir').catch((e: unknown) => e)).toSatisfy((e: unknown) => isStacyError(e, 'bad_request'));
    await run(p, id, { command: 'mkfifo /workspace/fifo' });
    expect(await read('/workspace/fifo').catch((e: unknown) => e)).toSatisfy((e: unknown) => isStacyError(e, 'bad_request'));
    expect(await read('/dev/zero').catch((e: unknown) => e)).toSatisfy((e: unknown) => isStacyError(e, 'bad_request'));
    await p.deleteFile(id, '/workspace/fifo', false);
    const st = await p.stat(id, '/workspace/b.bin');
    expect(st).toMatchObject({ name: 'b.bin', path: '/workspace/b.bin', size: 7, isDir: false, mode: 0o600 });
    const ls = await p.listFiles(id, '/workspace');
    expect(ls.map((e) => [e.name, e.isDir])).toEqual([
      ['b.bin', false],
      ['dir', true],
    ]);
    await p.moveFile(id, '/workspace/b.bin', '/workspace/dir/c.bin');
    await p.chmod(id, '/workspace/dir/c.bin', 0o755);
    expect((await p.stat(id, '/workspace/dir/c.bin')).mode).toBe(0o755);
    expect(await p.glob(id, '/workspace/**/*.txt')).toEqual(['/workspace/dir/a.txt']);
    expect(await p.glob(id, '/workspace/dir/*')).toEqual(['/workspace/dir/a.txt', '/workspace/dir/c.bin']);
    await expect(p.deleteFile(id, '/workspace/dir', false)).rejects.toSatisfy((e: unknown) => isStacyError(e, 'conflict'));
    await p.deleteFile(id, '/workspace/dir', true);
    await expect(p.stat(id, '/workspace/dir')).rejects.toSatisfy((e: unknown) => isStacyError(e, 'not_found'));
  });

  it('round-trips 100 MB streamed without buffering it all', async () => {
    const size = 100 * 1024 * 1024;
    const chunk = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 31) & 0xff;
    let sent = 0;
    const hIn = createHash('sha256');
    const src = new Readable({
      read() {
        if (sent >= size) return this.push(null);
        sent += chunk.length;
        hIn.update(chunk);
        this.push(chunk);
      },
    });
    const before = process.memoryUsage().rss;
    await fx.provider.writeFile(id, '/workspace/big', src);
    const hOut = createHash('sha256');
    let got = 0;
    let peak = 0;
    for await (const c of await fx.provider.readFile(id, '/workspace/big')) {
      hOut.update(c as Buffer);
      got += (c as Buffer).length;
      peak = Math.max(peak, process.memoryUsage().rss - before);
    }
    expect(got).toBe(size);
    expect(hOut.digest('hex')).toBe(hIn.digest('hex'));
    expect(peak).toBeLessThan(size);
    await fx.provider.deleteFile(id, '/workspace/big', false);
  });

  it('keeps the console log of PID 1', async () => {
    const lines = await fx.provider.consoleLog(id, 10);
    expect(lines.join('\n')).toContain('stacyvm init: sandbox');
  });

  it('reports inventory with annotations, and a fresh provider re-adopts', async () => {
    const inv = await fx.provider.inventory();
    const mine = inv.find((r) => r.runtimeId === id);
    expect(mine).toMatchObject({ status: 'running', workerId: 'local', ownerId: 'owner-1' });
    const again = fx.makeProvider({});
    expect((await run(again, id, { command: 'echo still here' })).stdout).toBe('still here\n');
  });

  it('a runtime whose container died is stopped, refuses exec with conflict, and destroys cleanly', async () => {
    const rt = (await fx.provider.spawn(spawnSpec())).runtimeId;
    execFileSync('runc', ['--root', join(fx.config.root, 'runc-state'), 'kill', rt, 'KILL']);
    for (let i = 0; i < 100 && (await fx.provider.status(rt)) === 'running'; i++) await new Promise((r) => setTimeout(r, 50));
    expect(await fx.provider.status(rt)).toBe('stopped');
    await expect(run(fx.provider, rt, { command: 'true' })).rejects.toSatisfy((e: unknown) => isStacyError(e, 'conflict'));
    await expect(fx.provider.stat(rt, '/')).rejects.toSatisfy((e: unknown) => isStacyError(e, 'conflict'));
    await fx.provider.destroy(rt);
    expect(await fx.provider.status(rt)).toBe('missing');
    expect(existsSync(join(fx.config.root, 'bundles', rt))).toBe(false);
    expect(existsSync(`/sys/fs/cgroup/pids/stacyvm/${rt}`)).toBe(false);
  });

  it('a failed spawn reports provider_error with runc\'s reason and leaves nothing behind', async () => {
    const before = (await fx.provider.inventory()).length;
    const mountsUnder = (root: string): number => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(root)).length;
    const mountsBefore = mountsUnder(fx.config.root);
    const err = await fx.provider.spawn(spawnSpec({ memoryMb: 1 })).then(
      () => null,
      (e: unknown) => e,
    );
    expect(isStacyError(err, 'provider_error')).toBe(true);
    expect((err as Error).message).toContain('memory limit');
    expect((await fx.provider.inventory()).length).toBe(before);
    expect(mountsUnder(fx.config.root)).toBe(mountsBefore);
  });

  it('unknown runtimes are missing / not_found; destroy is idempotent', async () => {
    expect(await fx.provider.status('nope-123')).toBe('missing');
    await expect(run(fx.provider, 'nope-123', { command: 'true' })).rejects.toSatisfy((e: unknown) => isStacyError(e, 'not_found'));
    const other = (await fx.provider.spawn(spawnSpec())).runtimeId;
    await fx.provider.destroy(other);
    await fx.provider.destroy(other);
    expect(await fx.provider.status(other)).toBe('missing');
    await expect(fx.provider.spawn(spawnSpec({ image: 'no-such-image:1' }))).rejects.toSatisfy((e: unknown) =>
      isStacyError(e, 'image_not_found'),
    );
  });
});

describe.skipIf(!supported)('oci provider health and the default image', () => {
  let fx: OciFixture;
  beforeAll(async () => {
    fx = await createOciFixture();
  });
  afterAll(async () => {
    await fx?.cleanup();
  });

  it('is unhealthy while the default image is missing, naming the command that provides it', async () => {
    const missing = new OciProvider({ config: fx.config, images: fx.images, defaultImage: 'python:3' });
    const h = await missing.health();
    expect(h.healthy).toBe(false);
    expect(h.error).toContain('stacyvm image build python');
    const present = new OciProvider({ config: fx.config, images: fx.images, defaultImage: 'busybox:latest' });
    expect((await present.health()).healthy).toBe(true);
  });
});

describe.skipIf(!supported)('oci exec output backpressure', () => {
  let fx: OciFixture;
  beforeAll(async () => {
    fx = await createOciFixture();
  });
  afterAll(async () => {
    await fx?.cleanup();
  });

  it('does not buffer a fast producer for a slow consumer', { timeout: 120_000 }, async () => {
    const { runtimeId } = await fx.provider.spawn(spawnSpec());
    const before = process.memoryUsage().rss;
    let peak = 0;
    let total = 0;
    let n = 0;
    for await (const ev of fx.provider.execStream(runtimeId, { command: 'head -c 60000000 /dev/zero', args: [], mode: 'shell', env: {}, timeoutMs: 120_000 })) {
      if (ev.type !== 'stdout') continue;
      total += ev.data.length;
      await new Promise((r) => setTimeout(r, 1));
      if (++n % 20 === 0) peak = Math.max(peak, process.memoryUsage().rss - before);
    }
    expect(total).toBe(60_000_000);
    expect(peak).toBeLessThan(40_000_000);
  });
});
