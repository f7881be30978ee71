import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, cpSync, unlinkSync, mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isStacyError } from '../../src/core/errors.js';
import { ImageStore, defaultNameForRef } from '../../src/images/store.js';
import { hasBinary, hostSupports, isRoot } from '../host.js';

const base = hostSupports('image store', isRoot, hasBinary('busybox'));
const tools = base && hostSupports('image import/pull', hasBinary('skopeo'), hasBinary('umoci'), hasBinary('docker-registry'));
const debootstrap = base && hostSupports('image build (mmdebstrap)', hasBinary('mmdebstrap'));

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (typeof a === 'object' && a ? resolve(a.port) : reject(new Error('no port'))));
    });
  });
}

describe.skipIf(!base)('image store', () => {
  let root: string;
  let store: ImageStore;
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'stacyvm-images-'));
    store = new ImageStore(join(root, 'images'));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('builds a busybox image quickly with metadata', async () => {
    const meta = await store.buildBusybox('busybox', { aliases: ['tiny:1'] });
    expect(meta).toMatchObject({ name: 'busybox', source: { kind: 'busybox' }, aliases: ['tiny:1'] });
    expect(meta.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(meta.size).toBeGreaterThan(1_000_000);
    const r = await store.resolve('busybox');
    expect(existsSync(join(r.rootfs, 'bin/sh'))).toBe(true);
    expect((await store.list()).map((m) => m.name)).toEqual(['busybox']);
  });

  it('resolves names, :latest, aliases and well-known references', async () => {
    expect((await store.resolve('busybox:latest')).meta.name).toBe('busybox');
    expect((await store.resolve('tiny:1')).meta.name).toBe('busybox');
    await store.buildBusybox('python', { aliases: ['python:3.11'] });
    for (const ref of ['python', 'python:3', 'python:latest', 'python:3.11']) {
      expect((await store.resolve(ref)).meta.name).toBe('python');
    }
  });

  it('fails with image_not_found naming the command that provides the image', async () => {
    const err1 = await store.resolve('debian:bookworm').catch((e: unknown) => e);
    expect(isStacyError(err1, 'image_not_found')).toBe(true);
    expect((err1 as Error).message).toContain('stacyvm image build debian');
    const err2 = await store.resolve('python:3.12').catch((e: unknown) => e);
    expect(isStacyError(err2, 'image_not_found')).toBe(true);
    expect((err2 as Error).message).toContain('stacyvm image pull');
  });

  it('removes images', async () => {
    await store.remove('python');
    await expect(store.resolve('python:3')).rejects.toSatisfy((e: unknown) => isStacyError(e, 'image_not_found'));
    await expect(store.remove('python')).rejects.toSatisfy((e: unknown) => isStacyError(e, 'not_found'));
  });

  it('derives local names from registry references', () => {
    expect(defaultNameForRef('127.0.0.1:5000/library/python:3.12')).toBe('python:3.12');
    expect(defaultNameForRef('127.0.0.1:5000/busybox')).toBe('busybox:latest');
  });

  describe.skipIf(!tools)('import and pull', () => {
    let layout: string;
    let registry: ChildProcess | undefined;
    let port = 0;
    beforeAll(async () => {
      // A two-layer OCI image: the second layer deletes /etc/deleted, which must stay deleted.
      layout = join(root, 'layout');
      const bundle = join(root, 'bundle');
      execFileSync('umoci', ['init', '--layout', layout]);
      execFileSync('umoci', ['new', '--image', `${layout}:t`]);
      execFileSync('umoci', ['unpack', '--image', `${layout}:t`, bundle]);
      cpSync((await store.resolve('busybox')).rootfs, join(bundle, 'rootfs'), { recursive: true, verbatimSymlinks: true });
      writeFileSync(join(bundle, 'rootfs/etc/deleted'), 'gone\n');
      execFileSync('umoci', ['repack', '--image', `${layout}:t`, bundle]);
      execFileSync('umoci', ['config', '--image', `${layout}:t`, '--config.env', 'FOO=bar']);
      rmSync(bundle, { recursive: true, force: true });
      execFileSync('umoci', ['unpack', '--image', `${layout}:t`, bundle]);
      unlinkSync(join(bundle, 'rootfs/etc/deleted'));
      writeFileSync(join(bundle, 'rootfs/etc/added'), 'new\n');
      execFileSync('umoci', ['repack', '--image', `${layout}:t`, bundle]);
      rmSync(bundle, { recursive: true, force: true });

      port = await freePort();
      const regDir = join(root, 'registry');
      mkdirSync(regDir);
      const cfg = join(root, 'registry.yml');
      writeFileSync(
        cfg,
        `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${regDir}\nhttp:\n  addr: 127.0.0.1:${port}\n`,
      );
      registry = spawn('docker-registry', ['serve', cfg], { stdio: 'ignore' });
      for (let i = 0; i < 100; i++) {
        try {
          const r = await fetch(`http://127.0.0.1:${port}/v2/`);
          if (r.ok) break;
        } catch {
          await new Promise((res) => setTimeout(res, 100));
        }
      }
    });
    afterAll(() => {
      registry?.kill('SIGKILL');
    });

    const checkRootfs = async (name: string): Promise<void> => {
      const r = await store.resolve(name);
      expect(existsSync(join(r.rootfs, 'bin/busybox'))).toBe(true);
      expect(readFileSync(join(r.rootfs, 'etc/added'), 'utf8')).toBe('new\n');
      expect(existsSync(join(r.rootfs, 'etc/deleted'))).toBe(false);
      expect(r.meta.env).toContain('FOO=bar');
      expect(r.meta.digest).toMatch(/^sha256:/);
    };

    it('imports a docker save archive honouring whiteouts', async () => {
      const archive = join(root, 'docker.tar');
      execFileSync('skopeo', ['copy', '--quiet', `oci:${layout}:t`, `docker-archive:${archive}:imported:1`]);
      const meta = await store.importArchive('imported:1', archive);
      expect(meta.source).toEqual({ kind: 'import', detail: archive });
      await checkRootfs('imported:1');
    });

    it('imports an OCI archive', async () => {
      const archive = join(root, 'oci.tar');
      execFileSync('skopeo', ['copy', '--quiet', `oci:${layout}:t`, `oci-archive:${archive}:t`]);
      await store.importArchive('ociimg', archive);
      await checkRootfs('ociimg');
    });

    it('rejects an archive that is neither format', async () => {
      const bogus = join(root, 'bogus.tar');
      execFileSync('tar', ['-cf', bogus, '-C', root, 'registry.yml']);
      await expect(store.importArchive('bogus', bogus)).rejects.toSatisfy((e: unknown) => isStacyError(e, 'bad_request'));
    });

    it('pulls from a loopback registry', async () => {
      const ref = `127.0.0.1:${port}/test/pulled:2`;
      execFileSync('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${layout}:t`, `docker://${ref}`]);
      const meta = await store.pull(ref, { tlsVerify: false });
      expect(meta.name).toBe('pulled:2');
      expect(meta.source).toEqual({ kind: 'pull', detail: ref });
      await checkRootfs('pulled:2');
    });
  });

  describe.skipIf(!debootstrap)('mmdebstrap build', () => {
    it('builds a Debian image reporting progress', { timeout: 300_000 }, async () => {
      const lines: string[] = [];
      const meta = await store.build('debian', { onProgress: (l) => lines.push(l) });
      expect(meta.source.kind).toBe('build');
      expect(lines.length).toBeGreaterThan(3);
      const r = await store.resolve('debian:bookworm');
      expect(readFileSync(join(r.rootfs, 'etc/debian_version'), 'utf8')).toMatch(/^12\./);
    });
  });
});
