/**
 * `stacyvm image …`: the local image store the oci provider runs sandboxes from. Works on the
 * store directly (no server needed); the store lives at `<data_dir>/images`.
 */
import { join } from 'node:path';
import type { Command } from 'commander';
import { loadConfig } from '../config/load.js';
import { ImageStore } from '../images/store.js';

/** The store for the configuration in effect (`--config` or STACYVM_CONFIG / STACYVM_DATA_DIR). */
export function imageStoreFor(configFile?: string): ImageStore {
  const config = loadConfig(configFile ? { file: configFile } : {});
  return new ImageStore(join(config.dataDir, 'images'));
}

function list(v: string, prev: string[] = []): string[] {
  return [...prev, ...v.split(',').map((s) => s.trim()).filter((s) => s !== '')];
}

function formatSize(bytes: number): string {
  return bytes >= 1 << 30 ? `${(bytes / (1 << 30)).toFixed(1)} GiB` : `${(bytes / (1 << 20)).toFixed(1)} MiB`;
}

/** Default image for the quick start: Debian bookworm with python3, answering to python / python:3. */
export async function buildDefaultImage(store: ImageStore, log: (line: string) => void): Promise<void> {
  const existing = await store.get('python');
  if (existing) {
    log(`image python already present (${existing.digest.slice(0, 19)}, ${formatSize(existing.size)})`);
    return;
  }
  log('building image python (Debian bookworm + python3) with mmdebstrap; this takes a minute');
  const started = Date.now();
  const meta = await store.build('python', { include: ['python3'], aliases: ['python:3', 'python:3.11'], onProgress: (l) => log(`  ${l}`) });
  log(`built python in ${((Date.now() - started) / 1000).toFixed(1)} s, ${formatSize(meta.size)}`);
}

/** Adds `image build|build-busybox|import|pull|list|rm|setup` to the program. */
export function registerImageCommands(program: Command): void {
  const image = program.command('image').description('manage local images for the oci provider').option('-c, --config <file>', 'stacyvm.yaml');
  const store = (cmd: Command): ImageStore => imageStoreFor(cmd.optsWithGlobals<{ config?: string }>().config);
  const progress = (line: string): void => void process.stderr.write(`${line}\n`);

  image
    .command('build')
    .description('build a Debian image with mmdebstrap (needs root and a Debian mirror)')
    .argument('<name>', 'image name, e.g. python')
    .option('--include <pkgs>', 'comma-separated Debian packages', list)
    .option('--suite <suite>', 'Debian suite', 'bookworm')
    .option('--alias <ref>', 'extra reference this image answers to (repeatable)', list)
    .action(async (name: string, opts: { include?: string[]; suite: string; alias?: string[] }, cmd: Command) => {
      const meta = await store(cmd).build(name, { include: opts.include ?? [], suite: opts.suite, aliases: opts.alias ?? [], onProgress: progress });
      console.log(`${meta.name} ${meta.digest} ${formatSize(meta.size)}`);
    });

  image
    .command('build-busybox')
    .description('build a tiny image from the host static busybox (milliseconds; tests and CI)')
    .argument('<name>', 'image name')
    .option('--alias <ref>', 'extra reference this image answers to (repeatable)', list)
    .action(async (name: string, opts: { alias?: string[] }, cmd: Command) => {
      const meta = await store(cmd).buildBusybox(name, { aliases: opts.alias ?? [] });
      console.log(`${meta.name} ${meta.digest} ${formatSize(meta.size)}`);
    });

  image
    .command('import')
    .description('import a `docker save` tarball or an OCI archive')
    .argument('<name>', 'image name')
    .argument('<archive>', 'path to the archive')
    .option('--alias <ref>', 'extra reference this image answers to (repeatable)', list)
    .action(async (name: string, archive: string, opts: { alias?: string[] }, cmd: Command) => {
      const meta = await store(cmd).importArchive(name, archive, { aliases: opts.alias ?? [] });
      console.log(`${meta.name} ${meta.digest} ${formatSize(meta.size)}`);
    });

  image
    .command('pull')
    .description('pull an image from an OCI registry with skopeo')
    .argument('<ref>', 'e.g. registry.example:5000/python:3.12')
    .option('--name <name>', 'local name (default: last path element of ref)')
    .option('--insecure', 'plain HTTP / unverified TLS (loopback registries)')
    .option('--alias <ref>', 'extra reference this image answers to (repeatable)', list)
    .action(async (ref: string, opts: { name?: string; insecure?: boolean; alias?: string[] }, cmd: Command) => {
      const meta = await store(cmd).pull(ref, { ...(opts.name ? { name: opts.name } : {}), tlsVerify: !opts.insecure, aliases: opts.alias ?? [] });
      console.log(`${meta.name} ${meta.digest} ${formatSize(meta.size)}`);
    });

  image
    .command('list')
    .alias('ls')
    .description('list local images')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const images = await store(cmd).list();
      if (opts.json) return console.log(JSON.stringify(images, null, 2));
      for (const m of images) {
        const aliases = m.aliases.length ? ` (${m.aliases.join(', ')})` : '';
        console.log(`${m.name}${aliases}\t${m.digest.slice(0, 19)}\t${formatSize(m.size)}\t${new Date(m.created).toISOString()}\t${m.source.kind}: ${m.source.detail}`);
      }
    });

  image
    .command('rm')
    .description('remove a local image (stop sandboxes using it first)')
    .argument('<name>', 'image name')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      await store(cmd).remove(name);
      console.log(`removed ${name}`);
    });

  image
    .command('setup')
    .description('build the default image (python) once, showing progress')
    .action(async (_opts: unknown, cmd: Command) => {
      await buildDefaultImage(store(cmd), progress);
    });
}
