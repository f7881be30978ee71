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
import { type DockerRoundTimes, setupDockerBench } from './lib/docker.js';
import { round } from './lib/stats.js';

const iterations = Math.max(1, Number(process.argv[2] ?? 30));
const warmup = 3;

type Phase = 'spawn' | 'exec' | 'destroy' | 'total';
const phases: Phase[] = ['spawn', 'exec', 'destroy', 'total'];
const samples: Record<'provider' | 'raw', DockerRoundTimes[]> = { provider: [], raw: [] };

function quantile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[idx] ?? Number.NaN;
}

function summary(values: number[]): { p50: number; p99: number; mean: number; n: number } {
  return {
    p50: round(quantile(values, 0.5)),
    p99: round(quantile(values, 0.99)),
    mean: round(values.reduce((a, b) => a + b, 0) / values.length),
    n: values.length,
  };
}

async function main(): Promise<void> {
  const bench = await setupDockerBench();
  for (let i = 0; i < warmup; i++) {
    await bench.rawRound();
    await bench.providerRound();
  }
  for (let i = 0; i < iterations; i++) {
    // Alternate which side goes first so daemon warm-up and drift hit both equally.
    if (i % 2 === 0) {
      samples.raw.push(await bench.rawRound());
      samples.provider.push(await bench.providerRound());
    } else {
      samples.provider.push(await bench.providerRound());
      samples.raw.push(await bench.rawRound());
    }
  }
  const result: Record<string, unknown> = {
    benchmark: 'docker provider vs raw dockerode',
    socket: bench.socket,
    image: bench.image,
    iterations,
    daemon: (await bench.docker.version()).Version,
  };
  for (const phase of phases) {
    const ps = summary(samples.provider.map((s) => s[phase]));
    const rs = summary(samples.raw.map((s) => s[phase]));
    result[phase] = { provider: ps, raw: rs, ratio: { p50: round(ps.p50 / rs.p50), p99: round(ps.p99 / rs.p99) } };
  }
  console.log(JSON.stringify(result, null, 2));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
