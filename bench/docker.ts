/**
 * Docker provider overhead: spawn / exec / destroy through DockerProvider versus the same
 * Engine API calls made directly with dockerode, interleaved in one run against one daemon.
 *
 *   eval "$(scripts/test-services.sh docker)"; npm run bench:docker -- [iterations]
 *
 * Uses STACYVM_TEST_DOCKER_SOCKET (or DOCKER_SOCKET, default /var/run/docker.sock) and builds
 * the busybox test image when missing. Prints JSON with p50/p99 per phase and provider/raw
 * ratios (the goal is ≤ 1.2).
 */
import Docker from 'dockerode';
import { newSandboxId } from '../src/core/ids.js';
import { defaultConfig } from '../src/config/load.js';
import { DockerProvider } from '../src/providers/docker/provider.js';
import { demuxDockerStream } from '../src/providers/docker/demux.js';
import { TEST_IMAGE, ensureTestImage } from '../test/fixtures/docker-image.js';

const socket = process.env.STACYVM_TEST_DOCKER_SOCKET ?? process.env.DOCKER_SOCKET ?? '/var/run/docker.sock';
const iterations = Math.max(1, Number(process.argv[2] ?? 30));
const warmup = 3;

type Phase = 'spawn' | 'exec' | 'destroy';
const samples: Record<'provider' | 'raw', Record<Phase, number[]>> = {
  provider: { spawn: [], exec: [], destroy: [] },
  raw: { spawn: [], exec: [], destroy: [] },
};

const now = (): number => Number(process.hrtime.bigint()) / 1e6;

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const start = now();
  const value = await fn();
  return [value, now() - start];
}

const docker = new Docker({ socketPath: socket });
const provider = new DockerProvider({ config: { ...defaultConfig().providers.docker, enabled: true, socket }, docker });

async function providerRound(record: boolean): Promise<void> {
  const [spawned, tSpawn] = await timed(() =>
    provider.spawn({ sandboxId: newSandboxId(), image: TEST_IMAGE, memoryMb: 256, vcpus: 1, ownerId: null, workerId: 'bench', env: {}, labels: {} }),
  );
  const [, tExec] = await timed(async () => {
    let exit = -1;
    for await (const e of provider.execStream(spawned.runtimeId, { command: 'echo', args: ['hello'], mode: 'argv', env: {}, timeoutMs: 30_000 })) {
      if (e.type === 'exit') exit = e.exitCode;
    }
    if (exit !== 0) throw new Error(`provider exec exit ${exit}`);
  });
  const [, tDestroy] = await timed(() => provider.destroy(spawned.runtimeId));
  if (record) {
    samples.provider.spawn.push(tSpawn);
    samples.provider.exec.push(tExec);
    samples.provider.destroy.push(tDestroy);
  }
}

/** The same container settings the provider uses, so only the provider's own work differs. */
async function rawRound(record: boolean): Promise<void> {
  const sandboxId = newSandboxId();
  const [container, tSpawn] = await timed(async () => {
    const c = await docker.createContainer({
      name: `stacyvm-bench-raw-${sandboxId}`,
      Image: TEST_IMAGE,
      Cmd: ['/bin/sh', '-c', 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'],
      Entrypoint: [],
      Hostname: sandboxId,
      WorkingDir: '/workspace',
      Labels: { 'stacyvm.bench': 'raw' },
      NetworkDisabled: true,
      HostConfig: {
        Init: true,
        Runtime: 'runc',
        NetworkMode: 'none',
        Memory: 256 * 1024 * 1024,
        MemorySwap: 256 * 1024 * 1024,
        NanoCpus: 1e9,
        PidsLimit: 256,
        CapDrop: ['ALL'],
        SecurityOpt: ['no-new-privileges:true'],
      },
    });
    await c.start();
    return c;
  });
  const [, tExec] = await timed(async () => {
    const exec = await container.exec({ Cmd: ['echo', 'hello'], AttachStdout: true, AttachStderr: true, WorkingDir: '/workspace' });
    const stream = (await exec.start({ hijack: true, stdin: false })) as NodeJS.ReadableStream;
    for await (const _c of demuxDockerStream(stream as AsyncIterable<Buffer>)) {
      // drain
    }
    let info = await exec.inspect();
    while (info.Running || info.ExitCode === null) info = await exec.inspect();
    if (info.ExitCode !== 0) throw new Error(`raw exec exit ${info.ExitCode}`);
  });
  const [, tDestroy] = await timed(() => container.remove({ force: true, v: true }));
  if (record) {
    samples.raw.spawn.push(tSpawn);
    samples.raw.exec.push(tExec);
    samples.raw.destroy.push(tDestroy);
  }
}

function quantile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[idx] ?? Number.NaN;
}

const round2 = (n: number): number => Math.round(n * 100) / 100;

function summary(values: number[]): { p50: number; p99: number; mean: number; n: number } {
  return {
    p50: round2(quantile(values, 0.5)),
    p99: round2(quantile(values, 0.99)),
    mean: round2(values.reduce((a, b) => a + b, 0) / values.length),
    n: values.length,
  };
}

async function main(): Promise<void> {
  await docker.ping();
  await ensureTestImage(docker);
  for (let i = 0; i < warmup; i++) {
    await rawRound(false);
    await providerRound(false);
  }
  for (let i = 0; i < iterations; i++) {
    // Alternate which side goes first so daemon warm-up and drift hit both equally.
    if (i % 2 === 0) {
      await rawRound(true);
      await providerRound(true);
    } else {
      await providerRound(true);
      await rawRound(true);
    }
  }
  const phases: Phase[] = ['spawn', 'exec', 'destroy'];
  const totals = (side: 'provider' | 'raw'): number[] =>
    samples[side].spawn.map((s, i) => s + (samples[side].exec[i] ?? 0) + (samples[side].destroy[i] ?? 0));
  const result: Record<string, unknown> = {
    benchmark: 'docker provider vs raw dockerode',
    socket,
    image: TEST_IMAGE,
    iterations,
    daemon: (await docker.version()).Version,
  };
  for (const phase of [...phases, 'total'] as const) {
    const p = phase === 'total' ? totals('provider') : samples.provider[phase];
    const r = phase === 'total' ? totals('raw') : samples.raw[phase];
    const ps = summary(p);
    const rs = summary(r);
    result[phase] = { provider: ps, raw: rs, ratio: { p50: round2(ps.p50 / rs.p50), p99: round2(ps.p99 / rs.p99) } };
  }
  console.log(JSON.stringify(result, null, 2));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
