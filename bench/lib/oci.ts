/**
 * The oci side of the spawn benchmarks (bench/spawn.ts, bench/compare.ts): an OciProvider on a
 * busybox image built from the host's static busybox, and raw runc on a prepared overlay bundle
 * of the same rootfs. Needs root + runc + busybox-static.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { OciProviderConfig } from '../../src/config/types.js';
import { defaultConfig } from '../../src/config/load.js';
import { ImageStore } from '../../src/images/store.js';
import { OciProvider } from '../../src/providers/oci/provider.js';
import type { ExecRequest, SpawnSpec } from '../../src/providers/provider.js';
import { now, round } from './stats.js';

/** One spawn → first output → destroy: ms from the start to the first stdout byte, and to the end. */
export interface RoundTimes {
  firstOutput: number;
  total: number;
}

/** Runs a command, resolving with the time (ms since `t0`) its first stdout byte arrived. */
export function firstOutput(cmd: string, args: string[], t0: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let at = -1;
    let err = '';
    c.stdout.once('data', () => (at = now() - t0));
    c.stderr.on('data', (d: Buffer) => (err += d.toString()));
    c.on('close', (code) => (code === 0 && at >= 0 ? resolve(at) : reject(new Error(`${cmd} ${args.join(' ')}: ${code} ${err}`))));
  });
}

export function sh(cmd: string, args: string[]): void {
  // stdio is not piped: a detached container would inherit the pipe and keep it open.
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited with ${r.status}`);
}

export const echoRequest: ExecRequest = { command: 'echo', args: ['hi'], mode: 'argv', env: {}, timeoutMs: 10_000 };

export interface OciBench {
  provider: OciProvider;
  imageBuildMs: number;
  /** A spawn spec for the bench image with a fresh sandbox id. */
  spec(): SpawnSpec;
  /** `runc run --detach` → `runc exec echo hi` → `runc delete -f`. */
  rawRound(id: string): Promise<RoundTimes>;
  /** The same through the Provider API. */
  providerRound(): Promise<RoundTimes>;
  rawRun(id: string): void;
  rawDelete(id: string): void;
  rawState: string;
  /** Destroys what the provider still holds, deletes `extraRawIds`, unmounts and removes `root`. */
  cleanup(extraRawIds?: string[]): Promise<void>;
}

/** Builds the image, provider and raw bundle under `root` (a fresh temporary directory). */
export async function setupOciBench(root: string, imageRoot = join(root, 'images')): Promise<OciBench> {
  if (process.getuid?.() !== 0) throw new Error('the oci benchmarks need root (runc, overlay mounts)');
  const images = new ImageStore(imageRoot);
  const tImg = now();
  await images.buildBusybox('bench-busybox');
  const imageBuildMs = round(now() - tImg);
  const image = await images.resolve('bench-busybox');
  // The shipped defaults, with this run's own root and a bridge name apart from a server's.
  const config: OciProviderConfig = { ...defaultConfig().providers.oci, root: join(root, 'oci'), bridgeName: 'stacy0' };
  const provider = new OciProvider({ config, images });
  let seq = 0;
  const spec = (): SpawnSpec => ({
    sandboxId: `sb-${(0x10000000 + ++seq).toString(16).slice(-8)}`,
    image: 'bench-busybox',
    memoryMb: 256,
    vcpus: 1,
    ownerId: null,
    workerId: 'bench',
    env: {},
    labels: {},
  });

  // Raw runc baseline: a prepared overlay bundle with runc's default spec (PID 1 sleeps).
  const rawState = join(root, 'raw-state');
  const rawBundle = join(root, 'raw');
  for (const d of ['upper', 'work', 'rootfs']) mkdirSync(join(rawBundle, d), { recursive: true });
  sh('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${image.rootfs},upperdir=${rawBundle}/upper,workdir=${rawBundle}/work`, `${rawBundle}/rootfs`]);
  sh('runc', ['spec', '--bundle', rawBundle]);
  const rawCfg = JSON.parse(readFileSync(join(rawBundle, 'config.json'), 'utf8')) as { process: { terminal: boolean; args: string[] } };
  rawCfg.process.terminal = false;
  rawCfg.process.args = ['/bin/sleep', '2147483647'];
  writeFileSync(join(rawBundle, 'config.json'), JSON.stringify(rawCfg));
  const rawRun = (id: string): void => sh('runc', ['--root', rawState, 'run', '--detach', '--bundle', rawBundle, id]);
  const rawDelete = (id: string): void => sh('runc', ['--root', rawState, 'delete', '--force', id]);

  return {
    provider,
    imageBuildMs,
    spec,
    rawState,
    rawRun,
    rawDelete,
    rawRound: async (id) => {
      const t0 = now();
      rawRun(id);
      const first = await firstOutput('runc', ['--root', rawState, 'exec', id, 'echo', 'hi'], t0);
      rawDelete(id);
      return { firstOutput: first, total: now() - t0 };
    },
    providerRound: async () => {
      const t0 = now();
      const { runtimeId } = await provider.spawn(spec());
      let first = -1;
      for await (const ev of provider.execStream(runtimeId, echoRequest)) {
        if (ev.type === 'stdout' && first < 0) first = now() - t0;
      }
      await provider.destroy(runtimeId);
      if (first < 0) throw new Error('oci provider exec printed nothing');
      return { firstOutput: first, total: now() - t0 };
    },
    cleanup: async (extraRawIds = []) => {
      for (const rt of await provider.inventory().catch(() => [])) await provider.destroy(rt.runtimeId).catch(() => undefined);
      for (const id of extraRawIds) spawnSync('runc', ['--root', rawState, 'delete', '--force', id]);
      spawnSync('umount', [`${rawBundle}/rootfs`]);
      rmSync(root, { recursive: true, force: true });
    },
  };
}
