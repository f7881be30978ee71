/**
 * Spawn benchmark for the oci provider (`npm run bench:spawn`, needs root + runc + busybox-static).
 *
 * In one run, on the same busybox image:
 *  - provider: spawn → first output of `echo hi` → destroy, through the Provider API;
 *  - raw:      `runc run --detach` → `runc exec echo hi` → `runc delete -f` on a prepared bundle;
 *  - api:      the same through the HTTP API when STACYVM_BENCH_API_URL is set (a running server
 *              using the oci provider; STACYVM_BENCH_API_KEY for auth);
 *  - exec latency on a running sandbox (provider vs raw runc exec);
 *  - memory per idle sandbox on the host and 200 concurrent sandboxes alive.
 * Prints progress to stderr and one JSON line to stdout.
 *
 * Memory: MemAvailable drop and kernel (Slab+KernelStack+PageTables) growth per idle sandbox,
 * next to the sandbox's own cgroup usage (its workload: PID 1 shell + sleep). The host numbers are
 * noisy on a shared machine; hostProcessesPerSandbox shows there is no per-sandbox host daemon
 * (2 = the sandbox's own init shell and its sleep).
 *
 * Env: BENCH_ITERATIONS (50), BENCH_CONCURRENT (200), BENCH_IDLE (50), BENCH_IMAGE_ROOT.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { echoRequest as echo, firstOutput, setupOciBench } from './lib/oci.js';
import { now, pct, round, summary } from './lib/stats.js';

const ITER = Number(process.env.BENCH_ITERATIONS ?? 50);
const CONCURRENT = Number(process.env.BENCH_CONCURRENT ?? 200);
const IDLE = Number(process.env.BENCH_IDLE ?? 50);
const API_URL = process.env.STACYVM_BENCH_API_URL ?? '';
const API_KEY = process.env.STACYVM_BENCH_API_KEY ?? '';

const log = (msg: string): void => void process.stderr.write(`[bench] ${msg}\n`);

function meminfo(): { available: number; kernel: number } {
  const text = readFileSync('/proc/meminfo', 'utf8');
  const kib = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? 0);
  return { available: kib('MemAvailable'), kernel: kib('Slab') + kib('KernelStack') + kib('PageTables') };
}

function hostProcessCount(): number {
  return Number(spawnSync('sh', ['-c', 'ls /proc | grep -c "^[0-9]"']).stdout.toString().trim());
}

async function pool<T>(items: T[], width: number, fn: (t: T) => Promise<void>): Promise<void> {
  let i = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (i < items.length) await fn(items[i++]!);
    }),
  );
}

async function main(): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), 'stacyvm-bench-'));
  const oci = await setupOciBench(root, process.env.BENCH_IMAGE_ROOT);
  const { provider, spec, rawState, rawRun, rawDelete, imageBuildMs } = oci;
  const rawExecId = `raw-${process.pid}-exec`;

  try {
    const raw = { spawnToFirstOutput: [] as number[], total: [] as number[] };
    const prov = { spawnToFirstOutput: [] as number[], total: [] as number[] };
    const api = { spawnToFirstOutput: [] as number[], total: [] as number[] };
    log(`spawn→first output→destroy, ${ITER} iterations each (interleaved)`);
    for (let i = 0; i < ITER + 2; i++) {
      const warm = i < 2;
      const r = await oci.rawRound(`raw-${process.pid}-${i}`);
      const p = await oci.providerRound();
      if (!warm) {
        raw.spawnToFirstOutput.push(r.firstOutput);
        raw.total.push(r.total);
        prov.spawnToFirstOutput.push(p.firstOutput);
        prov.total.push(p.total);
      }
      // HTTP API (when a server is running)
      if (API_URL) {
        const headers: Record<string, string> = { 'content-type': 'application/json' };
        if (API_KEY) headers['x-api-key'] = API_KEY;
        const t0 = now();
        const created = (await (await fetch(`${API_URL}/api/v1/sandboxes`, { method: 'POST', headers, body: JSON.stringify({ image: 'bench-busybox', provider: 'oci' }) })).json()) as { id: string };
        const res = await fetch(`${API_URL}/api/v1/sandboxes/${created.id}/exec`, { method: 'POST', headers, body: JSON.stringify({ command: 'echo', args: ['hi'], mode: 'argv' }) });
        await res.json();
        const aFirst = now() - t0;
        await fetch(`${API_URL}/api/v1/sandboxes/${created.id}`, { method: 'DELETE', headers });
        if (!warm) {
          api.spawnToFirstOutput.push(aFirst);
          api.total.push(now() - t0);
        }
      }
    }

    log('exec latency on a running sandbox');
    const rawExec: number[] = [];
    const provExec: number[] = [];
    rawRun(rawExecId);
    const { runtimeId: execRt } = await provider.spawn(spec());
    for (let i = 0; i < ITER + 2; i++) {
      let t0 = now();
      await firstOutput('runc', ['--root', rawState, 'exec', rawExecId, 'echo', 'hi'], t0);
      if (i >= 2) rawExec.push(now() - t0);
      t0 = now();
      for await (const ev of provider.execStream(execRt, echo)) void ev;
      if (i >= 2) provExec.push(now() - t0);
    }
    rawDelete(rawExecId);
    await provider.destroy(execRt);

    log(`memory per idle sandbox (${IDLE} sandboxes)`);
    await new Promise((r) => setTimeout(r, 500));
    const memBefore = meminfo();
    const idleIds: string[] = [];
    for (let i = 0; i < IDLE; i++) idleIds.push((await provider.spawn(spec())).runtimeId);
    await new Promise((r) => setTimeout(r, 1000));
    const memAfter = meminfo();
    let cgroupBytes = 0;
    for (const id of idleIds) {
      try {
        cgroupBytes += Number(readFileSync(`/sys/fs/cgroup/memory/stacyvm/${id}/memory.usage_in_bytes`, 'utf8'));
      } catch {
        // cgroup v2 hosts: memory.current
        cgroupBytes += Number(readFileSync(`/sys/fs/cgroup/stacyvm/${id}/memory.current`, 'utf8'));
      }
    }
    for (const id of idleIds) await provider.destroy(id);
    const hostKiBPerSandbox = round((memBefore.available - memAfter.available) / IDLE);
    const kernelKiBPerSandbox = round((memAfter.kernel - memBefore.kernel) / IDLE);
    const cgroupKiBPerSandbox = round(cgroupBytes / 1024 / IDLE);

    log(`${CONCURRENT} concurrent sandboxes`);
    const many: string[] = [];
    const procsBefore = hostProcessCount();
    let t0 = now();
    await pool(
      Array.from({ length: CONCURRENT }, (_, i) => i),
      4,
      async () => void many.push((await provider.spawn(spec())).runtimeId),
    );
    const spawnAllMs = round(now() - t0);
    let alive = 0;
    t0 = now();
    await pool(many, 4, async (id) => {
      let out = '';
      for await (const ev of provider.execStream(id, echo)) if (ev.type === 'stdout') out += ev.data.toString();
      if (out === 'hi\n') alive++;
    });
    const execAllMs = round(now() - t0);
    const hostProcessesPerSandbox = round((hostProcessCount() - procsBefore) / CONCURRENT);
    t0 = now();
    await pool(many, 4, (id) => provider.destroy(id));
    const destroyAllMs = round(now() - t0);

    const result = {
      bench: 'spawn',
      provider: 'oci',
      iterations: ITER,
      image: 'busybox (static, host)',
      imageBuildMs,
      raw: { spawnToFirstOutputMs: summary(raw.spawnToFirstOutput), totalMs: summary(raw.total), execMs: summary(rawExec) },
      provider_api: {
        spawnToFirstOutputMs: summary(prov.spawnToFirstOutput),
        totalMs: summary(prov.total),
        execMs: summary(provExec),
      },
      http_api: API_URL ? { spawnToFirstOutputMs: summary(api.spawnToFirstOutput), totalMs: summary(api.total) } : null,
      ratios: {
        spawnToFirstOutputP50: round(pct(prov.spawnToFirstOutput, 50) / pct(raw.spawnToFirstOutput, 50)),
        execP50: round(pct(provExec, 50) / pct(rawExec, 50)),
        httpSpawnToFirstOutputP50: API_URL ? round(pct(api.spawnToFirstOutput, 50) / pct(raw.spawnToFirstOutput, 50)) : null,
      },
      idleMemory: { sandboxes: IDLE, hostKiBPerSandbox, cgroupKiBPerSandbox, kernelKiBPerSandbox },
      concurrent: { sandboxes: CONCURRENT, alive, spawnAllMs, execAllMs, destroyAllMs, hostProcessesPerSandbox },
    };
    process.stdout.write(JSON.stringify(result) + '\n');
  } finally {
    await oci.cleanup([rawExecId]);
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
