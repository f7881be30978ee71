/**
 * Keeping the store and the providers in agreement: start-up reconciliation (settle records,
 * adopt or remove unknown runtimes) and the background pass (reap expired sandboxes, forget old
 * records and leases, notice dead runtimes, keep leases, note stale workers, recover sandboxes
 * whose provider came back).
 */
import { formatDuration } from '../core/duration.js';
import { isStacyError, StacyError } from '../core/errors.js';
import { newSandboxId, SANDBOX_ID_PATTERN } from '../core/ids.js';
import { type LeaseRecord, type SandboxRecord, type SandboxState, type WorkerRecord, ACTIVE_SANDBOX_STATES, TERMINAL_SANDBOX_STATES } from '../core/types.js';
import type { Provider } from '../providers/provider.js';
import { isStale } from './scheduler.js';
import { bounded, HEALTH_TIMEOUT_MS, OPERABLE_STATES, type OrchestratorContext } from './context.js';
import type { SandboxLifecycle } from './lifecycle.js';

/** Runtime status probes per background pass: a fleet of any size costs a bounded amount per pass. */
const RUNTIME_CHECKS_PER_PASS = 32;

/** The state reason of a sandbox whose runtime the background pass found stopped. */
const RUNTIME_STOPPED = 'runtime stopped';
/** Fresh remote workers' inventories are swept for orphan runtimes every this many passes. */
const SWEEP_EVERY_PASSES = 6;
/** stateReason of sandboxes made unhealthy because their worker stopped heartbeating. */
const WORKER_STALE = 'worker heartbeat stale';

/** Start-up reconciliation and the periodic background pass. */
export class Maintenance {
  private reapTimer: NodeJS.Timeout | undefined;
  private tickRunning: Promise<void> | undefined;
  /** The last sandbox id the runtime check probed; the next pass continues after it. */
  private runtimeCursor = '';
  /** Sandboxes put in `error` because their provider was down at start-up; retried by the background pass. */
  private readonly awaitingProvider = new Set<string>();
  /** Remote workers whose sandboxes were made unhealthy; reconciled once they heartbeat again. */
  private readonly awayWorkers = new Set<string>();
  /** Per remote worker, sandboxes whose renewed lease the worker has not been told about yet. */
  private readonly unpushed = new Map<string, Set<string>>();
  /** Background passes since the last inventory sweep of fresh remote workers. */
  private passesSinceSweep = 0;
  private stopped = false;

  constructor(private readonly ctx: OrchestratorContext, private readonly lifecycle: SandboxLifecycle) {}

  // ---------------------------------------------------------------- background pass

  async start(): Promise<void> {
    if (this.reapTimer !== undefined) return;
    this.stopped = false;
    await this.ctx.op('reconcile', () => this.reconcile());
    const interval = this.ctx.config.reconcile.reapIntervalMs;
    if (interval > 0) {
      this.reapTimer = setInterval(() => {
        void this.tick();
      }, interval);
      this.reapTimer.unref();
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.reapTimer !== undefined) clearInterval(this.reapTimer);
    this.reapTimer = undefined;
    await this.tickRunning;
  }

  /**
   * One background pass: reap expired sandboxes, forget old records and their leases, notice
   * runtimes that died, keep leases, note stale workers.
   */
  tick(): Promise<void> {
    if (this.tickRunning !== undefined) return this.tickRunning;
    const run = (async () => {
      for (const [name, step] of [
        ['reap', () => this.prune()],
        ['forget', () => this.forgetOld()],
        ['prune_leases', () => this.pruneLeases()],
        ['check_runtimes', () => this.checkRuntimes()],
        ['keep_leases', () => this.keepLeases()],
        ['watch_workers', () => this.watchWorkers()],
        ['recover', () => this.recoverProviderErrors()],
      ] as const) {
        if (this.stopped) return;
        try {
          await step();
        } catch (err) {
          this.ctx.log.warn({ err, step: name }, 'background pass step failed');
        }
      }
    })();
    this.tickRunning = run.finally(() => {
      this.tickRunning = undefined;
    });
    return this.tickRunning;
  }

  prune(): Promise<number> {
    return this.ctx.op('prune', async () => {
      const now = this.ctx.clock.now();
      const expired = await this.ctx.store.listSandboxes({ states: ACTIVE_SANDBOX_STATES, expiresBefore: now });
      let n = 0;
      for (const record of expired) {
        if (!(await this.reapableHere(record, now))) continue;
        try {
          if ((await this.lifecycle.teardown(record, 'expired', 'ttl expired')).state === 'expired') n += 1;
        } catch (err) {
          this.ctx.log.warn({ err, sandboxId: record.id }, 'could not expire sandbox');
        }
      }
      return n;
    });
  }

  /**
   * Local sandboxes, and those of remote workers this server drives (an rpc_url) or whose worker
   * went stale. Another server's own sandboxes (a shared store) are left to that server.
   */
  private async reapableHere(record: SandboxRecord, now: number): Promise<boolean> {
    if (!this.ctx.isRemote(record)) return true;
    const worker = await this.ctx.store.getWorker(record.workerId as string);
    if (worker === undefined) return false;
    return (worker.capacity.rpcUrl !== undefined && worker.capacity.rpcUrl !== '') || isStale(worker, now, this.ctx.config.workers.staleAfterMs);
  }

  /** Forgets terminal records older than the retention window. */
  private async forgetOld(): Promise<number> {
    const cutoff = this.ctx.clock.now() - this.ctx.config.server.recordRetentionMs;
    const old = await this.ctx.store.listSandboxes({ states: TERMINAL_SANDBOX_STATES });
    const ids = old.filter((r) => r.updatedAt <= cutoff).map((r) => r.id);
    return ids.length === 0 ? 0 : this.ctx.store.deleteSandboxes(ids);
  }

  /**
   * Deletes leases that expired longer than the record retention ago and whose sandbox record
   * is forgotten; otherwise every released lease would stay as an expired row forever.
   */
  private async pruneLeases(): Promise<number> {
    const cutoff = (await this.ctx.store.now()) - this.ctx.config.server.recordRetentionMs;
    return this.ctx.store.pruneLeases(cutoff);
  }

  /**
   * Asks the provider about the runtimes of this worker's live sandboxes, at most
   * RUNTIME_CHECKS_PER_PASS per pass, continuing round-robin from where the last pass stopped.
   * A runtime that stopped makes its sandbox `unhealthy`; one that is gone makes it `destroyed`
   * and releases its lease. A provider that is itself unhealthy is not asked: its answers would
   * say nothing about the runtimes.
   */
  private async checkRuntimes(): Promise<void> {
    const mine = (await this.ctx.store.listSandboxes({ states: OPERABLE_STATES, workerId: this.ctx.workerId }))
      .filter((r) => r.runtimeId !== null)
      .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    if (mine.length === 0) return;
    const start = mine.findIndex((r) => r.id > this.runtimeCursor);
    const ordered = start <= 0 ? mine : [...mine.slice(start), ...mine.slice(0, start)];
    const batch = ordered.slice(0, RUNTIME_CHECKS_PER_PASS);
    this.runtimeCursor = batch[batch.length - 1]?.id ?? '';
    const usable = new Map<string, boolean>();
    for (const record of batch) {
      if (this.stopped) return;
      const provider = this.ctx.providers.get(record.provider);
      if (provider === undefined) continue;
      if (!usable.has(provider.name)) usable.set(provider.name, (await this.ctx.healthOf(provider)).health.healthy);
      if (usable.get(provider.name) !== true) continue;
      try {
        await this.ctx.sandboxLock.run(record.id, () => this.checkRuntime(record.id, provider));
      } catch (err) {
        this.ctx.log.warn({ err, sandboxId: record.id }, 'runtime check failed');
      }
    }
  }

  private async checkRuntime(id: string, provider: Provider): Promise<void> {
    // Re-read under the lock: a destroy or extend may have finished meanwhile.
    const record = await this.ctx.store.getSandbox(id);
    if (record === undefined || !OPERABLE_STATES.includes(record.state) || record.runtimeId === null || record.workerId !== this.ctx.workerId) return;
    const runtimeId = record.runtimeId;
    const status = await withTimeout(provider.status(runtimeId), HEALTH_TIMEOUT_MS, `status of runtime ${runtimeId}`);
    const recovered = status === 'running' && record.state === 'unhealthy' && record.stateReason === RUNTIME_STOPPED;
    if (status === 'running' && !recovered) return;
    if (status === 'stopped' && record.state === 'unhealthy') return;
    // Every change to the record happens under its lease; another holder's sandbox is left alone.
    try {
      await this.ctx.acquireLease(id);
    } catch (err) {
      if (isStacyError(err, 'lease_conflict')) return;
      throw err;
    }
    const now = this.ctx.clock.now();
    if (status === 'missing') {
      const reason = `runtime ${runtimeId} is missing`;
      await this.ctx.store.updateSandbox(id, { state: 'destroyed', stateReason: reason, updatedAt: now });
      await this.ctx.releaseLease(id);
      this.ctx.log.warn({ sandboxId: id, runtimeId }, 'runtime disappeared; sandbox marked destroyed');
      this.ctx.emit('sandbox.destroyed', { sandboxId: id, workerId: this.ctx.workerId, data: { provider: record.provider, ownerId: record.ownerId, reason } });
    } else if (status === 'stopped') {
      await this.ctx.store.updateSandbox(id, { state: 'unhealthy', stateReason: RUNTIME_STOPPED, updatedAt: now });
      this.ctx.log.warn({ sandboxId: id, runtimeId }, 'runtime stopped; sandbox marked unhealthy');
      this.ctx.emit('sandbox.error', { sandboxId: id, workerId: this.ctx.workerId, data: { phase: 'health', reason: RUNTIME_STOPPED, runtimeId } });
    } else {
      await this.ctx.store.updateSandbox(id, { state: 'running', stateReason: null, updatedAt: now });
      this.ctx.log.info({ sandboxId: id, runtimeId }, 'runtime running again; sandbox marked running');
    }
  }

  /** Renews this worker's leases on its live sandboxes before they lapse. */
  private async keepLeases(): Promise<void> {
    const mine = await this.ctx.store.listSandboxes({ states: ACTIVE_SANDBOX_STATES, workerId: this.ctx.workerId });
    if (mine.length === 0) return;
    const leases = new Map((await this.ctx.store.listLeases({ holderId: this.ctx.workerId })).map((l) => [l.resourceId, l]));
    const now = await this.ctx.store.now();
    for (const record of mine) {
      const lease = leases.get(record.id);
      if (lease !== undefined && lease.expiresAt - now > this.ctx.leaseTtl() / 2) continue;
      try {
        await this.ctx.acquireLease(record.id);
      } catch (err) {
        this.ctx.log.warn({ err, sandboxId: record.id }, 'could not keep the sandbox lease');
      }
    }
  }

  /**
   * Emits worker.stale once per worker when its heartbeat falls out of the freshness window.
   * A stale remote worker's live, unexpired sandboxes become `unhealthy`; once it heartbeats
   * again it is reconciled (see recoverWorker). Fresh remote workers' leases are kept.
   */
  private async watchWorkers(): Promise<void> {
    const now = this.ctx.clock.now();
    this.passesSinceSweep += 1;
    const sweep = this.passesSinceSweep >= SWEEP_EVERY_PASSES;
    if (sweep) this.passesSinceSweep = 0;
    const seen = new Set<string>();
    for (const w of await this.ctx.store.listWorkers()) {
      seen.add(w.id);
      const stale = isStale(w, now, this.ctx.config.workers.staleAfterMs);
      if (stale && !this.ctx.staleWorkers.has(w.id)) {
        this.ctx.staleWorkers.add(w.id);
        this.ctx.emit('worker.stale', { workerId: w.id, data: { lastHeartbeat: w.lastHeartbeat, status: w.status } });
      } else if (!stale) {
        this.ctx.staleWorkers.delete(w.id);
      }
      if (w.id === this.ctx.workerId) continue;
      try {
        if (stale) await this.markAway(w.id, now);
        else {
          await this.recoverWorker(w, sweep);
          await this.keepRemoteLeases(w);
        }
      } catch (err) {
        this.ctx.log.warn({ err, workerId: w.id }, 'could not settle the sandboxes of a remote worker');
      }
    }
    for (const id of this.ctx.staleWorkers) if (!seen.has(id)) this.ctx.staleWorkers.delete(id);
  }

  private async markAway(workerId: string, now: number): Promise<void> {
    // New calls to a stale worker are refused (providerFor); calls already on the wire would
    // otherwise wait out their reply bound (a minute or more) on a link that may drop every
    // packet. Every pass, so a call that slipped past the refusal is cut on the next one.
    this.ctx.remote?.abandon(workerId, 'its heartbeat is stale');
    const running = await this.ctx.store.listSandboxes({ states: ['running'], workerId });
    this.awayWorkers.add(workerId);
    for (const record of running) {
      if (record.expiresAt <= now) continue; // the reaper expires it
      await this.ctx.store.updateSandbox(record.id, { state: 'unhealthy', stateReason: WORKER_STALE, updatedAt: now });
      this.ctx.log.warn({ sandboxId: record.id, workerId }, 'worker stale; sandbox marked unhealthy');
      this.ctx.emit('sandbox.error', { sandboxId: record.id, workerId, data: { phase: 'health', reason: WORKER_STALE } });
    }
  }

  /**
   * A worker that heartbeats again after going stale: sandboxes it still runs return to
   * `running`, ones whose runtime it no longer has are `destroyed`, and runtimes of sandboxes
   * that finished (or were never recorded) while it was away are removed from it.
   */
  private async recoverWorker(worker: WorkerRecord, sweep: boolean): Promise<void> {
    const remote = this.ctx.remote;
    if (remote === undefined) return;
    const waiting = new Map(
      (await this.ctx.store.listSandboxes({ states: ['unhealthy'], workerId: worker.id })).filter((r) => r.stateReason === WORKER_STALE).map((r) => [r.id, r]),
    );
    // Also after a restart of this server, which forgets which workers were away.
    // A periodic sweep also catches runtimes left by a spawn whose reply was lost (the record
    // was removed, the worker made the runtime anyway).
    if (waiting.size === 0 && !this.awayWorkers.has(worker.id) && !sweep) return;
    for (const name of worker.providers) {
      const provider = await bounded(remote.provider(worker, name), `connect to worker ${worker.id}`);
      for (const info of (await bounded(provider.inventory?.() ?? Promise.resolve([]), `inventory of worker ${worker.id}`))) {
        if (info.sandboxId === undefined) continue;
        const record = await this.ctx.store.getSandbox(info.sandboxId);
        if (record === undefined || TERMINAL_SANDBOX_STATES.includes(record.state) || record.workerId !== worker.id) {
          await bounded(provider.destroy(info.runtimeId), `destroy on worker ${worker.id}`);
          // The destroy acquired a lease for the worker; nothing owns this sandbox any more.
          await this.ctx.releaseLease(info.sandboxId, worker.id);
          this.ctx.log.info({ workerId: worker.id, runtimeId: info.runtimeId }, 'removed a worker runtime whose sandbox is finished or unknown');
          continue;
        }
        if (waiting.has(record.id) && info.status === 'running') {
          // The lease lapsed while the worker was away, and whoever held it then may still
          // present it. Showing the worker a newer generation first makes it refuse that
          // holder's late destroy or spawn by generation, whatever that holder's clock says.
          waiting.delete(record.id);
          try {
            const lease = await this.ctx.acquireLease(record.id, worker.id);
            await bounded(remote.pushLease(worker, lease), `lease renewal on worker ${worker.id}`);
          } catch (err) {
            if (!isStacyError(err, 'lease_conflict')) throw err;
            // Another holder has the lease: reviving the sandbox here is not this server's call.
            this.ctx.log.warn({ sandboxId: record.id, workerId: worker.id }, 'worker back, but the sandbox is leased by another holder; left unhealthy');
            continue;
          }
          await this.ctx.store.updateSandbox(record.id, { state: 'running', stateReason: null, updatedAt: this.ctx.clock.now() });
          this.ctx.log.info({ sandboxId: record.id, workerId: worker.id }, 'worker back; sandbox running again');
        }
      }
    }
    for (const record of waiting.values()) {
      if (!worker.providers.includes(record.provider)) continue;
      await this.finishRemote(record, 'runtime gone when its worker returned');
    }
    this.awayWorkers.delete(worker.id);
  }

  /**
   * Renews the leases a fresh remote worker holds on its live sandboxes before they lapse, and
   * presents each renewed lease to the worker (`worker.renew_lease`) so its fence refuses the
   * older generations from then on. A worker that cannot be told is told on a later pass (with
   * the lease then in force); neither failure stops the pass.
   */
  private async keepRemoteLeases(worker: WorkerRecord): Promise<void> {
    const records = await this.ctx.store.listSandboxes({ states: OPERABLE_STATES, workerId: worker.id });
    const live = new Set(records.map((r) => r.id));
    const owed = this.unpushed.get(worker.id);
    if (owed !== undefined) for (const id of owed) if (!live.has(id)) owed.delete(id);
    if (records.length === 0) return;
    const leases = new Map((await this.ctx.store.listLeases({ holderId: worker.id })).map((l) => [l.resourceId, l]));
    const now = await this.ctx.store.now();
    // After one failed push the worker is not called again this pass: a hung worker would make
    // every push wait out its bound.
    let reachable = true;
    for (const record of records) {
      if (this.stopped) return;
      let lease = leases.get(record.id);
      const fresh = lease !== undefined && lease.expiresAt - now > this.ctx.leaseTtl() / 2;
      if (fresh && owed?.has(record.id) !== true) continue;
      try {
        if (!fresh) lease = await this.ctx.acquireLease(record.id, worker.id);
      } catch (err) {
        this.ctx.log.warn({ err, sandboxId: record.id, workerId: worker.id }, 'could not keep the lease of a remote sandbox');
        continue;
      }
      if (reachable) reachable = await this.pushLease(worker, lease as LeaseRecord);
      else this.owe(worker.id, record.id);
    }
  }

  private owe(workerId: string, sandboxId: string): void {
    let owed = this.unpushed.get(workerId);
    if (owed === undefined) this.unpushed.set(workerId, (owed = new Set()));
    owed.add(sandboxId);
  }

  /**
   * Tells the worker about a renewed lease; a failure is remembered so the next pass tries
   * again. Returns false when the worker could not be reached.
   */
  private async pushLease(worker: WorkerRecord, lease: LeaseRecord): Promise<boolean> {
    const remote = this.ctx.remote;
    if (remote === undefined) return false;
    const owed = this.unpushed.get(worker.id);
    try {
      await bounded(remote.pushLease(worker, lease), `renew_lease on worker ${worker.id}`);
      owed?.delete(lease.resourceId);
      return true;
    } catch (err) {
      if (isStacyError(err, 'lease_conflict')) {
        // The worker already accepted a newer generation (a spawn, destroy or its own renewal).
        owed?.delete(lease.resourceId);
        this.ctx.log.debug({ sandboxId: lease.resourceId, workerId: worker.id, generation: lease.generation }, 'worker already fences a newer lease generation');
        return true;
      }
      this.owe(worker.id, lease.resourceId);
      this.ctx.log.warn({ err, sandboxId: lease.resourceId, workerId: worker.id }, 'could not tell the worker about its renewed lease; retrying on the next pass');
      return false;
    }
  }

  /** Re-settles sandboxes whose provider was unavailable at start-up once it answers again. */
  private async recoverProviderErrors(): Promise<void> {
    for (const id of [...this.awaitingProvider]) {
      const record = await this.ctx.store.getSandbox(id);
      if (record === undefined || record.state !== 'error' || (record.workerId !== null && record.workerId !== this.ctx.workerId)) {
        this.awaitingProvider.delete(id);
        continue;
      }
      const provider = this.ctx.providers.get(record.provider);
      if (provider === undefined || !(await this.ctx.healthOf(provider)).health.healthy) continue;
      this.awaitingProvider.delete(id);
      await this.reconcileRecord(record, new Map([[record.provider, true]]));
    }
  }

  // ---------------------------------------------------------------- reconciliation

  /**
   * Brings the store and the providers back into agreement after a restart or crash. Only
   * records owned by this worker (or by nobody) are touched.
   */
  private async reconcile(): Promise<void> {
    const all = await this.ctx.store.listSandboxes();
    const mine = all.filter((r) => r.workerId === null || r.workerId === this.ctx.workerId);
    const reachable = new Map<string, boolean>();
    for (const [name, provider] of this.ctx.providers) reachable.set(name, (await this.ctx.checkHealth(provider)).health.healthy);

    for (const record of mine) {
      if (TERMINAL_SANDBOX_STATES.includes(record.state)) continue;
      try {
        await this.reconcileRecord(record, reachable);
      } catch (err) {
        this.ctx.log.warn({ err, sandboxId: record.id }, 'reconcile: could not settle sandbox');
      }
    }
    await this.settleInterruptedRemoteSpawns(all);
    await this.reconcileInventory(all, reachable);
  }

  /**
   * Remote spawns this control plane was waiting on when it stopped (records still `creating` on
   * a worker it drives). The caller never got them, so, as with local ones, they are finished
   * rather than guessed at. The worker may have made the runtime anyway (its reply was lost):
   * the worker is put on the away list, so the next background pass reads its inventory and
   * removes every runtime whose sandbox is finished.
   */
  private async settleInterruptedRemoteSpawns(records: SandboxRecord[]): Promise<void> {
    const now = this.ctx.clock.now();
    for (const record of records) {
      if (record.state !== 'creating' || !this.ctx.isRemote(record) || !(await this.reapableHere(record, now))) continue;
      try {
        await this.finishRemote(record, 'interrupted while creating (control plane restarted)');
        this.awayWorkers.add(record.workerId as string);
      } catch (err) {
        this.ctx.log.warn({ err, sandboxId: record.id }, 'reconcile: could not settle an interrupted remote spawn');
      }
    }
  }

  /** Marks a remote worker's sandbox destroyed without reaching its runtime, and releases the worker's lease. */
  private async finishRemote(record: SandboxRecord, reason: string): Promise<void> {
    const workerId = record.workerId as string;
    await this.ctx.store.updateSandbox(record.id, { state: 'destroyed', stateReason: reason, updatedAt: this.ctx.clock.now() });
    await this.ctx.releaseLease(record.id, workerId);
    this.ctx.log.info({ sandboxId: record.id, workerId, reason }, 'remote sandbox marked destroyed');
    this.ctx.emit('sandbox.destroyed', { sandboxId: record.id, workerId, data: { provider: record.provider, ownerId: record.ownerId, reason } });
  }

  private async reconcileRecord(record: SandboxRecord, reachable: Map<string, boolean>): Promise<void> {
    // Reconcile changes a record only under its lease, like every other mutation.
    try {
      await this.ctx.acquireLease(record.id);
    } catch (err) {
      if (isStacyError(err, 'lease_conflict')) {
        this.ctx.log.warn({ sandboxId: record.id }, 'reconcile: sandbox leased by another worker; left alone');
        return;
      }
      throw err;
    }
    const provider = this.ctx.providers.get(record.provider);
    if (provider === undefined || reachable.get(record.provider) !== true) {
      const why = provider === undefined ? `provider ${record.provider} is not configured` : `provider ${record.provider} is unavailable`;
      if (provider !== undefined) this.awaitingProvider.add(record.id);
      if (record.state !== 'error' || record.stateReason !== why) {
        await this.ctx.store.updateSandbox(record.id, { state: 'error', stateReason: why, updatedAt: this.ctx.clock.now() });
        this.ctx.log.warn({ sandboxId: record.id, reason: why }, 'reconcile: sandbox marked error');
        this.ctx.emit('sandbox.error', { sandboxId: record.id, workerId: this.ctx.workerId, data: { phase: 'reconcile', reason: why } });
      }
      return;
    }
    if (record.state === 'creating') {
      // A crash mid-spawn: the caller never got this sandbox, so finish it off rather than guess.
      if (record.runtimeId !== null) await provider.destroy(record.runtimeId);
      await this.finish(record, 'interrupted while creating (server restarted)');
      return;
    }
    const status = record.runtimeId === null ? 'missing' : await provider.status(record.runtimeId);
    if (status === 'missing') {
      await this.finish(record, 'runtime missing at start-up');
      return;
    }
    // The runtime is alive: this worker now holds its lease and owns the record.
    const state: SandboxState = status === 'stopped' ? 'stopped' : record.state === 'error' || record.state === 'stopped' ? 'running' : record.state;
    if (state !== record.state || record.workerId === null) {
      await this.ctx.store.updateSandbox(record.id, {
        state,
        workerId: this.ctx.workerId,
        stateReason: state === 'stopped' ? 'runtime found stopped at start-up' : null,
        updatedAt: this.ctx.clock.now(),
      });
    }
  }

  /** Marks a record destroyed and releases its lease. */
  private async finish(record: SandboxRecord, reason: string): Promise<void> {
    await this.ctx.store.updateSandbox(record.id, { state: 'destroyed', stateReason: reason, updatedAt: this.ctx.clock.now() });
    await this.ctx.releaseLease(record.id);
    this.ctx.log.info({ sandboxId: record.id, reason }, 'reconcile: sandbox marked destroyed');
    this.ctx.emit('sandbox.destroyed', { sandboxId: record.id, workerId: this.ctx.workerId, data: { reason } });
  }

  private async reconcileInventory(records: SandboxRecord[], reachable: Map<string, boolean>): Promise<void> {
    for (const [name, provider] of this.ctx.providers) {
      if (provider.inventory === undefined || reachable.get(name) !== true) continue;
      let runtimes;
      try {
        runtimes = await provider.inventory();
      } catch (err) {
        this.ctx.log.warn({ err, provider: name }, 'reconcile: inventory failed');
        continue;
      }
      // Re-read so records settled above (e.g. creating → destroyed) are seen as they are now.
      const current = await this.ctx.store.listSandboxes({ provider: name });
      const byRuntime = new Map(current.filter((r) => r.runtimeId !== null).map((r) => [r.runtimeId as string, r]));
      const byId = new Map(records.map((r) => [r.id, r]));
      for (const r of current) byId.set(r.id, r);
      for (const info of runtimes) {
        if (info.workerId !== undefined && info.workerId !== this.ctx.workerId) continue;
        const known = byRuntime.get(info.runtimeId) ?? (info.sandboxId !== undefined ? byId.get(info.sandboxId) : undefined);
        try {
          if (known !== undefined) {
            const live = ACTIVE_SANDBOX_STATES.includes(known.state) && known.runtimeId === info.runtimeId;
            if (!live && (known.workerId === null || known.workerId === this.ctx.workerId)) {
              // The record says this runtime should not exist (destroyed, or a crash before the
              // runtime id was recorded): remove the runtime.
              await provider.destroy(info.runtimeId);
              this.ctx.log.info({ provider: name, runtimeId: info.runtimeId, sandboxId: known.id }, 'reconcile: removed runtime of a finished sandbox');
            }
            continue;
          }
          if (this.ctx.config.reconcile.unknownRuntimes === 'adopt') await this.adopt(provider, info);
          else {
            await provider.destroy(info.runtimeId);
            this.ctx.log.info({ provider: name, runtimeId: info.runtimeId }, 'reconcile: destroyed unknown runtime');
          }
        } catch (err) {
          this.ctx.log.warn({ err, provider: name, runtimeId: info.runtimeId }, 'reconcile: could not settle runtime');
        }
      }
    }
  }

  /** Adopts a runtime the store does not know: lease first, then a record stamped with this worker. */
  private async adopt(provider: Provider, info: { runtimeId: string; status: string; sandboxId?: string; ownerId?: string; createdAt?: number }): Promise<void> {
    let id = info.sandboxId !== undefined && SANDBOX_ID_PATTERN.test(info.sandboxId) ? info.sandboxId : newSandboxId();
    while ((await this.ctx.store.getSandbox(id)) !== undefined) id = newSandboxId();
    await this.ctx.acquireLease(id);
    const now = this.ctx.clock.now();
    const d = this.ctx.config.defaults;
    const record: SandboxRecord = {
      id,
      state: info.status === 'stopped' ? 'stopped' : 'running',
      provider: provider.name,
      // The runtime's labels carry no image or size: say so rather than invent them.
      image: 'unknown',
      memoryMb: d.memoryMb,
      vcpus: d.vcpus,
      ownerId: info.ownerId !== undefined && info.ownerId.length > 0 ? info.ownerId : null,
      workerId: this.ctx.workerId,
      runtimeId: info.runtimeId,
      template: null,
      metadata: { adopted: 'true' },
      createdAt: info.createdAt ?? now,
      updatedAt: now,
      // Adopted sandboxes get a fresh default TTL so forgotten ones are still reaped.
      expiresAt: now + d.ttlMs,
      stateReason: 'adopted at start-up',
    };
    try {
      await this.ctx.store.createSandbox(record);
    } catch (err) {
      await this.ctx.releaseLease(id);
      throw err;
    }
    this.ctx.log.info({ sandboxId: id, runtimeId: info.runtimeId, provider: provider.name }, 'reconcile: adopted unknown runtime');
    this.ctx.emit('sandbox.adopted', { sandboxId: id, workerId: this.ctx.workerId, data: { provider: provider.name, runtimeId: info.runtimeId } });
  }
}


/** Rejects when `promise` has not settled within `ms`. */
async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new StacyError('timeout', `${what} did not answer within ${formatDuration(ms)}`)), ms);
        timer.unref();
      }),
    ]);
  } finally {
    if (timer !== undefined) clearTimeout(timer);
  }
}