import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOciFixture, ociSupported, run, type OciFixture } from './oci-fixture.js';

const supported = ociSupported('oci restart re-adoption');

describe.skipIf(!supported)('oci re-adoption after a server kill -9', () => {
  let fx: OciFixture;
  let ids: string[] = [];

  beforeAll(async () => {
    fx = await createOciFixture();
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', join(import.meta.dirname, '../fixtures/oci-spawner.ts'), fx.images.root, fx.config.root, '5'],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const line = await new Promise<string>((resolve, reject) => {
      const rl = createInterface({ input: child.stdout! });
      rl.once('line', resolve);
      child.once('exit', (code) => reject(new Error(`spawner exited with ${code}`)));
      setTimeout(() => reject(new Error('spawner did not report in time')), 60_000).unref();
    });
    ids = JSON.parse(line) as string[];
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
  });
  afterAll(async () => {
    await fx?.cleanup();
  });

  it('a fresh provider finds all 5 sandboxes, with their annotations, still usable', async () => {
    const inv = await fx.provider.inventory();
    expect(inv.map((r) => r.runtimeId).sort()).toEqual([...ids].sort());
    for (const r of inv) {
      expect(r).toMatchObject({ status: 'running', workerId: 'local', ownerId: 'restart-owner' });
      expect(r.sandboxId).toMatch(/^sb-a000000[0-4]$/);
      expect(r.createdAt).toBeGreaterThan(0);
    }
    for (const id of ids) {
      expect((await run(fx.provider, id, { command: 'echo $SPAWNED_BY; id -u' })).stdout).toBe('first-server\n1000\n');
      await fx.provider.writeFile(id, '/workspace/f', Buffer.from('x'));
    }
  });

  it('destroying them leaves nothing behind', async () => {
    for (const id of ids) await fx.provider.destroy(id);
    expect(await fx.provider.inventory()).toEqual([]);
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8');
    expect(mounts).not.toContain(fx.config.root);
    for (const id of ids) expect(existsSync(`/sys/fs/cgroup/pids/stacyvm/${id}`)).toBe(false);
  });
});
