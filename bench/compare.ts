/**
 * oci and docker side by side (`npm run bench:compare`, needs root + runc + busybox-static and a
 * dockerd: `eval "$(scripts/test-services.sh docker)"`).
 *
 * In one run, interleaved, spawn → first output of `echo` → destroy along four paths on
 * equivalent images (a rootfs of the host's static busybox; the oci image through ImageStore,
 * the docker one imported as stacyvm-test/busybox):
 *  - docker:     the DockerProvider;
 *  - raw-docker: the same Engine API calls through dockerode;
 *  - oci:        the OciProvider;
 *  - raw-runc:   `runc run --detach` → `runc exec` → `runc delete -f` on a prepared bundle.
 * The round order rotates every iteration so warm-up and drift on a shared host hit every path
 * alike. Progress goes to stderr and one JSON line to stdout: p50/p99 of time to first output
 * and of the whole round per path, and the ratios docker/raw-docker, oci/raw-runc, docker/oci.
 *
 * Env: BENCH_ITERATIONS (30).
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setupDockerBench } from './lib/docker.js';
import { setupOciBench } from './lib/oci.js';
import { pct, round, summary } from './lib/stats.js';

const ITER = Math.max(1, Number(process.env.BENCH_ITERATIONS ?? 30));
const WARMUP = 2;

type PathName = 'docker' | 'raw-docker' | 'oci' | 'raw-runc';
interface Times {
  firstOutput: number;
  total: number;
}

const log = (msg: string): void => void process.stderr.write(`[bench] ${msg}\n`);

async function main(): Promise<void> {
  const docker = await setupDockerBench();
  const root = mkdtempSync(join(tmpdir(), 'stacyvm-bench-compare-'));
  const oci = await setupOciBench(root);
  let rawSeq = 0;
  const rounds: Record<PathName, () => Promise<Times>> = {
    docker: docker.providerRound,
    'raw-docker': docker.rawRound,
    oci: oci.providerRound,
    'raw-runc': () => oci.rawRound(`raw-${process.pid}-${rawSeq++}`),
  };
  const names = Object.keys(rounds) as PathName[];
  const samples = Object.fromEntries(names.map((n) => [n, [] as Times[]])) as Record<PathName, Times[]>;
  try {
    log(`spawn→first output→destroy, ${ITER} iterations × ${names.length} paths (rotating order)`);
    for (let i = 0; i < ITER + WARMUP; i++) {
      for (let k = 0; k < names.length; k++) {
        const name = names[(i + k) % names.length]!;
        const t = await rounds[name]();
        if (i >= WARMUP) samples[name].push(t);
      }
    }
    const first = (n: PathName): number[] => samples[n].map((t) => t.firstOutput);
    const total = (n: PathName): number[] => samples[n].map((t) => t.total);
    const ratio = (a: PathName, b: PathName): Record<string, number> => ({
      firstOutputP50: round(pct(first(a), 50) / pct(first(b), 50)),
      firstOutputP99: round(pct(first(a), 99) / pct(first(b), 99)),
      totalP50: round(pct(total(a), 50) / pct(total(b), 50)),
      totalP99: round(pct(total(a), 99) / pct(total(b), 99)),
    });
    const result = {
      bench: 'compare',
      iterations: ITER,
      images: { oci: 'bench-busybox (ImageStore, host static busybox)', docker: docker.image },
      daemon: (await docker.docker.version()).Version,
      paths: Object.fromEntries(names.map((n) => [n, { firstOutputMs: summary(first(n)), totalMs: summary(total(n)) }])),
      ratios: {
        'docker/raw-docker': ratio('docker', 'raw-docker'),
        'oci/raw-runc': ratio('oci', 'raw-runc'),
        'docker/oci': ratio('docker', 'oci'),
      },
    };
    process.stdout.write(JSON.stringify(result) + '\n');
  } finally {
    // Only the round that failed can have left a raw container behind.
    await oci.cleanup([`raw-${process.pid}-${rawSeq - 1}`]);
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
