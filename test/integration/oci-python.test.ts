/**
 * The quick start on oci: the default `python` image (Debian bookworm + python3, built with
 * mmdebstrap) runs `python3 -c "print(40+2)"` as the unprivileged sandbox user.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDefaultImage } from '../../src/cli/image.js';
import { hasBinary, hostSupports } from '../host.js';
import { createOciFixture, ociSupported, run, spawnSpec, type OciFixture } from './oci-fixture.js';

const supported = ociSupported('oci python quick start') && hostSupports('oci python quick start', hasBinary('mmdebstrap'));

describe.skipIf(!supported)('oci python quick start', () => {
  let fx: OciFixture;
  const progress: string[] = [];
  beforeAll(async () => {
    fx = await createOciFixture();
    await buildDefaultImage(fx.images, (l) => progress.push(l));
  }, 600_000);
  afterAll(async () => {
    await fx?.cleanup();
  });

  it('builds the default image with progress and resolves python:3 to it', async () => {
    expect(progress.length).toBeGreaterThan(3);
    expect((await fx.images.resolve('python:3')).meta.name).toBe('python');
  });

  it('prints 42 from python3 inside a sandbox, as user 1000, writing to /workspace', async () => {
    const { runtimeId } = await fx.provider.spawn(spawnSpec({ image: 'python:3' }));
    const r = await run(fx.provider, runtimeId, { command: 'python3', args: ['-c', 'print(40+2)'], mode: 'argv' });
    expect(r).toEqual({ stdout: '42\n', stderr: '', exitCode: 0 });
    const w = await run(fx.provider, runtimeId, {
      command: 'python3 -c "import os, subprocess; open(\'/workspace/o.txt\', \'w\').write(str(os.getuid())); print(subprocess.run([\'id\', \'-u\'], capture_output=True, text=True).stdout.strip())"',
    });
    expect(w.stdout).toBe('1000\n');
    expect((await fx.provider.stat(runtimeId, '/workspace/o.txt')).size).toBe(4);
  });
});
