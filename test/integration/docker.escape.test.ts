/**
 * Escape tests for the docker provider on a real dockerd: what a hostile command can and
 * cannot do from inside a sandbox (capabilities, seccomp, no_new_privs, pids and memory
 * limits, host PIDs/files/network), and symlink attacks through the file API.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isStacyError } from '../../src/core/errors.js';
import { DockerProvider } from '../../src/providers/docker/index.js';
import type { ExecRequest } from '../../src/providers/provider.js';
import { collectOutcome, readAll, shellRequest, type ExecOutcome } from '../fixtures/exec.js';
import { busyboxStaticProbe, dockerSocketProbe, readyTestDocker, testDockerConfig, testSpawnSpec } from '../fixtures/docker.js';
import { hostSupports } from '../host.js';

const supported = hostSupports('docker escape', dockerSocketProbe, busyboxStaticProbe);

const sha = (path: string): string | null => (existsSync(path) ? createHash('sha256').update(readFileSync(path)).digest('hex') : null);

/** Runs a file operation that must either fail with a typed error or succeed; returns its value or null. */
async function settle<T>(fn: () => Promise<T>): Promise<T | null> {
  try {
    return await fn();
  } catch (err) {
    expect(isStacyError(err, 'not_found') || isStacyError(err, 'bad_request'), `unexpected error ${String(err)}`).toBe(true);
    return null;
  }
}

describe.skipIf(!supported)('docker sandbox escape attempts (real dockerd)', () => {
  let docker: Docker;
  let provider: DockerProvider;
  let rt: string;
  const spawned: Array<{ p: DockerProvider; id: string }> = [];
  const sh = (command: string, extra: Partial<ExecRequest> = {}, id = rt, p = provider): Promise<ExecOutcome> =>
    collectOutcome(p.execStream(id, shellRequest(command, extra)));

  beforeAll(async () => {
    docker = await readyTestDocker();
    provider = new DockerProvider({ config: testDockerConfig() });
    rt = (await provider.spawn(testSpawnSpec())).runtimeId;
    spawned.push({ p: provider, id: rt });
  });

  afterAll(async () => {
    for (const s of spawned) await s.p.destroy(s.id).catch(() => undefined);
  });

  describe('kernel attack surface', () => {
    it('has no capabilities: CapEff/CapBnd are empty and mount fails', async () => {
      const status = await sh('grep -E "^(CapEff|CapBnd|CapPrm):" /proc/self/status');
      for (const line of status.stdout.trim().split('\n')) expect(line).toMatch(/:\s+0000000000000000$/);
      expect(status.stdout.trim().split('\n')).toHaveLength(3);
      const mount = await sh('mkdir -p /mnt/x && mount -t tmpfs none /mnt/x');
      expect(mount.exitCode).not.toBe(0);
      const chown = await sh('touch /workspace/own && chown 65534 /workspace/own');
      expect(chown.exitCode).not.toBe(0);
    });

    it('runs under seccomp filtering with no_new_privs', async () => {
      const r = await sh('grep -E "^(Seccomp|NoNewPrivs):" /proc/self/status');
      expect(r.stdout).toMatch(/NoNewPrivs:\s+1/);
      expect(r.stdout).toMatch(/Seccomp:\s+2/);
      // unshare(CLONE_NEWUSER) is refused by the default profile without CAP_SYS_ADMIN.
      const unshare = await sh('unshare -U -r true');
      expect(unshare.exitCode).not.toBe(0);
    });

    it('applies a configured seccomp profile and added capabilities', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'stacyvm-seccomp-'));
      try {
        const profile = join(dir, 'deny-mkdir.json');
        writeFileSync(
          profile,
          JSON.stringify({ defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['mkdir', 'mkdirat'], action: 'SCMP_ACT_ERRNO' }] }),
        );
        const custom = new DockerProvider({ config: testDockerConfig({ seccompProfile: profile, addedCaps: ['CHOWN'] }) });
        const id = (await custom.spawn(testSpawnSpec())).runtimeId;
        spawned.push({ p: custom, id });
        const r = await sh('mkdir /tmp/denied 2>/dev/null && echo made || echo refused; touch /tmp/f && chown 65534 /tmp/f && echo chowned', {}, id, custom);
        expect(r.stdout).toBe('refused\nchowned\n');
        const caps = await sh('grep CapEff /proc/self/status', {}, id, custom);
        // CAP_CHOWN is bit 0 and the only one.
        expect(caps.stdout).toMatch(/CapEff:\s+0000000000000001/);
        expect(() => new DockerProvider({ config: testDockerConfig({ seccompProfile: join(dir, 'missing.json') }) })).toThrow(/seccomp_profile/);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('bounds a fork bomb with the pids limit and survives it', async () => {
      const limit = 48;
      const small = new DockerProvider({ config: testDockerConfig({ pidsLimit: limit }) });
      const id = (await small.spawn(testSpawnSpec())).runtimeId;
      spawned.push({ p: small, id });
      // The inner shell forks until the kernel refuses (ash then exits), the outer loop starts
      // another: the cgroup stays pinned at its limit until the tree is killed.
      const bomb = sh('while :; do (while :; do sleep 300 & done) 2>/dev/null; done', { timeoutMs: 6000 }, id, small);
      let peak = 0;
      // dockerd 20.10 takes about a second per stats sample (one-shot is ignored).
      for (let i = 0; i < 4; i++) {
        const stats = (await docker.getContainer(id).stats({ stream: false })) as { pids_stats?: { current?: number } };
        peak = Math.max(peak, stats.pids_stats?.current ?? 0);
      }
      const result = await bomb;
      expect(isStacyError(result.error, 'timeout')).toBe(true);
      expect(peak).toBeGreaterThan(limit / 2);
      expect(peak).toBeLessThanOrEqual(limit);
      // The tree kill got through the saturated limit: the sandbox is usable and clean again.
      const after = await sh('ps -o pid | wc -l', {}, id, small);
      expect(after.exitCode).toBe(0);
      expect(Number(after.stdout.trim())).toBeLessThan(10);
      expect(await small.status(id)).toBe('running');
      await docker.ping();
    }, 60_000);

    it('OOM-kills a memory hog inside the sandbox while the sandbox and daemon carry on', async () => {
      const small = new DockerProvider({ config: testDockerConfig() });
      const id = (await small.spawn(testSpawnSpec({ memoryMb: 64 }))).runtimeId;
      spawned.push({ p: small, id });
      const hog = await sh("x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived ${#x}", { timeoutMs: 30_000 }, id, small);
      expect(hog.stdout).not.toContain('survived');
      expect(hog.exitCode).toBe(137);
      expect(await small.status(id)).toBe('running');
      expect((await sh('echo alive', {}, id, small)).stdout).toBe('alive\n');
      await docker.ping();
      const info = await docker.getContainer(id).inspect();
      expect(info.HostConfig.Memory).toBe(64 * 1024 * 1024);
    }, 60_000);
  });

  describe('host isolation', () => {
    it('cannot see host processes', async () => {
      const r = await sh('ls /proc | grep -c "^[0-9]"; ps -o comm');
      const [count, ...rest] = r.stdout.trim().split('\n');
      expect(Number(count)).toBeLessThan(12);
      const names = rest.join(' ');
      for (const hostProc of ['dockerd', 'containerd', 'node', 'vitest', 'systemd']) expect(names).not.toContain(hostProc);
    });

    it('cannot see host files', async () => {
      const name = `stacyvm-escape-${randomBytes(6).toString('hex')}`;
      const hostFile = join(tmpdir(), name);
      writeFileSync(hostFile, 'HOST ONLY');
      try {
        const r = await sh('cat "$1" 2>/dev/null; ls / ; cat /etc/hostname', { args: [hostFile] });
        expect(r.stdout).not.toContain('HOST ONLY');
        expect(r.stdout.split('\n')).not.toContain('work');
        expect(r.stdout).not.toContain(hostname());
        await expect(provider.readFile(rt, hostFile).then(readAll)).rejects.toMatchObject({ code: 'not_found' });
      } finally {
        rmSync(hostFile, { force: true });
      }
    });

    it('has no network beyond loopback and cannot reach host services', async () => {
      let connections = 0;
      const server: Server = createServer((s) => {
        connections += 1;
        s.end('HOST SERVICE\n');
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const port = (server.address() as { port: number }).port;
      try {
        const ifaces = await sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '");
        expect(ifaces.stdout.trim().split('\n')).toEqual(['lo']);
        const r = await sh(`wget -q -T 2 -O - http://127.0.0.1:${port}/ ; echo rc=$?`, { timeoutMs: 10_000 });
        expect(r.stdout).not.toContain('HOST SERVICE');
        expect(r.stdout).not.toContain('rc=0');
        expect(connections).toBe(0);
      } finally {
        server.close();
      }
    });
  });

  describe('symlink attacks through the file API', () => {
    const marker = `stacyvm-pwned-${randomBytes(4).toString('hex')}`;
    const hostFiles = ['/etc/shadow', '/etc/hostname', '/etc/passwd'];
    let before: Record<string, string | null>;

    beforeAll(async () => {
      before = Object.fromEntries(hostFiles.map((f) => [f, sha(f)]));
      const plant = await sh(
        'ln -s /etc/shadow /workspace/x && ln -s /proc/1/root/etc/hostname /workspace/h && ln -s /etc /workspace/etcdir && ' +
          'ln -s / /workspace/rootlink && ln -s ../../../../../../etc/passwd /workspace/rel && echo planted',
      );
      expect(plant.stdout).toBe('planted\n');
    });

    const hostUntouched = (): void => {
      for (const f of hostFiles) expect(sha(f), f).toBe(before[f]);
      expect(existsSync(`/etc/${marker}`)).toBe(false);
    };

    it('reads never return host file content', async () => {
      const hostContent = Object.fromEntries(hostFiles.filter((f) => existsSync(f)).map((f) => [f, readFileSync(f)]));
      for (const path of ['/workspace/x', '/workspace/h', '/workspace/rootlink/etc/shadow', '/workspace/rel', '/proc/self/root/etc/hostname', '/proc/1/root/etc/shadow']) {
        const content = await settle(async () => readAll(await provider.readFile(rt, path)));
        if (content === null) continue;
        for (const [f, host] of Object.entries(hostContent)) {
          // The image has its own /etc/passwd; it must not be the host's.
          expect(content.equals(host), `${path} returned host ${f}`).toBe(false);
        }
      }
      hostUntouched();
    });

    it('writes through links land inside the container, never on the host', async () => {
      await settle(() => provider.writeFile(rt, '/workspace/x', Buffer.from('PWNED')));
      await settle(() => provider.writeFile(rt, '/workspace/h', Buffer.from('PWNED')));
      await settle(() => provider.writeFile(rt, `/workspace/etcdir/${marker}`, Buffer.from('PWNED')));
      await settle(() => provider.writeFile(rt, `/workspace/rootlink/etc/${marker}-2`, Buffer.from('PWNED')));
      await settle(() => provider.writeFile(rt, '/workspace/rel', Buffer.from('PWNED')));
      hostUntouched();
      expect(existsSync(`/etc/${marker}-2`)).toBe(false);
      // The write through the directory link created the file in the container's /etc.
      expect((await sh(`cat /etc/${marker}`)).stdout).toBe('PWNED');
    });

    it('chmod, move and delete through links never touch host files', async () => {
      await settle(() => provider.chmod(rt, '/workspace/etcdir/passwd', 0o777));
      await settle(() => provider.moveFile(rt, '/workspace/etcdir/passwd', '/workspace/stolen'));
      await settle(() => provider.deleteFile(rt, '/workspace/rootlink/etc/hostname', false));
      await settle(() => provider.deleteFile(rt, '/workspace/etcdir', true));
      hostUntouched();
      expect(existsSync('/etc')).toBe(true);
    });
  });
});
