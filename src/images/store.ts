import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { chmod, chown, copyFile, mkdir, readFile, readdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { StacyError, badRequest, notFound, providerError } from '../core/errors.js';
import { runTool } from './proc.js';

/** How an image came to exist; shown by `image list`. */
export interface ImageSource {
  kind: 'build' | 'busybox' | 'import' | 'pull';
  /** e.g. `mmdebstrap bookworm +python3`, the archive path, or the registry reference. */
  detail: string;
}

export interface ImageMeta {
  name: string;
  /** `sha256:…` of the source artefact (rootfs tarball, manifest or busybox binary + layout). */
  digest: string;
  /** Unpacked size in bytes. */
  size: number;
  /** epoch ms */
  created: number;
  source: ImageSource;
  /** Extra references this image answers to, e.g. `python:3`, `python:3.11`. */
  aliases: string[];
  /** `KEY=value` environment from the image config (PATH etc.). */
  env: string[];
}

export interface ResolvedImage {
  meta: ImageMeta;
  /** Absolute path of the unpacked, read-only root filesystem. */
  rootfs: string;
}

export interface BuildOptions {
  include?: string[];
  suite?: string;
  aliases?: string[];
  /** One line of mmdebstrap output at a time. */
  onProgress?: (line: string) => void;
}

const NAME_RE = /^[a-z0-9][a-z0-9._/-]{0,127}(:[A-Za-z0-9._-]{1,128})?$/;

/**
 * Well-known references and the local image name that provides them when no image carries the
 * reference itself, with the command that builds that image. A reference resolves to: an image
 * of exactly that name, else an image listing it in `aliases`, else this table.
 */
const WELL_KNOWN: { match: RegExp; image: string; command: string }[] = [
  { match: /^python(:(3|latest))?$/, image: 'python', command: 'stacyvm image build python --include python3 --alias python:3' },
  { match: /^python:3\.11$/, image: 'python', command: 'stacyvm image build python --include python3 --alias python:3' },
  { match: /^debian(:(bookworm|12|latest|stable))?$/, image: 'debian', command: 'stacyvm image build debian' },
  { match: /^busybox(:latest)?$/, image: 'busybox', command: 'stacyvm image build-busybox busybox' },
];

/** Directory key for a name: `/` and `:` are not allowed in the key, `+` and `@` never in names. */
function keyOf(name: string): string {
  return name.replaceAll('/', '+').replaceAll(':', '@');
}

/** Validates an image name (`name[:tag]`, lower-case repository). */
export function validateImageName(name: string): string {
  if (!NAME_RE.test(name) || name.includes('..')) throw badRequest(`invalid image name ${JSON.stringify(name)}`);
  return name;
}

/**
 * The local image store: each image is an unpacked root filesystem plus `image.json`, under
 * `<root>/<key>/`. Images are never modified after they are installed (sandboxes mount them as
 * an overlay lower layer); installing is build-in-temp then rename.
 */
export class ImageStore {
  constructor(readonly root: string) {}

  private dirOf(name: string): string {
    return join(this.root, keyOf(name));
  }

  /** All installed images, sorted by name. */
  async list(): Promise<ImageMeta[]> {
    let entries: string[];
    try {
      entries = await readdir(this.root);
    } catch {
      return [];
    }
    const out: ImageMeta[] = [];
    for (const e of entries) {
      if (e.startsWith('.')) continue;
      const meta = await this.readMeta(join(this.root, e));
      if (meta) out.push(meta);
    }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  private async readMeta(dir: string): Promise<ImageMeta | null> {
    try {
      return JSON.parse(await readFile(join(dir, 'image.json'), 'utf8')) as ImageMeta;
    } catch {
      return null;
    }
  }

  /** The image of exactly this name, or null. */
  async get(name: string): Promise<ImageMeta | null> {
    return this.readMeta(this.dirOf(name));
  }

  /**
   * Resolves a sandbox image reference to an installed image, or throws `image_not_found`
   * naming the command that provides it.
   */
  async resolve(ref: string): Promise<ResolvedImage> {
    const wanted = ref.trim();
    const candidates = [wanted];
    if (!wanted.includes(':')) candidates.push(`${wanted}:latest`);
    if (wanted.endsWith(':latest')) candidates.push(wanted.slice(0, -':latest'.length));
    for (const c of candidates) {
      if (!NAME_RE.test(c)) continue;
      const meta = await this.get(c);
      if (meta) return { meta, rootfs: join(this.dirOf(c), 'rootfs') };
    }
    const all = await this.list();
    for (const m of all) {
      if (candidates.some((c) => m.aliases.includes(c))) return { meta: m, rootfs: join(this.dirOf(m.name), 'rootfs') };
    }
    const known = WELL_KNOWN.find((k) => k.match.test(wanted));
    if (known) {
      const meta = await this.get(known.image);
      if (meta) return { meta, rootfs: join(this.dirOf(known.image), 'rootfs') };
      throw new StacyError('image_not_found', `image ${JSON.stringify(ref)} is not installed; provide it with: ${known.command}`);
    }
    throw new StacyError(
      'image_not_found',
      `image ${JSON.stringify(ref)} is not installed; provide it with: stacyvm image pull <registry>/${wanted} ` +
        `or stacyvm image import ${wanted} <docker-save-or-oci-archive>`,
    );
  }

  /** Removes an image; sandboxes still using it lose their lower layer, so stop them first. */
  async remove(name: string): Promise<void> {
    const dir = this.dirOf(validateImageName(name));
    if (!existsSync(join(dir, 'image.json'))) throw notFound('image', name);
    const trash = join(this.root, `.trash-${randomBytes(6).toString('hex')}`);
    await rename(dir, trash);
    await rm(trash, { recursive: true, force: true });
  }

  private async staging(): Promise<string> {
    await mkdir(this.root, { recursive: true, mode: 0o755 });
    const dir = join(this.root, `.tmp-${randomBytes(6).toString('hex')}`);
    await mkdir(join(dir, 'rootfs'), { recursive: true, mode: 0o755 });
    return dir;
  }

  private async install(stage: string, meta: Omit<ImageMeta, 'size' | 'created'>): Promise<ImageMeta> {
    const du = await runTool('du', ['-sb', join(stage, 'rootfs')]);
    const full: ImageMeta = { ...meta, size: Number(du.stdout.split(/\s/)[0] ?? 0), created: Date.now() };
    await writeFile(join(stage, 'image.json'), JSON.stringify(full, null, 2) + '\n', { mode: 0o444 });
    const dir = this.dirOf(meta.name);
    if (existsSync(dir)) {
      // Running sandboxes keep the old tree through their mount; only new ones see the new image.
      const trash = join(this.root, `.trash-${randomBytes(6).toString('hex')}`);
      await rename(dir, trash);
      await rename(stage, dir);
      await rm(trash, { recursive: true, force: true }).catch(() => undefined);
    } else {
      await rename(stage, dir);
    }
    return full;
  }

  private async abandon(stage: string): Promise<void> {
    await rm(stage, { recursive: true, force: true }).catch(() => undefined);
  }

  /**
   * Builds a minimal image from the host's static busybox: `/bin/busybox` plus one symlink per
   * applet, `/etc/passwd` with root and uid 1000, `/tmp`. Takes milliseconds; used by tests/CI.
   */
  async buildBusybox(name: string, opts: { busyboxPath?: string; aliases?: string[] } = {}): Promise<ImageMeta> {
    validateImageName(name);
    const bb = opts.busyboxPath ?? findStaticBusybox();
    if (!bb) throw providerError('busybox not found: install busybox-static (apt-get install busybox-static)');
    const stage = await this.staging();
    try {
      const r = join(stage, 'rootfs');
      for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc', 'root', 'home/user', 'proc', 'sys', 'dev', 'tmp', 'workspace']) {
        await mkdir(join(r, d), { recursive: true, mode: 0o755 });
      }
      await chmod(join(r, 'tmp'), 0o1777);
      await chown(join(r, 'home/user'), 1000, 1000);
      await copyFile(bb, join(r, 'bin/busybox'));
      await chmod(join(r, 'bin/busybox'), 0o755);
      const applets = (await runTool(bb, ['--list'])).stdout.split('\n').filter((a) => /^[a-z0-9_.[-]+$/.test(a));
      for (const a of applets) {
        if (a === 'busybox') continue;
        await symlink('busybox', join(r, 'bin', a)).catch(() => undefined);
      }
      await writeFile(join(r, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n');
      await writeFile(join(r, 'etc/group'), 'root:x:0:\nuser:x:1000:\n');
      await writeFile(join(r, 'etc/hostname'), 'sandbox\n');
      const digest = await sha256File(bb);
      return await this.install(stage, {
        name,
        digest: `sha256:${digest}`,
        source: { kind: 'busybox', detail: bb },
        aliases: opts.aliases ?? [],
        env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      });
    } catch (err) {
      await this.abandon(stage);
      throw err;
    }
  }

  /** Builds a Debian image with `mmdebstrap --variant=apt` (needs root and a Debian mirror). */
  async build(name: string, opts: BuildOptions = {}): Promise<ImageMeta> {
    validateImageName(name);
    const suite = opts.suite ?? 'bookworm';
    if (!/^[a-z0-9-]+$/.test(suite)) throw badRequest(`invalid suite ${JSON.stringify(suite)}`);
    const include = (opts.include ?? []).map((p) => p.trim()).filter((p) => p !== '');
    for (const p of include) if (!/^[a-z0-9][a-z0-9+.-]*$/.test(p)) throw badRequest(`invalid package name ${JSON.stringify(p)}`);
    const stage = await this.staging();
    try {
      const tarball = join(stage, 'rootfs.tar');
      const args = ['--variant=apt', '--mode=root', '--format=tar'];
      if (include.length > 0) args.push(`--include=${include.join(',')}`);
      args.push(suite, tarball);
      await runTool('mmdebstrap', args, { onLine: opts.onProgress });
      opts.onProgress?.('unpacking rootfs');
      const digest = await sha256File(tarball);
      await runTool('tar', ['-xpf', tarball, '-C', join(stage, 'rootfs'), '--numeric-owner']);
      await rm(tarball);
      const r = join(stage, 'rootfs');
      await mkdir(join(r, 'workspace'), { recursive: true });
      await chown(join(r, 'workspace'), 1000, 1000);
      return await this.install(stage, {
        name,
        digest: `sha256:${digest}`,
        source: { kind: 'build', detail: `mmdebstrap ${suite}${include.map((p) => ` +${p}`).join('')}` },
        aliases: opts.aliases ?? [],
        env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'LANG=C.UTF-8'],
      });
    } catch (err) {
      await this.abandon(stage);
      throw err;
    }
  }

  /** Imports a `docker save` tarball or an OCI archive (skopeo + umoci, whiteouts applied). */
  async importArchive(name: string, archivePath: string, opts: { aliases?: string[] } = {}): Promise<ImageMeta> {
    validateImageName(name);
    if (!existsSync(archivePath)) throw badRequest(`archive ${archivePath} does not exist`);
    const listing = await runTool('tar', ['-tf', archivePath]);
    const files = new Set(listing.stdout.split('\n').map((f) => f.replace(/^\.\//, '')));
    let transport: string;
    if (files.has('manifest.json')) transport = `docker-archive:${archivePath}`;
    else if (files.has('oci-layout') && files.has('index.json')) transport = `oci-archive:${archivePath}`;
    else throw badRequest(`${archivePath} is neither a docker-save nor an OCI archive`);
    return this.fromTransport(name, transport, { kind: 'import', detail: archivePath }, [], opts.aliases ?? []);
  }

  /** Pulls `ref` (e.g. `127.0.0.1:5000/python:3.12`) from a registry with skopeo. */
  async pull(ref: string, opts: { name?: string; tlsVerify?: boolean; aliases?: string[] } = {}): Promise<ImageMeta> {
    if (!/^[A-Za-z0-9._/:@-]+$/.test(ref)) throw badRequest(`invalid image reference ${JSON.stringify(ref)}`);
    const name = validateImageName(opts.name ?? defaultNameForRef(ref));
    const extra = opts.tlsVerify === false ? ['--src-tls-verify=false'] : [];
    return this.fromTransport(name, `docker://${ref}`, { kind: 'pull', detail: ref }, extra, opts.aliases ?? []);
  }

  private async fromTransport(
    name: string,
    transport: string,
    source: ImageSource,
    extraArgs: string[],
    aliases: string[],
  ): Promise<ImageMeta> {
    const stage = await this.staging();
    try {
      const layout = join(stage, 'layout');
      await runTool('skopeo', ['copy', '--quiet', ...extraArgs, transport, `oci:${layout}:img`], { timeoutMs: 30 * 60_000 });
      const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
      const digest = index.manifests[0]?.digest ?? '';
      const bundle = join(stage, 'bundle');
      await rm(join(stage, 'rootfs'), { recursive: true });
      await runTool('umoci', ['unpack', '--image', `${layout}:img`, bundle]);
      const cfg = JSON.parse(await readFile(join(bundle, 'config.json'), 'utf8')) as { process?: { env?: string[] } };
      await rename(join(bundle, 'rootfs'), join(stage, 'rootfs'));
      await rm(bundle, { recursive: true, force: true });
      await rm(layout, { recursive: true, force: true });
      return await this.install(stage, { name, digest, source, aliases, env: cfg.process?.env ?? [] });
    } catch (err) {
      await this.abandon(stage);
      throw err;
    }
  }
}

/** `127.0.0.1:5000/library/python:3.12` → `python:3.12`. */
export function defaultNameForRef(ref: string): string {
  const noDigest = ref.split('@')[0] ?? ref;
  const last = noDigest.split('/').pop() ?? noDigest;
  return last.toLowerCase().replace(/^([^:]*)$/, '$1:latest');
}

/** The first static busybox on the host (busybox-static installs /bin/busybox). */
export function findStaticBusybox(): string | null {
  for (const p of ['/bin/busybox', '/usr/bin/busybox', '/usr/lib/busybox/busybox']) {
    if (existsSync(p)) return p;
  }
  return null;
}

function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (d) => h.update(d))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}
