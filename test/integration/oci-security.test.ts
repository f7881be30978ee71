/**
 * Each security default of the oci provider, attacked from inside a sandbox.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isStacyError } from '../../src/core/errors.js';
import type { OciProvider } from '../../src/providers/oci/provider.js';
import { createOciFixture, ociSupported, run, spawnSpec, type OciFixture } from './oci-fixture.js';

const supported = ociSupported('oci security');

/** CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID NET_BIND_SERVICE = bits 0,1,3,4,5,6,7,10 */
const DEFAULT_CAP_MASK = '00000000000004fb';

describe.skipIf(!supported)('oci security defaults', () => {
  let fx: OciFixture;
  let id: string;
  let rootProvider: OciProvider;
  let rootId: string;
  const marker = `/tmp/stacyvm-host-marker-${randomBytes(4).toString('hex')}`;

  beforeAll(async () => {
    fx = await createOciFixture();
    id = (await fx.provider.spawn(spawnSpec({ memoryMb: 64 }))).runtimeId;
    rootProvider = fx.makeProvider({ user: '0:0' });
    rootId = (await rootProvider.spawn(spawnSpec())).runtimeId;
    writeFileSync(marker, 'host secret\n');
  });
  afterAll(async () => {
    rmSync(marker, { force: true });
    await fx?.cleanup();
  });

  const status = async (p: OciProvider, rt: string, field: string): Promise<string> =>
    (await run(p, rt, { command: `grep '^${field}:' /proc/self/status` })).stdout.split(':')[1]?.trim() ?? '';

  it('runs as the non-root user 1000 by default', async () => {
    expect((await run(fx.provider, id, { command: 'id -u; id -g' })).stdout).toBe('1000\n1000\n');
  });

  it('grants the user no capabilities and bounds everyone to the minimal set', async () => {
    expect(await status(fx.provider, id, 'CapEff')).toBe('0000000000000000');
    expect(await status(fx.provider, id, 'CapBnd')).toBe(DEFAULT_CAP_MASK);
    expect(await status(rootProvider, rootId, 'CapEff')).toBe(DEFAULT_CAP_MASK);
    expect(await status(rootProvider, rootId, 'CapBnd')).toBe(DEFAULT_CAP_MASK);
  });

  it('refuses mount even to root inside the sandbox', async () => {
    const r = await run(rootProvider, rootId, { command: 'mkdir -p /mnt/x && mount -t tmpfs none /mnt/x' });
    expect(r.exitCode).not.toBe(0);
    const r2 = await run(rootProvider, rootId, { command: 'mount --bind / /mnt/x' });
    expect(r2.exitCode).not.toBe(0);
  });

  it('applies the seccomp profile: no user namespaces, no setns', async () => {
    expect(await status(fx.provider, id, 'Seccomp')).toBe('2');
    for (const [p, rt] of [
      [fx.provider, id],
      [rootProvider, rootId],
    ] as const) {
      const u = await run(p, rt, { command: 'unshare -U -r true' });
      expect(u.exitCode).not.toBe(0);
      expect(u.stderr).toMatch(/Operation not permitted/);
      const n = await run(p, rt, { command: 'nsenter -t 1 -m true' });
      expect(n.exitCode).not.toBe(0);
    }
  });

  it('sets no_new_privileges', async () => {
    expect(await status(fx.provider, id, 'NoNewPrivs')).toBe('1');
    expect(await status(rootProvider, rootId, 'NoNewPrivs')).toBe('1');
  });

  it('bounds a fork bomb by the pids limit and stays usable', async () => {
    // busybox ash keeps retrying a failed fork, so the bomb only ends by the exec timeout.
    const r = await run(fx.provider, id, {
      command: 'n=0; while [ $n -lt 400 ]; do sleep 1000 & n=$((n+1)); done 2>/dev/null; echo n=$n',
      timeoutMs: 4000,
    }).catch((e: unknown) => e);
    const cg = `/sys/fs/cgroup/pids/stacyvm/${id}`;
    expect(readFileSync(`${cg}/pids.max`, 'utf8').trim()).toBe('256');
    expect(Number(readFileSync(`${cg}/pids.peak`, 'utf8').trim())).toBeLessThanOrEqual(256);
    expect(Number(readFileSync(`${cg}/pids.events`, 'utf8').split(' ')[1])).toBeGreaterThan(0);
    expect(isStacyError(r, 'timeout')).toBe(true);
    // The timeout killed the whole bomb; the sandbox and the host carry on. Killed processes
    // count against pids.current until the container's init has reaped them, so allow it that.
    const current = () => Number(readFileSync(`${cg}/pids.current`, 'utf8').trim());
    const deadline = Date.now() + 5_000;
    while (current() >= 10 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(current()).toBeLessThan(10);
    expect((await run(fx.provider, id, { command: 'echo alive' })).stdout).toBe('alive\n');
    expect((await run(rootProvider, rootId, { command: 'echo alive' })).stdout).toBe('alive\n');
  });

  it('OOM-kills a memory hog inside its own cgroup while the host carries on', async () => {
    const r = await run(fx.provider, id, { command: 'dd if=/dev/zero of=/dev/null bs=256M count=1; echo rc=$?' });
    expect(r.stdout).toContain('rc=137');
    expect((await run(fx.provider, id, { command: 'echo ok' })).stdout).toBe('ok\n');
    expect(await fx.provider.status(id)).toBe('running');
  });

  it('hides host processes', async () => {
    const r = await run(fx.provider, id, { command: "ls /proc | grep -c '^[0-9][0-9]*$'" });
    expect(Number(r.stdout.trim())).toBeLessThan(10);
    expect((await run(fx.provider, id, { command: `test -e /proc/${process.pid}/cmdline && grep -c node /proc/${process.pid}/cmdline` })).stdout.trim()).not.toBe('1');
  });

  it('hides host files', async () => {
    expect((await run(fx.provider, id, { command: `cat ${marker}` })).exitCode).not.toBe(0);
    expect((await run(fx.provider, id, { command: `cat /proc/1/root${marker}` })).exitCode).not.toBe(0);
  });

  it('has only loopback networking and no route out', async () => {
    const dev = await run(fx.provider, id, { command: "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '" });
    expect(dev.stdout.trim().split('\n')).toEqual(['lo']);
    const route = await run(fx.provider, id, { command: 'ip route get 1.1.1.1' });
    expect(route.exitCode).not.toBe(0);
    expect(route.stderr).toMatch(/unreachable/i);
    expect((await run(fx.provider, id, { command: 'ping -c 1 -W 1 127.0.0.1 >/dev/null 2>&1 || ip link show lo' })).stdout).not.toContain('DOWN');
  });

  it('keeps /workspace writable', async () => {
    expect((await run(fx.provider, id, { command: 'echo x > /workspace/w && cat /workspace/w' })).stdout).toBe('x\n');
  });

  it('supports a read-only root filesystem with writable /workspace and /tmp', async () => {
    const ro = fx.makeProvider({ readOnlyRootfs: true });
    const rt = (await ro.spawn(spawnSpec())).runtimeId;
    const r = await run(ro, rt, { command: 'touch /etc/x' });
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/Read-only file system/);
    expect((await run(ro, rt, { command: 'touch /workspace/x /tmp/x && echo ok' })).stdout).toBe('ok\n');
    await ro.destroy(rt);
  });

  describe('symlinks planted inside the sandbox never reach host files', () => {
    const read = async (rt: string, path: string): Promise<string> => {
      const chunks: Buffer[] = [];
      for await (const c of await fx.provider.readFile(rt, path)) chunks.push(c as Buffer);
      return Buffer.concat(chunks).toString('utf8');
    };

    it('reads resolve inside the container', async () => {
      await run(fx.provider, id, {
        command: `ln -sf ${marker} /workspace/m; ln -sf /proc/1/root${marker} /workspace/p; ln -sf /etc/shadow /workspace/s; ln -sf /proc/1/root/etc/passwd /workspace/pw`,
      });
      for (const p of ['/workspace/m', '/workspace/p', '/workspace/s']) {
        const got = await read(id, p).catch((e: unknown) => e);
        expect(isStacyError(got, 'not_found')).toBe(true);
      }
      // /proc/1/root is the sandbox's own init: its passwd, not the host's
      const pw = await read(id, '/workspace/pw');
      expect(pw).toBe('root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n');
    });

    it('writes, chmods and deletes through symlinks stay inside the container', async () => {
      const hostTarget = `/tmp/stacyvm-host-target-${randomBytes(4).toString('hex')}`;
      await run(fx.provider, id, { command: `ln -sf ${hostTarget} /workspace/t; ln -sf ${marker} /workspace/m2` });
      await fx.provider.writeFile(id, '/workspace/t', Buffer.from('inside'));
      expect(existsSync(hostTarget)).toBe(false);
      expect((await run(fx.provider, id, { command: `cat ${hostTarget}` })).stdout).toBe('inside');
      await fx.provider.chmod(id, '/workspace/m2', 0o777).catch(() => undefined);
      await fx.provider.deleteFile(id, '/workspace/m2', false);
      expect(readFileSync(marker, 'utf8')).toBe('host secret\n');
    });
  });
});
