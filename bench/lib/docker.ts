/**
 * The docker side of the benchmarks (bench/docker.ts, bench/compare.ts): one round is spawn →
 * exec `echo hello` → destroy, through DockerProvider or through the same Engine API calls made
 * directly with dockerode, on the busybox test image.
 */
import Docker from 'dockerode';
import { newSandboxId } from '../../src/core/ids.js';
import { defaultConfig } from '../../src/config/load.js';
import { DockerProvider } from '../../src/providers/docker/provider.js';
import { demuxDockerStream } from '../../src/providers/docker/demux.js';
import { TEST_IMAGE, ensureTestImage } from '../../test/fixtures/docker-image.js';
import { now } from './stats.js';

/** Phase durations of one round, plus ms from its start to the first stdout byte and to its end. */
export interface DockerRoundTimes {
  spawn: number;
  exec: number;
  destroy: number;
  firstOutput: number;
  total: number;
}

export interface DockerBench {
  docker: Docker;
  socket: string;
  image: string;
  providerRound(): Promise<DockerRoundTimes>;
  rawRound(): Promise<DockerRoundTimes>;
}

/** The socket from STACYVM_TEST_DOCKER_SOCKET, DOCKER_SOCKET, or the system default. */
export function benchDockerSocket(): string {
  return process.env.STACYVM_TEST_DOCKER_SOCKET ?? process.env.DOCKER_SOCKET ?? '/var/run/docker.sock';
}

/** Connects, checks the daemon and builds the test image when missing. */
export async function setupDockerBench(socket = benchDockerSocket()): Promise<DockerBench> {
  const docker = new Docker({ socketPath: socket });
  await docker.ping();
  await ensureTestImage(docker);
  const provider = new DockerProvider({ config: { ...defaultConfig().providers.docker, enabled: true, socket }, docker });

  const providerRound = async (): Promise<DockerRoundTimes> => {
    const t0 = now();
    const spawned = await provider.spawn({
      sandboxId: newSandboxId(),
      image: TEST_IMAGE,
      memoryMb: 256,
      vcpus: 1,
      ownerId: null,
      workerId: 'bench',
      env: {},
      labels: {},
    });
    const t1 = now();
    let exit = -1;
    let first = -1;
    for await (const e of provider.execStream(spawned.runtimeId, { command: 'echo', args: ['hello'], mode: 'argv', env: {}, timeoutMs: 30_000 })) {
      if (e.type === 'stdout' && first < 0) first = now() - t0;
      if (e.type === 'exit') exit = e.exitCode;
    }
    if (exit !== 0 || first < 0) throw new Error(`provider exec exit ${exit}`);
    const t2 = now();
    await provider.destroy(spawned.runtimeId);
    const t3 = now();
    return { spawn: t1 - t0, exec: t2 - t1, destroy: t3 - t2, firstOutput: first, total: t3 - t0 };
  };

  /** The same container settings the provider uses, so only the provider's own work differs. */
  const rawRound = async (): Promise<DockerRoundTimes> => {
    const sandboxId = newSandboxId();
    const t0 = now();
    const container = await docker.createContainer({
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
    await container.start();
    const t1 = now();
    const exec = await container.exec({ Cmd: ['echo', 'hello'], AttachStdout: true, AttachStderr: true, WorkingDir: '/workspace' });
    const stream = (await exec.start({ hijack: true, stdin: false })) as NodeJS.ReadableStream;
    let first = -1;
    for await (const chunk of demuxDockerStream(stream as AsyncIterable<Buffer>)) {
      if (chunk.stream === 'stdout' && first < 0) first = now() - t0;
    }
    let info = await exec.inspect();
    while (info.Running || info.ExitCode === null) info = await exec.inspect();
    if (info.ExitCode !== 0 || first < 0) throw new Error(`raw exec exit ${info.ExitCode}`);
    const t2 = now();
    await container.remove({ force: true, v: true });
    const t3 = now();
    return { spawn: t1 - t0, exec: t2 - t1, destroy: t3 - t2, firstOutput: first, total: t3 - t0 };
  };

  return { docker, socket, image: TEST_IMAGE, providerRound, rawRound };
}
