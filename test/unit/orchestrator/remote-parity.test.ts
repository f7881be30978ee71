/**
 * Remote exec must keep the same events, exec log (the audit trail of commands), metrics and
 * timeouts as local exec. One orchestrator places one sandbox on its own mock provider and one on
 * an in-process remote worker (WorkerRpcServer on loopback, mock provider), runs the same
 * commands on both, and compares what each left behind.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOrchestrator, type Orchestrator } from '../../../src/orchestrator/index.js';
import type { StacyEvent } from '../../../src/orchestrator/service.js';
import { MockProvider } from '../../../src/providers/mock/mock-provider.js';
import type { Store } from '../../../src/store/store.js';
import { RemoteWorkerPool } from '../../../src/worker/remote-pool.js';
import { SIGNING_KEY, startTestWorker, type TestWorker } from '../../integration/worker-harness.js';
import { anon, rejection, sqliteMemory, testConfig } from './harness.js';

/** What one run of the scenario leaves behind, with the worker id taken out. */
interface Trace {
  results: unknown[];
  events: string[];
  execLog: Array<{ command: string; outcome: string; exitCode: number | null }>;
  operations: Record<string, number>;
}

/** `stacyvm_operations_total` by `op/outcome`, from the Prometheus text. */
async function operationCounts(orch: Orchestrator): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const line of (await orch.prometheus()).body.split('\n')) {
    const m = /^stacyvm_operations_total\{op="([^"]+)",outcome="([^"]+)"\} (\d+)$/.exec(line);
    if (m !== null) counts[`${m[1]}/${m[2]}`] = Number(m[3]);
  }
  return counts;
}

describe('remote exec parity with local exec', () => {
  const config = testConfig();
  let root: string;
  let store: Store;
  let worker: TestWorker;
  let pool: RemoteWorkerPool;
  let local: MockProvider;
  let orch: Orchestrator;
  const events: StacyEvent[] = [];

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'stacyvm-remote-parity-'));
    store = await sqliteMemory();
    worker = await startTestWorker({ workerId: 'w1' });
    pool = new RemoteWorkerPool({ store, leaseTtlMs: config.worker.leaseTtlMs, credentialFor: () => ({ kind: 'signing_key', keys: [SIGNING_KEY] }) });
    local = new MockProvider({ root: join(root, 'mock') });
    orch = createOrchestrator({ config, store, providers: [local], version: 'test', remoteWorkers: pool });
    await orch.start();
    // The local worker takes one sandbox, so the second is placed on w1.
    await orch.heartbeat(config.worker.id, { hostname: 'local', status: 'online', providers: ['mock'], capabilities: [], capacity: { maxSandboxes: 1 } });
    await orch.heartbeat('w1', { hostname: 'w1', status: 'online', providers: ['mock'], capabilities: ['isolation:mock:none'], capacity: { rpcUrl: worker.url } });
    orch.subscribe((e) => events.push(e));
  });
  afterAll(async () => {
    await orch?.stop();
    await pool?.close();
    await worker?.stop();
    await local?.close();
    await store?.close();
    rmSync(root, { recursive: true, force: true });
  });

  /** Runs the same commands on sandbox `id` and returns what they left behind. */
  async function scenario(id: string, workerId: string): Promise<Trace> {
    const before = await operationCounts(orch);
    const firstEvent = events.length;
    const results: unknown[] = [];

    const done = await orch.exec(id, { command: 'echo out; echo err >&2; exit 3', args: [], mode: 'shell', env: { A: '1' } }, anon);
    results.push({ exitCode: done.exitCode, stdout: done.stdout, stderr: done.stderr });

    const started = Date.now();
    const timedOut = await rejection(orch.exec(id, { command: 'sleep 30', args: [], mode: 'shell', env: {}, timeoutMs: 500 }, anon));
    results.push({ code: timedOut.code });
    // The deadline holds remotely as locally: well before the command would have ended.
    expect(Date.now() - started).toBeLessThan(10_000);

    const streamed: string[] = [];
    for await (const ev of orch.execStream(id, { command: 'echo a; echo b >&2', args: [], mode: 'shell', env: {} }, anon)) {
      streamed.push(ev.type === 'exit' ? `exit:${ev.exitCode}` : `${ev.type}:${ev.data.toString().trim()}`);
    }
    results.push(streamed.sort());

    // A client that goes away mid-stream: the command is stopped and the exec recorded as failed.
    for await (const ev of orch.execStream(id, { command: 'echo first; sleep 30', args: [], mode: 'shell', env: {} }, anon)) {
      results.push(ev.type);
      break;
    }

    results.push({ missingCommand: (await orch.exec(id, { command: 'definitely-not-a-command-xyz', args: [], mode: 'argv', env: {} }, anon).catch((e: { code: string }) => ({ exitCode: e.code }))).exitCode });

    const after = await operationCounts(orch);
    const operations: Record<string, number> = {};
    for (const [k, v] of Object.entries(after)) if (v !== (before[k] ?? 0)) operations[k] = v - (before[k] ?? 0);

    const mine = events.slice(firstEvent).filter((e) => e.sandboxId === id);
    for (const e of mine) expect(e.workerId).toBe(workerId);
    const execLog = (await store.listExecLogs(id, 100))
      .map((r) => ({ command: r.command, outcome: r.outcome, exitCode: r.exitCode }))
      .sort((a, b) => a.command.localeCompare(b.command));
    return { results, events: mine.map((e) => e.type), execLog, operations };
  }

  it('leaves the same results, events, exec log and metrics for a local and a remote sandbox', { timeout: 60_000 }, async () => {
    const onLocal = await orch.spawn({ provider: 'mock', image: 'host' }, anon);
    const onRemote = await orch.spawn({ provider: 'mock', image: 'host' }, anon);
    expect(onLocal.workerId).toBe(config.worker.id);
    expect(onRemote.workerId).toBe('w1');

    const localTrace = await scenario(onLocal.id, config.worker.id);
    const remoteTrace = await scenario(onRemote.id, 'w1');

    expect(localTrace.results).toEqual([
      { exitCode: 3, stdout: 'out\n', stderr: 'err\n' },
      { code: 'timeout' },
      ['exit:0', 'stderr:b', 'stdout:a'],
      'stdout',
      { missingCommand: 127 },
    ]);
    expect(remoteTrace).toEqual(localTrace);
    expect(localTrace.events).toEqual(['exec.completed', 'exec.timeout', 'exec.completed', 'exec.failed', 'exec.completed']);
    expect(localTrace.execLog.map((r) => r.outcome).sort()).toEqual(['error', 'ok', 'ok', 'ok', 'timeout']);
    expect(localTrace.operations).toMatchObject({ 'exec/ok': 2, 'exec/timeout': 1, 'exec_stream/ok': 1, 'exec_stream/cancelled': 1 });
  });
});
