/**
 * Shared set-up for runc-backed tests: a private temp root holding an image store with a
 * busybox image and an `oci` provider whose runc state lives there too, plus teardown that
 * destroys every runtime the provider still reports even when a test failed.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { OciProviderConfig } from '../../src/config/types.js';
import { defaultConfig } from '../../src/config/load.js';
import { ImageStore } from '../../src/images/store.js';
import { OciProvider } from '../../src/providers/oci/provider.js';
import type { ExecEvent, ExecRequest, Provider, SpawnSpec } from '../../src/providers/provider.js';
import { hasBinary, hostSupports, isRoot } from '../host.js';

export const ociSupported = (suite: string): boolean =>
  hostSupports(suite, isRoot, hasBinary('runc'), hasBinary('busybox'), hasBinary('mount'));

export interface OciFixture {
  root: string;
  images: ImageStore;
  provider: OciProvider;
  config: OciProviderConfig;
  makeProvider(over: Partial<OciProviderConfig>): OciProvider;
  cleanup(): Promise<void>;
}

export async function createOciFixture(over: Partial<OciProviderConfig> = {}): Promise<OciFixture> {
  const root = mkdtempSync(join(tmpdir(), 'stacyvm-oci-'));
  const images = new ImageStore(join(root, 'images'));
  await images.buildBusybox('busybox');
  // The shipped defaults, with this fixture's own root and a bridge name apart from a server's.
  const config: OciProviderConfig = { ...defaultConfig().providers.oci, root: join(root, 'oci'), bridgeName: 'stacy0', ...over };
  const providers: OciProvider[] = [];
  const makeProvider = (o: Partial<OciProviderConfig>): OciProvider => {
    const p = new OciProvider({ config: { ...config, ...o }, images });
    providers.push(p);
    return p;
  };
  const provider = makeProvider({});
  return {
    root,
    images,
    provider,
    config,
    makeProvider,
    async cleanup() {
      for (const p of providers) {
        for (const rt of await p.inventory().catch(() => [])) await p.destroy(rt.runtimeId).catch(() => undefined);
      }
      rmSync(root, { recursive: true, force: true });
    },
  };
}

let seq = 0;
export function spawnSpec(over: Partial<SpawnSpec> = {}): SpawnSpec {
  seq += 1;
  return {
    sandboxId: `sb-${(0x10000000 + seq * 7919 + process.pid).toString(16).slice(-8)}`,
    image: 'busybox',
    memoryMb: 256,
    vcpus: 1,
    ownerId: 'owner-1',
    workerId: 'local',
    env: {},
    labels: {},
    ...over,
  };
}

export interface Collected {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export async function run(p: Provider, id: string, req: Partial<ExecRequest> & { command: string }): Promise<Collected> {
  const full: ExecRequest = { args: [], mode: 'shell', env: {}, timeoutMs: 20_000, ...req };
  let stdout = '';
  let stderr = '';
  let exitCode = -1;
  for await (const ev of p.execStream(id, full) as AsyncIterable<ExecEvent>) {
    if (ev.type === 'stdout') stdout += ev.data.toString('utf8');
    else if (ev.type === 'stderr') stderr += ev.data.toString('utf8');
    else if (ev.type === 'exit') exitCode = ev.exitCode;
  }
  return { stdout, stderr, exitCode };
}
