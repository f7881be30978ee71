/**
 * The docker provider against a real dockerd (scripts/test-services.sh docker): container
 * settings, exec (streams, env, workdir, argv/shell, timeout and tree kill), files through the
 * archive API, console, health, inventory and destroy semantics, and pulls from a loopback
 * registry.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StacyError} from '../../src/core/errors.js';
import { isStacyError } from '../../src/core/errors.js';
import { DockerProvider, LABEL_SANDBOX_ID } from '../../src/providers/docker/index.js';
import type { ExecRequest } from '../../src/providers/provider.js';
import { dockerRegistryProbe, pushAndForget, startTestRegistry, type TestRegistry } from '../fixtures/docker-registry.js';
import { collectOutcome, readAll, shellRequest, type ExecOutcome } from '../fixtures/exec.js';
import {
  TEST_IMAGE,
  busyboxStaticProbe,
  dockerSocketProbe,
  ensureTestImage,
  readyTestDocker,
  testDockerClient,
  testDockerConfig,
  testSpawnSpec,
} from '../fixtures/docker.js';
import { hostSupports } from '../host.js';

const supported = hostSupports('docker provider', dockerSocketProbe, busyboxStaticProbe);

async function expectCode(p: Promise<unknown>, code: StacyError['code']): Promise<void> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(isStacyError(err, code), `expected StacyError ${code}, got ${String(err)}`).toBe(true);
}

describe.skipIf(!supported)('docker provider (real dockerd)', () => {
  let docker: Docker;
  let provider: DockerProvider;
  let rt: string;
  const spawned: string[] = [];

  const sh = async (command: string, extra: Partial<ExecRequest> = {}): Promise<ExecOutcome> =>
    collectOutcome(provider.execStream(rt, shellRequest(command, extra)));

  beforeAll(async () => {
    docker = await readyTestDocker();
    provider = new DockerProvider({ config: testDockerConfig() });
    const { runtimeId } = await provider.spawn(testSpawnSpec({ env: { SPAWN_ENV: 'from-spawn' }, labels: { team: 'qa' } }));
    rt = runtimeId;
    spawned.push(rt);
  });

  afterAll(async () => {
    for (const id of spawned) await provider?.destroy(id).catch(() => undefined);
    await provider?.close();
  });

  describe('spawn', () => {
    it('creates a locked-down container with tini as PID 1 and StacyVM labels', async () => {
      const info = await docker.getContainer(rt).inspect();
      expect(info.State.Running).toBe(true);
      expect(info.HostConfig.Init).toBe(true);
      expect(info.HostConfig.CapDrop).toEqual(['ALL']);
      expect(info.HostConfig.PidsLimit).toBe(256);
      expect(info.HostConfig.SecurityOpt).toContain('no-new-privileges:true');
      expect(info.HostConfig.Memory).toBe(256 * 1024 * 1024);
      expect(info.HostConfig.NanoCpus).toBe(1e9);
      expect(info.HostConfig.NetworkMode).toBe('none');
      expect(info.Config.WorkingDir).toBe('/workspace');
      const labels = info.Config.Labels;
      expect(labels[LABEL_SANDBOX_ID]).toMatch(/^sb-[0-9a-f]{8}$/);
      expect(labels['stacyvm.worker_id']).toBe('local');
      expect(labels['stacyvm.owner_id']).toBe('owner-test');
      expect(Number(labels['stacyvm.created_at'])).toBeGreaterThan(0);
      expect(labels.team).toBe('qa');
      expect(info.Config.Hostname).toBe(labels[LABEL_SANDBOX_ID]);
      const pid1 = await sh('cat /proc/1/comm');
      expect(pid1.stdout.trim()).toBe('docker-init');
      expect(await provider.status(rt)).toBe('running');
    });

    it('starts in a writable /workspace with the spawn environment', async () => {
      const r = await sh('pwd; echo "$SPAWN_ENV"; echo "$SANDBOX_ID"; touch /workspace/.probe && echo writable');
      const sandboxId = (await docker.getContainer(rt).inspect()).Config.Labels[LABEL_SANDBOX_ID];
      expect(r.stdout).toBe(`/workspace\nfrom-spawn\n${sandboxId}\nwritable\n`);
      expect(r.exitCode).toBe(0);
    });

    it('keeps running for images whose entrypoint would exit', async () => {
      const image = await ensureTestImage(docker, 'stacyvm-test/busybox:entrypoint', ['ENTRYPOINT ["/bin/false"]']);
      const { runtimeId } = await provider.spawn(testSpawnSpec({ image }));
      spawned.push(runtimeId);
      expect(await provider.status(runtimeId)).toBe('running');
      expect((await collectOutcome(provider.execStream(runtimeId, shellRequest('echo up')))).stdout).toBe('up\n');
    });

    it('gives an image that runs as a non-root user a writable /workspace', async () => {
      const image = await ensureTestImage(docker, 'stacyvm-test/busybox:nobody', ['USER 65534']);
      const { runtimeId } = await provider.spawn(testSpawnSpec({ image }));
      spawned.push(runtimeId);
      const r = await collectOutcome(provider.execStream(runtimeId, shellRequest('id -u; touch /workspace/mine && echo writable; pwd')));
      expect(r.stdout).toBe('65534\nwritable\n/workspace\n');
      await provider.writeFile(runtimeId, '/workspace/from-api.txt', Buffer.from('api'));
      // Uploaded files belong to the sandbox user, who can change them.
      const edit = await collectOutcome(provider.execStream(runtimeId, shellRequest('echo more >> /workspace/from-api.txt && stat -c %u /workspace/from-api.txt')));
      expect(edit.stdout).toBe('65534\n');
      expect((await readAll(await provider.readFile(runtimeId, '/workspace/from-api.txt'))).toString()).toBe('apimore\n');
    });

    it('keeps /workspace and /tmp writable on a read-only root filesystem', async () => {
      const ro = new DockerProvider({ config: testDockerConfig({ readOnlyRootfs: true }) });
      const { runtimeId } = await ro.spawn(testSpawnSpec());
      spawned.push(runtimeId);
      const r = await collectOutcome(ro.execStream(runtimeId, shellRequest('touch /etc/x 2>/dev/null || echo ro; touch /workspace/w /tmp/t && echo rw')));
      expect(r.stdout).toBe('ro\nrw\n');
      await ro.writeFile(runtimeId, '/workspace/sub/f.txt', Buffer.from('on a volume'));
      expect((await readAll(await ro.readFile(runtimeId, '/workspace/sub/f.txt'))).toString()).toBe('on a volume');
      await expectCode(ro.writeFile(runtimeId, '/etc/f.txt', Buffer.from('x')), 'bad_request');
      const volumes = (await docker.getContainer(runtimeId).inspect()).Mounts.map((m) => m.Name);
      await ro.destroy(runtimeId);
      // The anonymous workspace volume goes with the container.
      const left = (await docker.listVolumes()).Volumes?.map((v) => v.Name) ?? [];
      for (const v of volumes) expect(left).not.toContain(v);
    });
  });

  describe('exec', () => {
    it('separates stdout and stderr and reports the exit code', async () => {
      const r = await sh('echo out; echo err >&2; exit 7');
      expect(r).toMatchObject({ stdout: 'out\n', stderr: 'err\n', exitCode: 7, error: undefined });
    });

    it('passes env and workdir', async () => {
      const r = await sh('echo "$GREETING" && pwd', { env: { GREETING: 'hello world' }, workdir: '/tmp' });
      expect(r.stdout).toBe('hello world\n/tmp\n');
    });

    it('runs argv without a shell, so metacharacters stay literal', async () => {
      const r = await collectOutcome(provider.execStream(rt, shellRequest('echo', { mode: 'argv', args: ['a  b', "it's", '$(id)', '; rm -rf /'] })));
      expect(r.stdout).toBe("a  b it's $(id) ; rm -rf /\n");
      expect(r.exitCode).toBe(0);
    });

    it('shell-quotes args appended in shell mode', async () => {
      const r = await sh('printf "[%s]\\n"', { args: ['two words', "it's", '$HOME', '`id`'] });
      expect(r.stdout).toBe("[two words]\n[it's]\n[$HOME]\n[`id`]\n");
    });

    it('keeps binary output intact', async () => {
      const r = await collectOutcome(provider.execStream(rt, shellRequest('head -c 65536 /dev/urandom | tee /tmp/rand | md5sum; md5sum < /tmp/rand')));
      const [a, b] = r.stdout.trim().split('\n');
      expect(a?.slice(0, 32)).toBe(b?.slice(0, 32));
    });

    it('streams output while the command is still running', async () => {
      const iter = provider.execStream(rt, shellRequest('echo first; sleep 30; echo never'))[Symbol.asyncIterator]();
      const first = await iter.next();
      expect(first.done).toBe(false);
      expect(first.value).toMatchObject({ type: 'stdout' });
      expect((first.value as { data: Buffer }).data.toString()).toBe('first\n');
      // The command has not finished: its sleep is still there.
      const ps = await sh('ps -o args | grep -c "^sleep 30$" || true');
      expect(ps.stdout.trim()).toBe('1');
      await iter.return?.(undefined);
      const after = await sh('ps -o args | grep -c "^sleep 30$" || true');
      expect(after.stdout.trim()).toBe('0');
    });

    it('times out by killing the whole process tree, not the sandbox', async () => {
      // 4321 is daemonised (re-parented to init), 4322 runs with an emptied environment.
      const pending = sh('(sleep 4321 &); env -i sh -c "sleep 4322" & sleep 4323; echo never', { timeoutMs: 3000 });
      // The tree (including a daemonised grandchild) exists before the deadline...
      const running = async (): Promise<string> => (await sh('ps -o args | grep -cE "^sleep 432[123]$" || true')).stdout.trim();
      for (let i = 0; i < 50 && (await running()) !== '3'; i++) await new Promise((r) => setTimeout(r, 50));
      expect(await running()).toBe('3');
      const r = await pending;
      expect(r.stdout).toBe('');
      expect(isStacyError(r.error, 'timeout')).toBe(true);
      expect(r.exitCode).toBeNull();
      // ...and none of it after.
      expect(await running()).toBe('0');
      expect(await provider.status(rt)).toBe('running');
      expect((await sh('echo alive')).stdout).toBe('alive\n');
    });

    it('applies the timeout given in the request', async () => {
      const r = await sh('sleep 4324', { timeoutMs: 500, env: { STACYVM_EXEC_ID: 'client-chosen' } });
      expect(isStacyError(r.error, 'timeout')).toBe(true);
      expect((await sh('ps -o args | grep -c "^sleep 4324$" || true')).stdout.trim()).toBe('0');
    });

    it('kills the command when the signal aborts', async () => {
      const ac = new AbortController();
      const events = provider.execStream(rt, shellRequest('echo go; sleep 4325'), ac.signal);
      const seen: string[] = [];
      const err = await (async () => {
        for await (const e of events) {
          if (e.type === 'stdout') {
            seen.push(e.data.toString());
            ac.abort(new Error('client went away'));
          }
        }
      })().then(
        () => null,
        (e: unknown) => e,
      );
      expect(seen).toEqual(['go\n']);
      expect((err as Error).message).toBe('client went away');
      expect((await sh('ps -o args | grep -c "^sleep 4325$" || true')).stdout.trim()).toBe('0');
    });

    it('holds the producer back while the consumer does not read (backpressure)', async () => {
      const iter = provider.execStream(rt, shellRequest('dd if=/dev/zero bs=65536 count=16384 2>/dev/null; echo done'))[Symbol.asyncIterator]();
      // busybox runs dd in a forked shell, so its args show the parent's; count by name.
      const dd = async (): Promise<string> => (await sh('ps -o comm | grep -c "^dd$" || true')).stdout.trim();
      const first = await iter.next();
      expect(first.done).toBe(false);
      // 1 GiB cannot sit in pipes and socket buffers: dd must still be blocked writing.
      for (let i = 0; i < 3; i++) {
        await new Promise((r) => setTimeout(r, 300));
        expect(await dd()).toBe('1');
      }
      await iter.return?.(undefined);
      expect(await dd()).toBe('0');
    });

    it('reports a missing program as exit 127 and a missing workdir as not_found', async () => {
      for (const command of ['/no/such/binary', 'no-such-program']) {
        const r = await collectOutcome(provider.execStream(rt, shellRequest(command, { mode: 'argv' })));
        expect(r.error).toBeUndefined();
        expect(r.exitCode).toBe(127);
        // The runtime's complaint is a diagnostic on stderr, not the command's stdout.
        expect(r.stdout).toBe('');
        expect(r.stderr).toContain(command);
      }
      await sh('printf "not a program" > /workspace/plain && chmod 644 /workspace/plain');
      expect((await collectOutcome(provider.execStream(rt, shellRequest('/workspace/plain', { mode: 'argv' })))).exitCode).toBe(126);
      const wd = await collectOutcome(provider.execStream(rt, shellRequest('pwd', { workdir: '/workspace/no-such-dir' })));
      expect(isStacyError(wd.error, 'not_found')).toBe(true);
    });

    it('validates requests and honours timeouts beyond the timer range', async () => {
      for (const bad of [shellRequest('true', { timeoutMs: 0 }), shellRequest('', { mode: 'argv' }), shellRequest('true', { env: { 'A=B': 'x' } })]) {
        expect(isStacyError((await collectOutcome(provider.execStream(rt, bad))).error, 'bad_request')).toBe(true);
      }
      expect((await sh('echo ok', { timeoutMs: 2 ** 40 })).stdout).toBe('ok\n');
    });

    it('ends a running command with exit 137 when the sandbox is destroyed', async () => {
      const { runtimeId } = await provider.spawn(testSpawnSpec());
      spawned.push(runtimeId);
      const iter = provider.execStream(runtimeId, shellRequest('echo up; sleep 30'))[Symbol.asyncIterator]();
      expect((await iter.next()).value).toMatchObject({ type: 'stdout' });
      const pending = iter.next();
      await provider.destroy(runtimeId);
      await expect(pending).resolves.toMatchObject({ value: { type: 'exit', exitCode: 137 } });
      expect(await provider.status(runtimeId)).toBe('missing');
    });
  });

  describe('files', () => {
    it('round-trips binary content with mode and creates parent directories', async () => {
      const content = Buffer.from(Array.from({ length: 256 * 4 }, (_, i) => i % 256));
      await provider.writeFile(rt, '/workspace/deep/er/bin.dat', content, 0o640);
      expect(await readAll(await provider.readFile(rt, '/workspace/deep/er/bin.dat'))).toEqual(content);
      const st = await provider.stat(rt, '/workspace/deep/er/bin.dat');
      expect(st).toMatchObject({ name: 'bin.dat', path: '/workspace/deep/er/bin.dat', size: 1024, isDir: false, mode: 0o640 });
      expect(st.modTime).toBeGreaterThan(0);
      // The file is visible to commands too.
      expect((await sh('md5sum /workspace/deep/er/bin.dat')).stdout.slice(0, 32)).toBe(createHash('md5').update(content).digest('hex'));
    });

    it('overwrites an existing file and accepts a stream', async () => {
      await provider.writeFile(rt, '/workspace/over.txt', Buffer.from('first version, long'));
      await provider.writeFile(rt, '/workspace/over.txt', Readable.from([Buffer.from('sec'), Buffer.from('ond')]));
      expect((await readAll(await provider.readFile(rt, '/workspace/over.txt'))).toString()).toBe('second');
    });

    it('reads through symlinks inside the container', async () => {
      await sh('echo target > /workspace/t.txt && ln -sf t.txt /workspace/link.txt && ln -sf /workspace/t.txt /workspace/abs.txt');
      expect((await readAll(await provider.readFile(rt, '/workspace/link.txt'))).toString()).toBe('target\n');
      expect((await readAll(await provider.readFile(rt, '/workspace/abs.txt'))).toString()).toBe('target\n');
    });

    it('refuses to write over a directory or below a file', async () => {
      await provider.writeFile(rt, '/workspace/clash/file', Buffer.from('x'));
      await expectCode(provider.writeFile(rt, '/workspace/clash', Buffer.from('y')), 'bad_request');
      await expectCode(provider.writeFile(rt, '/workspace/clash/file/below', Buffer.from('y')), 'bad_request');
      await expectCode(provider.writeFile(rt, '/workspace/clash/file/deeper/below', Buffer.from('y')), 'bad_request');
      expect((await readAll(await provider.readFile(rt, '/workspace/clash/file'))).toString()).toBe('x');
    });

    it('rejects reading a directory and a missing file with typed errors', async () => {
      await expectCode(provider.readFile(rt, '/workspace'), 'bad_request');
      await expectCode(provider.readFile(rt, '/workspace/missing.txt'), 'not_found');
      await expectCode(provider.stat(rt, '/workspace/missing.txt'), 'not_found');
      await expectCode(provider.listFiles(rt, '/workspace/missing'), 'not_found');
    });

    it('lists, globs, moves, chmods and deletes with awkward names', async () => {
      const odd = ['/workspace/odd/a b.txt', '/workspace/odd/$(touch pwned).txt', "/workspace/odd/it's.txt", '/workspace/odd/new\nline.txt'];
      for (const p of odd) await provider.writeFile(rt, p, Buffer.from(p));
      await provider.writeFile(rt, '/workspace/odd/sub/x.py', Buffer.from('print(1)'));
      const list = await provider.listFiles(rt, '/workspace/odd');
      expect(list.map((e) => e.name)).toEqual(['$(touch pwned).txt', 'a b.txt', "it's.txt", 'new\nline.txt', 'sub'].sort());
      expect(list.find((e) => e.name === 'sub')).toMatchObject({ isDir: true, path: '/workspace/odd/sub' });
      expect(list.find((e) => e.name === 'a b.txt')?.size).toBe(Buffer.byteLength('/workspace/odd/a b.txt'));
      expect((await sh('ls /workspace | grep -c pwned || true')).stdout.trim()).toBe('0');

      expect(await provider.glob(rt, '/workspace/odd/*.txt')).toEqual([...odd].sort());
      expect(await provider.glob(rt, '/workspace/**/*.py')).toEqual(['/workspace/odd/sub/x.py']);
      expect(await provider.glob(rt, '/workspace/nothing/**')).toEqual([]);

      await provider.moveFile(rt, '/workspace/odd/a b.txt', '/workspace/moved/c d.txt');
      await expectCode(provider.stat(rt, '/workspace/odd/a b.txt'), 'not_found');
      expect((await provider.stat(rt, '/workspace/moved/c d.txt')).size).toBeGreaterThan(0);
      await expectCode(provider.moveFile(rt, '/workspace/odd/none', '/workspace/x'), 'not_found');

      await provider.chmod(rt, '/workspace/moved/c d.txt', 0o751);
      expect((await provider.stat(rt, '/workspace/moved/c d.txt')).mode).toBe(0o751);
      await expectCode(provider.chmod(rt, '/workspace/none', 0o600), 'not_found');

      await expectCode(provider.deleteFile(rt, '/workspace/odd', false), 'conflict');
      await provider.deleteFile(rt, '/workspace/odd/sub/x.py', false);
      await provider.deleteFile(rt, '/workspace/odd', true);
      await expectCode(provider.stat(rt, '/workspace/odd'), 'not_found');
      await expectCode(provider.deleteFile(rt, '/workspace/odd', true), 'not_found');
    });

    it('lets a reader stop early without wedging later operations', async () => {
      await provider.writeFile(rt, '/workspace/early.bin', Buffer.alloc(8 * 1024 * 1024, 1));
      for (let i = 0; i < 5; i++) {
        const stream = await provider.readFile(rt, '/workspace/early.bin');
        for await (const _chunk of stream) break;
      }
      expect((await readAll(await provider.readFile(rt, '/workspace/early.bin'))).length).toBe(8 * 1024 * 1024);
      await provider.deleteFile(rt, '/workspace/early.bin', false);
    });

    it('streams a 100 MB file in and out without corrupting it', async () => {
      const size = 100 * 1024 * 1024;
      const chunk = randomBytes(1024 * 1024);
      const inHash = createHash('sha256');
      let sent = 0;
      const source = new Readable({
        read() {
          if (sent >= size) return void this.push(null);
          const piece = Buffer.from(chunk);
          piece.writeUInt32BE(sent / chunk.length, 0);
          sent += piece.length;
          inHash.update(piece);
          this.push(piece);
        },
      });
      await provider.writeFile(rt, '/workspace/big.bin', source);
      expect((await provider.stat(rt, '/workspace/big.bin')).size).toBe(size);
      const outHash = createHash('sha256');
      let received = 0;
      for await (const c of await provider.readFile(rt, '/workspace/big.bin')) {
        outHash.update(c as Buffer);
        received += (c as Buffer).length;
      }
      expect(received).toBe(size);
      expect(outHash.digest('hex')).toBe(inHash.digest('hex'));
      await provider.deleteFile(rt, '/workspace/big.bin', false);
    }, 120_000);
  });

  describe('console, health, inventory', () => {
    it('returns the tail of PID 1 output', async () => {
      await sh('for i in 1 2 3 4 5; do echo "console line $i" > /proc/1/fd/1; done');
      const lines = await provider.consoleLog(rt, 2);
      expect(lines).toEqual(['console line 4', 'console line 5']);
    });

    it('reports health with daemon details and a redacted config', async () => {
      const h = await provider.health();
      expect(h.healthy).toBe(true);
      expect(h.details).toMatchObject({ runtime: 'runc', apiVersion: expect.any(String), serverVersion: expect.any(String) });
      const bad = new DockerProvider({ config: testDockerConfig({ socket: '/nonexistent/docker.sock' }) });
      const hb = await bad.health();
      expect(hb.healthy).toBe(false);
      expect(hb.error).toMatch(/unreachable/);
      const wrongRuntime = new DockerProvider({ config: testDockerConfig({ runtime: 'no-such-runtime' }) });
      expect((await wrongRuntime.health()).healthy).toBe(false);
    });

    it('runs sandboxes on the configured runtime', async () => {
      // Any runtime registered in dockerd works; this daemon always has the containerd shim name.
      const alt = new DockerProvider({ config: testDockerConfig({ runtime: 'io.containerd.runc.v2' }) });
      expect((await alt.health()).healthy).toBe(true);
      expect(alt.capabilities.features).toContain('runtime:io.containerd.runc.v2');
      const { runtimeId } = await alt.spawn(testSpawnSpec());
      spawned.push(runtimeId);
      expect((await docker.getContainer(runtimeId).inspect()).HostConfig.Runtime).toBe('io.containerd.runc.v2');
      expect((await collectOutcome(alt.execStream(runtimeId, shellRequest('echo on-alt')))).stdout).toBe('on-alt\n');
    });

    it('lets a fresh provider (a restarted server) adopt running containers from labels', async () => {
      const restarted = new DockerProvider({ config: testDockerConfig() });
      const inv = await restarted.inventory();
      const mine = inv.find((r) => r.runtimeId === rt);
      expect(mine).toMatchObject({ status: 'running', workerId: 'local', ownerId: 'owner-test' });
      expect(mine?.sandboxId).toMatch(/^sb-/);
      expect(mine?.createdAt).toBeGreaterThan(0);
      const r = await collectOutcome(restarted.execStream(rt, shellRequest('echo adopted')));
      expect(r.stdout).toBe('adopted\n');
    });

    it('never touches containers it did not create', async () => {
      const foreign = await docker.createContainer({ Image: TEST_IMAGE, Cmd: ['sleep', '60'], HostConfig: { NetworkMode: 'none' } });
      try {
        expect(await provider.status(foreign.id)).toBe('missing');
        await provider.destroy(foreign.id);
        await expectCode(collectOutcome(provider.execStream(foreign.id, shellRequest('true'))).then((o) => { if (o.error) throw o.error; }), 'not_found');
        expect((await foreign.inspect()).Id).toBe(foreign.id);
        expect((await provider.inventory()).some((r) => r.runtimeId === foreign.id)).toBe(false);
      } finally {
        await foreign.remove({ force: true });
      }
    });
  });

  describe('destroy', () => {
    it('is idempotent and every later operation is not_found', async () => {
      const { runtimeId } = await provider.spawn(testSpawnSpec());
      spawned.push(runtimeId);
      await provider.destroy(runtimeId);
      await provider.destroy(runtimeId);
      await provider.destroy('0123456789ab');
      expect(await provider.status(runtimeId)).toBe('missing');
      await expect(docker.getContainer(runtimeId).inspect()).rejects.toMatchObject({ statusCode: 404 });
      const exec = await collectOutcome(provider.execStream(runtimeId, shellRequest('true')));
      expect(isStacyError(exec.error, 'not_found')).toBe(true);
      await expectCode(provider.readFile(runtimeId, '/etc/passwd'), 'not_found');
      await expectCode(provider.writeFile(runtimeId, '/workspace/x', Buffer.from('x')), 'not_found');
      await expectCode(provider.listFiles(runtimeId, '/workspace'), 'not_found');
      await expectCode(provider.stat(runtimeId, '/workspace'), 'not_found');
      await expectCode(provider.glob(runtimeId, '/workspace/*'), 'not_found');
      await expectCode(provider.moveFile(runtimeId, '/a', '/b'), 'not_found');
      await expectCode(provider.chmod(runtimeId, '/a', 0o644), 'not_found');
      await expectCode(provider.deleteFile(runtimeId, '/a', true), 'not_found');
      await expectCode(provider.consoleLog(runtimeId, 10), 'not_found');
    });

    it('an exec racing destroy fails not_found or ends killed, leaving nothing behind', async () => {
      for (let i = 0; i < 3; i++) {
        const { runtimeId } = await provider.spawn(testSpawnSpec());
        spawned.push(runtimeId);
        const [exec] = await Promise.all([collectOutcome(provider.execStream(runtimeId, shellRequest('sleep 30'))), provider.destroy(runtimeId)]);
        if (exec.error !== undefined) expect(isStacyError(exec.error, 'not_found'), String(exec.error)).toBe(true);
        else expect(exec.exitCode).toBe(137);
        await expect(docker.getContainer(runtimeId).inspect()).rejects.toMatchObject({ statusCode: 404 });
      }
    });

    it('a stopped sandbox is stopped, and exec in it is a conflict', async () => {
      const { runtimeId } = await provider.spawn(testSpawnSpec());
      spawned.push(runtimeId);
      await docker.getContainer(runtimeId).stop({ t: 0 });
      expect(await provider.status(runtimeId)).toBe('stopped');
      const r = await collectOutcome(provider.execStream(runtimeId, shellRequest('true')));
      expect(isStacyError(r.error, 'conflict'), String(r.error)).toBe(true);
      expect((await provider.inventory()).find((x) => x.runtimeId === runtimeId)?.status).toBe('stopped');
    });

    it('is not_found when the container was removed behind its back', async () => {
      const { runtimeId } = await provider.spawn(testSpawnSpec());
      spawned.push(runtimeId);
      expect((await sh('true')).exitCode).toBe(0);
      await docker.getContainer(runtimeId).remove({ force: true });
      const exec = await collectOutcome(provider.execStream(runtimeId, shellRequest('true')));
      expect(isStacyError(exec.error, 'not_found')).toBe(true);
      await expectCode(provider.readFile(runtimeId, '/etc/passwd'), 'not_found');
    });
  });
});

const registrySupported = supported && hostSupports('docker provider pulls', dockerRegistryProbe);

describe.skipIf(!registrySupported)('docker provider image pulls (loopback registry)', () => {
  let docker: Docker;
  let registry: TestRegistry;
  const spawned: Array<{ provider: DockerProvider; id: string }> = [];

  beforeAll(async () => {
    docker = testDockerClient();
    await ensureTestImage(docker);
    registry = await startTestRegistry();
  });

  const pulledImages: string[] = [];

  afterAll(async () => {
    for (const s of spawned) await s.provider.destroy(s.id).catch(() => undefined);
    // Each run pulls under a fresh port and tag; do not let them pile up on the daemon.
    for (const ref of pulledImages) await docker.getImage(ref).remove({ force: true }).catch(() => undefined);
    await registry?.stop();
  });

  it('pulls a missing image with progress, never logging the credentials', async () => {
    const ref = `${registry.address}/stacyvm-test/pulled:${randomBytes(4).toString('hex')}`;
    pulledImages.push(ref);
    await ensureTestImage(docker, ref);
    await pushAndForget(docker, ref);
    await expect(docker.getImage(ref).inspect()).rejects.toMatchObject({ statusCode: 404 });

    const secret = `s3cret-${randomBytes(6).toString('hex')}`;
    const logged: string[] = [];
    const progress: string[] = [];
    const provider = new DockerProvider({
      // The open registry ignores credentials; they are set to prove they stay out of output.
      config: testDockerConfig({ registryAuth: { username: 'ci-user', password: secret, serveraddress: registry.address } }),
      log: {
        info: (o, m) => logged.push(JSON.stringify(o) + m),
        warn: (o, m) => logged.push(JSON.stringify(o) + m),
      },
      onPullProgress: (_sb, p) => progress.push(JSON.stringify(p)),
    });
    const { runtimeId } = await provider.spawn(testSpawnSpec({ image: ref }));
    spawned.push({ provider, id: runtimeId });
    expect((await collectOutcome(provider.execStream(runtimeId, shellRequest('echo pulled')))).stdout).toBe('pulled\n');
    expect(progress.length).toBeGreaterThan(0);
    expect(progress.some((p) => p.includes('Download complete') || p.includes('Pull complete') || p.includes('Status'))).toBe(true);
    expect(logged.some((l) => l.includes('pulling image'))).toBe(true);
    const everything = [...logged, ...progress, JSON.stringify(provider.redactedConfig()), JSON.stringify(await provider.health())].join('\n');
    expect(everything).not.toContain(secret);
    expect(everything).not.toContain('ci-user');
  });

  it('pulls from a registry that requires credentials only with registry_auth', async () => {
    const creds = { username: 'stacy', password: `pw-${randomBytes(8).toString('hex')}` };
    const locked = await startTestRegistry(creds);
    try {
      const ref = `${locked.address}/stacyvm-test/private:${randomBytes(4).toString('hex')}`;
      pulledImages.push(ref);
      await ensureTestImage(docker, ref);
      await pushAndForget(docker, ref, creds);
      const anonymous = new DockerProvider({ config: testDockerConfig() });
      const denied = await anonymous.spawn(testSpawnSpec({ image: ref })).then(
        () => null,
        (e: unknown) => e,
      );
      // dockerd reports missing credentials as a server error: an operator problem, not the client's.
      expect(isStacyError(denied, 'provider_error'), String(denied)).toBe(true);
      expect(String((denied as Error).message)).not.toContain(creds.password);
      // Credentials for another registry are not sent along.
      const elsewhere = new DockerProvider({ config: testDockerConfig({ registryAuth: { ...creds, serveraddress: 'registry.example.com' } }) });
      await expectCode(elsewhere.spawn(testSpawnSpec({ image: ref })), 'provider_error');
      const authed = new DockerProvider({ config: testDockerConfig({ registryAuth: { ...creds, serveraddress: `http://${locked.address}/` } }) });
      const { runtimeId } = await authed.spawn(testSpawnSpec({ image: ref }));
      spawned.push({ provider: authed, id: runtimeId });
      expect((await collectOutcome(authed.execStream(runtimeId, shellRequest('echo private')))).stdout).toBe('private\n');
    } finally {
      await locked.stop();
    }
  });

  it('answers image_not_found (400) when the registry does not have the image', async () => {
    const provider = new DockerProvider({ config: testDockerConfig() });
    const err = await provider.spawn(testSpawnSpec({ image: `${registry.address}/stacyvm-test/absent:nope` })).then(
      () => null,
      (e: unknown) => e,
    );
    expect(isStacyError(err, 'image_not_found')).toBe(true);
    expect((err as StacyError).status).toBe(400);
    expect((err as StacyError).message).toContain('stacyvm-test/absent:nope');
    expect((await provider.inventory()).some((r) => r.sandboxId === undefined)).toBe(false);
  });
});
