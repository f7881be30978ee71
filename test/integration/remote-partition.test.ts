/**
 * A network partition between a real control plane (`stacyvm serve`) and a real worker daemon
 * (`stacyvm worker`, mock provider) running in its own network namespace, joined by a veth pair
 * that the test cuts (every packet silently dropped, both ways) and heals.
 *
 * While cut: calls in flight and new calls get 503 `remote_worker_rpc_unavailable` within a few
 * seconds rather than waiting out their reply bounds; a spawn leaves nothing behind and, once the
 * worker is stale, is placed elsewhere or refused; the worker's sandboxes turn `unhealthy`; a
 * destroy settles without reaching the runtime; and the worker's leases lapse. After healing:
 * the worker heartbeats again, its surviving sandboxes run and work, the destroyed one's
 * runtime is removed, each live sandbox has one owner and one lease holder, and an operation
 * under a lease lost during the partition is refused by the worker (409 `lease_conflict`).
 *
 * The control plane listens on the root end of the veth, so the test process (root namespace)
 * reaches it over the loopback path during the cut; only control plane <-> worker traffic
 * crosses the link.
 */
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toIso } from '../../src/core/clock.js';
import { RemoteWorkerClient } from '../../src/worker/rpc-client.js';
import type { WireLease } from '../../src/workerproto/index.js';
import { canCreateNetns, createNetnsLink, type NetnsLink } from '../fixtures/netns.js';
import { hasBinary, hostSupports, isRoot } from '../host.js';
import { WORKER_TOKEN, startRemoteCluster, type RemoteCluster } from './remote-harness.js';
import { CLI, call, type JsonResponse } from './server-process.js';

const built = () => (existsSync(CLI) ? null : `${CLI} is not built (npm run build)`);

interface Sandbox {
  id: string;
  state: string;
  worker_id?: string;
}

const WORKER = 'pw1';
const STALE_AFTER_MS = 3_000;
const LEASE_TTL = '3s';
/**
 * Upper bound for a call made while the link is cut. What it waits for: the worker's last
 * heartbeat to age past STALE_AFTER_MS, the next background pass (500 ms) and, at worst, that
 * pass finishing an inventory call to the worker that the cut stalls (bounded at 5 s). Without
 * the cut-off at staleness the calls below would wait out their reply bounds (file read 60 s,
 * exec its timeout + 30 s, spawn 5 min, a stream 30 s of silence); the slack is for a loaded
 * machine.
 */
const CUT_CALL_BOUND_MS = 25_000;

/** Polls `check` every 200 ms until it returns true; fails after `ms`. */
async function until(what: string, check: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The call's response and how long it took. */
async function timed(p: Promise<JsonResponse>): Promise<JsonResponse & { ms: number }> {
  const t0 = Date.now();
  const res = await p;
  return { ...res, ms: Date.now() - t0 };
}

const supported = hostSupports('network partition', built, isRoot, hasBinary('ip'), hasBinary('nft'), canCreateNetns);

describe.skipIf(!supported)('a control plane partitioned from its worker', { timeout: 180_000 }, () => {
  let link: NetnsLink | undefined;
  let cluster: RemoteCluster | undefined;
  let worker: RemoteWorkerClient | undefined;

  beforeAll(async () => {
    link = await createNetnsLink();
    cluster = await startRemoteCluster({
      serverEnv: {
        STACYVM_SERVER_HOST: link.hostAddr,
        // The local worker takes one sandbox, so the rest are placed on the partitioned one.
        STACYVM_WORKER_MAX_SANDBOXES: '1',
        STACYVM_RECONCILE_REAP_INTERVAL: '500ms',
        STACYVM_WORKERS_STALE_AFTER: `${STALE_AFTER_MS}ms`,
        STACYVM_WORKER_LEASE_TTL: LEASE_TTL,
      },
    });
    const w = await cluster.startWorker(WORKER, { wrap: link.exec, listen: `${link.nsAddr}:0` });
    // The test's own channel to the worker, standing in for a caller (say a second control
    // plane) that holds a lease and is partitioned with it.
    worker = new RemoteWorkerClient({ workerId: WORKER, url: w.rpcUrl, credential: { kind: 'token', token: WORKER_TOKEN }, requestTimeoutMs: 10_000 });
  });

  afterAll(async () => {
    await link?.heal().catch(() => undefined);
    await worker?.close().catch(() => undefined);
    try {
      await cluster?.stop();
    } finally {
      await link?.destroy();
    }
  });

  it('gives clear errors while cut, settles what it must without the worker, and comes back with one owner per sandbox', async () => {
    if (cluster === undefined || link === undefined || worker === undefined) throw new Error('set-up failed');
    const api = cluster.server.api;
    const rpc = worker;
    const get = async (id: string) => (await call('GET', `${api}/sandboxes/${id}`)).body as Sandbox;
    const list = async () => (await call('GET', `${api}/sandboxes`)).body as Sandbox[];
    const inventory = async () => new Set((await rpc.call('worker.inventory', { provider: 'mock' })).runtimes.map((r) => r.sandbox_id));
    const spawn = async () => {
      const res = await call('POST', `${api}/sandboxes`, { provider: 'mock', ttl: '10m' });
      expect(res.status, res.text).toBe(201);
      return res.body as Sandbox;
    };

    // ---- before: three sandboxes on the worker, one on the control plane's local worker
    const filler = await spawn();
    expect(filler.worker_id).toBe('local');
    const [a, b, d] = [await spawn(), await spawn(), await spawn()] as [Sandbox, Sandbox, Sandbox];
    for (const s of [a, b, d]) expect(s).toMatchObject({ worker_id: WORKER, state: 'running' });
    expect((await call('POST', `${api}/sandboxes/${a.id}/files`, { path: '/kept.txt', content: 'before the cut' })).status).toBe(200);
    expect((await call('POST', `${api}/sandboxes/${b.id}/exec`, { command: 'echo ok' })).body).toMatchObject({ exit_code: 0, stdout: 'ok\n' });
    expect(await inventory()).toEqual(new Set([a.id, b.id, d.id]));

    // A lease on A and one on D, renewed through the worker lease API and presented to the
    // worker, which accepts them: what a caller holds just before it is partitioned.
    const held = new Map<string, WireLease>();
    for (const s of [a, d]) {
      const renewed = await call('POST', `${api}/worker/${WORKER}/leases/${s.id}/renew`, { ttl: LEASE_TTL }, { 'x-worker-id': WORKER, 'x-worker-token': WORKER_TOKEN });
      expect(renewed.status, renewed.text).toBe(200);
      const l = (renewed.body as { lease: WireLease & Record<string, unknown> }).lease;
      const lease: WireLease = { resource_id: l.resource_id, holder_id: l.holder_id, generation: l.generation, expires_at: l.expires_at };
      expect(lease.holder_id).toBe(WORKER);
      expect(await rpc.renewLease(lease)).toMatchObject({ resource_id: s.id, generation: lease.generation });
      held.set(s.id, lease);
    }

    // A streamed command running when the link is cut: its output has started to arrive.
    const streamRes = await fetch(`${api}/sandboxes/${b.id}/exec`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ command: 'echo started; sleep 60', stream: true }),
      signal: AbortSignal.timeout(120_000),
    });
    expect(streamRes.status).toBe(200);
    const reader = (streamRes.body as ReadableStream<Uint8Array>).getReader();
    let streamed = '';
    while (!streamed.includes('started')) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`stream ended before its first output: ${streamed}`);
      streamed += Buffer.from(value).toString();
    }
    const streamEnd = (async () => {
      const t0 = Date.now();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return { text: streamed, ms: Date.now() - t0 };
        streamed += Buffer.from(value).toString();
      }
    })();

    // ---- cut: calls made right after the cut, while the worker still looks fresh
    await link.cut();
    const [execA, readB, spawnCut] = await Promise.all([
      timed(call('POST', `${api}/sandboxes/${a.id}/exec`, { command: 'echo unreachable' }, {})),
      timed(call('GET', `${api}/sandboxes/${b.id}/files?path=/etc/hostname`)),
      timed(call('POST', `${api}/sandboxes`, { provider: 'mock', ttl: '10m' })),
    ]);
    for (const res of [execA, readB]) {
      expect(res.status, res.text).toBe(503);
      expect(res.body).toMatchObject({ code: 'remote_worker_rpc_unavailable' });
      expect(res.ms).toBeLessThan(CUT_CALL_BOUND_MS);
    }
    // The stream in flight ends with an error line naming the cause, not after its 30 s idle bound.
    const ended = await streamEnd;
    expect(ended.ms).toBeLessThan(CUT_CALL_BOUND_MS);
    const last = JSON.parse(ended.text.trim().split('\n').at(-1) as string) as { stream: string; code?: string };
    expect(last).toMatchObject({ stream: 'error', code: 'remote_worker_rpc_unavailable' });
    // Placement still chose the worker (fresh a moment ago); the spawn failed the same way, or
    // (if the worker was already stale when it was placed) found nobody with room.
    expect(spawnCut.ms).toBeLessThan(CUT_CALL_BOUND_MS);
    expect([503, 429], spawnCut.text).toContain(spawnCut.status);
    expect(['remote_worker_rpc_unavailable', 'no_eligible_worker']).toContain((spawnCut.body as { code: string }).code);
    // Nothing was left behind by it: the same four sandboxes, no record in `creating` or `error`.
    expect(new Set((await list()).map((s) => s.id))).toEqual(new Set([filler.id, a.id, b.id, d.id]));
    console.info(
      `[partition] after the cut: exec 503 in ${execA.ms} ms, file read 503 in ${readB.ms} ms, spawn ${spawnCut.status} in ${spawnCut.ms} ms, ` +
        `stream error in ${ended.ms} ms (${(execA.body as { message: string }).message})`,
    );

    // ---- the worker is stale: its sandboxes are unhealthy, calls are refused at once
    await until('the worker to be stale and its sandboxes unhealthy', async () => {
      const states = await Promise.all([a, b, d].map(async (s) => (await get(s.id)).state));
      return states.every((s) => s === 'unhealthy');
    });
    expect((await call('GET', `${api}/workers/${WORKER}`)).body).toMatchObject({ stale: true });
    const execStale = await timed(call('POST', `${api}/sandboxes/${a.id}/exec`, { command: 'echo x' }));
    expect(execStale.status).toBe(503);
    expect(execStale.body).toMatchObject({ code: 'remote_worker_rpc_unavailable' });
    expect(execStale.ms).toBeLessThan(10_000);

    // A spawn finds nobody with room (the local worker is full, this one is stale)...
    const refused = await call('POST', `${api}/sandboxes`, { provider: 'mock' });
    expect(refused.status, refused.text).toBe(429);
    expect(refused.body).toMatchObject({ code: 'no_eligible_worker' });
    expect(refused.headers.get('retry-after')).not.toBeNull();
    // ...and once there is room elsewhere it goes there, never to the stale worker.
    expect((await call('DELETE', `${api}/sandboxes/${filler.id}`)).body).toEqual({ status: 'destroyed' });
    const elsewhere = await spawn();
    expect(elsewhere.worker_id).toBe('local');

    // A destroy during the cut settles in the store without reaching the runtime.
    const destroyD = await timed(call('DELETE', `${api}/sandboxes/${d.id}`));
    expect(destroyD.body).toEqual({ status: 'destroyed' });
    expect(destroyD.ms).toBeLessThan(10_000);
    expect(await get(d.id)).toMatchObject({ state: 'destroyed' });

    // The worker's leases lapse: the control plane does not renew the leases of a stale worker.
    const lapse = Math.max(...[...held.values()].map((l) => Date.parse(l.expires_at))) - Date.now();
    if (lapse > 0) await new Promise((r) => setTimeout(r, lapse + 200));
    await until('the worker to hold no live lease', async () => {
      const diag = (await call('GET', `${api}/admin/diagnostics`)).body as { leases: { by_holder: Record<string, number> } };
      return diag.leases.by_holder[WORKER] === undefined;
    });

    // ---- heal
    await link.heal();
    await until('the worker to heartbeat again', async () => ((await call('GET', `${api}/workers/${WORKER}`)).body as { stale: boolean }).stale === false);
    await until('the surviving sandboxes to run again', async () => (await get(a.id)).state === 'running' && (await get(b.id)).state === 'running');
    const back = await call('POST', `${api}/sandboxes/${a.id}/exec`, { command: 'echo back' });
    expect(back.body).toMatchObject({ exit_code: 0, stdout: 'back\n' });
    expect((await call('GET', `${api}/sandboxes/${a.id}/files?path=/kept.txt`)).text).toBe('before the cut');
    expect((await call('POST', `${api}/sandboxes/${b.id}/exec`, { command: 'echo back' })).body).toMatchObject({ exit_code: 0, stdout: 'back\n' });

    // No orphan: D's runtime is removed now that the worker is reachable, nothing else appears.
    await until("D's runtime to be removed from the worker", async () => !(await inventory()).has(d.id));
    expect(await inventory()).toEqual(new Set([a.id, b.id]));

    // ---- fencing: the leases held before the cut were lost during it
    const leaseA = held.get(a.id) as WireLease;
    const leaseD = held.get(d.id) as WireLease;
    const runtimeA = (await rpc.call('worker.inventory', { provider: 'mock' })).runtimes.find((r) => r.sandbox_id === a.id)?.runtime_id;
    expect(runtimeA).toBeDefined();
    const refusal = (p: Promise<unknown>) =>
      p.then(
        () => undefined,
        (e: unknown) => e as Error & { code?: string },
      );
    // As the caller holds it (expired during the cut): refused.
    const destroyA = { sandbox_id: a.id, provider: 'mock', runtime_id: runtimeA as string };
    const expired = await refusal(rpc.destroy(destroyA, leaseA));
    expect(expired).toMatchObject({ code: 'lease_conflict' });
    // Even if the caller's clock says the lease is still live: the worker has since been shown
    // a newer generation for A, so the old one is refused by generation alone.
    const ahead = toIso(Date.now() + 60_000);
    const stale = await refusal(rpc.destroy(destroyA, { ...leaseA, expires_at: ahead }));
    expect(stale).toMatchObject({ code: 'lease_conflict' });
    expect(stale?.message).toContain('older than generation');
    // A late spawn re-creating destroyed D under its old lease: the control plane removed D's
    // runtime under a newer generation, so this is refused and no runtime comes back.
    const respawn = await refusal(
      rpc.spawn({ sandbox_id: d.id, provider: 'mock', image: 'host', memory_mb: 64, vcpus: 1, owner_id: null, env: {}, labels: {} }, { ...leaseD, expires_at: ahead }),
    );
    expect(respawn).toMatchObject({ code: 'lease_conflict' });
    expect(respawn?.message).toContain('older than generation');
    // Nothing was torn down or created by the refused calls.
    expect(await inventory()).toEqual(new Set([a.id, b.id]));
    expect((await call('POST', `${api}/sandboxes/${a.id}/exec`, { command: 'echo still' })).body).toMatchObject({ exit_code: 0, stdout: 'still\n' });

    // ---- one owner per sandbox: each live sandbox is on exactly one worker, that worker runs
    // exactly its sandboxes, and the live leases are held by the owners, one per sandbox.
    const live = await list();
    expect(new Set(live.map((s) => s.id))).toEqual(new Set([a.id, b.id, elsewhere.id]));
    const byWorker = new Map<string, string[]>();
    for (const s of live) byWorker.set(s.worker_id as string, [...(byWorker.get(s.worker_id as string) ?? []), s.id]);
    expect(new Set(byWorker.get(WORKER))).toEqual(await inventory());
    expect(byWorker.get('local')).toEqual([elsewhere.id]);
    await until('each live sandbox to have one lease, held by its worker', async () => {
      const diag = (await call('GET', `${api}/admin/diagnostics`)).body as { leases: { by_holder: Record<string, number> } };
      const holders = diag.leases.by_holder;
      return Object.keys(holders).length === 2 && holders.local === 1 && holders[WORKER] === 2;
    });

    for (const s of live) expect((await call('DELETE', `${api}/sandboxes/${s.id}`)).body).toEqual({ status: 'destroyed' });
    expect(await inventory()).toEqual(new Set());
  });
});
