/**
 * Sandbox lifecycle: admission (limits, quotas, placement), spawn, read, destroy and extend.
 * Every mutation of a record happens under its lease and, within this process, under the
 * sandbox lock.
 */
import { badRequest, conflict, isStacyError, notFound, resourceLimit, StacyError, unavailable } from '../core/errors.js';
import { newSandboxId } from '../core/ids.js';
import {
  type QuotaRecord,
  type SandboxRecord,
  type TemplateRecord,
  ACTIVE_SANDBOX_STATES,
  type WorkerRecord,
  TERMINAL_SANDBOX_STATES,
} from '../core/types.js';
import type { Provider } from '../providers/provider.js';
import { isStale, place, type Placement } from './scheduler.js';
import type { AdmissionReport, Caller, SpawnRequest } from './service.js';
import { type ResolvedSpawn, isPooled, maxTtlFor, resolveOwner, resolveSpawn } from './validate.js';
import { bounded, type OrchestratorContext } from './context.js';
import { Mutex } from './locks.js';

/** Hands a spawn a ready warm sandbox of the same shape, if there is one. */
export interface PoolClaimer {
  /** Whether a spawn of this spec may be served from the pool at all (cheap, no I/O). */
  wants(spec: ResolvedSpawn): boolean;
  /** The claimed record (owner, TTL and metadata set from `spec`), or undefined when none is ready. */
  claim(spec: ResolvedSpawn): Promise<SandboxRecord | undefined>;
}

/** Creates, reads and tears down sandboxes. */
export class SandboxLifecycle {
  private readonly admissionLock = new Mutex();
  private pool: PoolClaimer | undefined;

  constructor(private readonly ctx: OrchestratorContext) {}

  // ---------------------------------------------------------------- admission & placement

  private async ownerQuota(ownerId: string | null): Promise<QuotaRecord | undefined> {
    return ownerId === null ? undefined : this.ctx.store.getQuota(ownerId);
  }

  private async placement(provider: string, ownerId: string | null): Promise<Placement> {
    // One grouped query: listing every active sandbox made placement cost grow with the fleet.
    const loads = await this.ctx.store.listWorkerLoads(ACTIVE_SANDBOX_STATES, ownerId);
    const result = place({
      localWorkerId: this.ctx.workerId,
      workers: loads.map((l) => l.worker),
      activeByWorker: new Map(loads.map((l) => [l.worker.id, l.active])),
      ...(ownerId !== null ? { ownerActiveByWorker: new Map(loads.map((l) => [l.worker.id, l.ownerActive])) } : {}),
      provider,
      now: this.ctx.clock.now(),
      staleAfterMs: this.ctx.config.workers.staleAfterMs,
    });
    this.ctx.lastScheduler = result.status;
    return result;
  }

  /**
   * How many active sandboxes one owner may have: the configured per-owner limit (0 = no limit)
   * lowered by the owner's quota (null = no limit; 0 = none at all). Infinity when unlimited.
   */
  private ownerLimit(quota: QuotaRecord | undefined): number {
    const configured = this.ctx.config.defaults.maxSandboxesPerOwner;
    return Math.min(configured > 0 ? configured : Infinity, quota?.maxSandboxes ?? Infinity);
  }

  /**
   * Limits that apply to one spawn, evaluated against the store. Throws resource_limit.
   * A claim of a warm sandbox adds no runtime, so it skips the server-wide count (`newRuntime` false).
   */
  private async checkLimits(spec: ResolvedSpawn, quota: QuotaRecord | undefined, newRuntime = true): Promise<void> {
    const d = this.ctx.config.defaults;
    // Retry-After: the soonest a slot can free up on its own is the next reaper pass.
    const retryAfter = Math.max(1, Math.ceil(this.ctx.config.reconcile.reapIntervalMs / 1000));
    const active = newRuntime ? await this.ctx.store.countSandboxes({ states: ACTIVE_SANDBOX_STATES }) : 0;
    if (newRuntime && d.maxSandboxes > 0 && active >= d.maxSandboxes) {
      throw resourceLimit(`server limit reached: ${active} of ${d.maxSandboxes} sandboxes active`, retryAfter);
    }
    if (spec.ownerId === null) return;
    const maxOwner = this.ownerLimit(quota);
    const ownerRows = await this.ctx.store.listSandboxes({ states: ACTIVE_SANDBOX_STATES, ownerId: spec.ownerId });
    const owner = ownerRows.length;
    if (owner >= maxOwner) {
      throw resourceLimit(`owner ${spec.ownerId} limit reached: ${owner} of ${maxOwner} sandboxes active`, retryAfter);
    }
    if (quota?.maxMemoryMb !== null && quota?.maxMemoryMb !== undefined) {
      const used = ownerRows.reduce((s, r) => s + r.memoryMb, 0);
      if (used + spec.memoryMb > quota.maxMemoryMb) {
        throw resourceLimit(`owner ${spec.ownerId} memory quota: ${used} MB in use + ${spec.memoryMb} MB requested exceeds ${quota.maxMemoryMb} MB`, retryAfter);
      }
    }
    if (quota?.maxVcpus !== null && quota?.maxVcpus !== undefined) {
      const used = ownerRows.reduce((s, r) => s + r.vcpus, 0);
      if (used + spec.vcpus > quota.maxVcpus) {
        throw resourceLimit(`owner ${spec.ownerId} vCPU quota: ${used} in use + ${spec.vcpus} requested exceeds ${quota.maxVcpus}`, retryAfter);
      }
    }
  }

  private async resolve(request: SpawnRequest, caller: Caller): Promise<{ spec: ResolvedSpawn; quota: QuotaRecord | undefined }> {
    let template: TemplateRecord | undefined;
    if (request.template !== undefined) {
      template = await this.ctx.store.getTemplate(request.template);
      if (template === undefined) throw badRequest(`template: ${JSON.stringify(request.template)} does not exist`);
    }
    const ownerId = resolveOwner(request.ownerId, caller);
    const quota = await this.ownerQuota(ownerId);
    const spec = resolveSpawn({
      request,
      template,
      config: this.ctx.config,
      defaultProvider: this.ctx.defaultProviderName,
      providerNames: await this.ctx.providerNamesFor(request.provider ?? template?.provider),
      ownerId,
      quota,
    });
    return { spec, quota };
  }

  admission(request: SpawnRequest, caller: Caller): Promise<AdmissionReport> {
    return this.ctx.op('admission', async () => {
      const d = this.ctx.config.defaults;
      const active = await this.ctx.store.countSandboxes({ states: ACTIVE_SANDBOX_STATES });
      const report: AdmissionReport = {
        allowed: false,
        // No spawn queue exists: a refused spawn must be retried by the client.
        queueable: false,
        activeSandboxes: active,
        maxSandboxes: d.maxSandboxes,
        maxTtlMs: d.maxTtlMs,
        scheduler: this.ctx.lastScheduler,
      };
      let spec: ResolvedSpawn;
      let quota: QuotaRecord | undefined;
      try {
        ({ spec, quota } = await this.resolve(request, caller));
      } catch (err) {
        if (!isStacyError(err)) throw err;
        report.reason = err.message;
        return report;
      }
      report.maxTtlMs = maxTtlFor(this.ctx.config, quota);
      if (spec.ownerId !== null) {
        report.activeOwnerSandboxes = await this.ctx.store.countSandboxes({ states: ACTIVE_SANDBOX_STATES, ownerId: spec.ownerId });
        const maxOwner = this.ownerLimit(quota);
        if (Number.isFinite(maxOwner)) report.maxOwnerSandboxes = maxOwner;
      }
      try {
        await this.checkLimits(spec, quota);
      } catch (err) {
        if (!isStacyError(err)) throw err;
        report.reason = err.message;
        return report;
      }
      const placed = await this.placement(spec.provider, spec.ownerId);
      report.scheduler = placed.status;
      if (placed.selected === null) {
        report.reason = placed.status.reason ?? 'no eligible worker';
        return report;
      }
      const unreachable = this.unreachableReason(placed.selected);
      if (unreachable !== null) {
        report.reason = unreachable;
        return report;
      }
      report.allowed = true;
      return report;
    });
  }

  /** Why a selected worker cannot be driven from here, or null when it can (local, or remote with an rpc_url). */
  /** The warm pool fills this worker only, whatever placement would prefer. */
  private async localPlacement(): Promise<Placement> {
    const self = (await this.ctx.store.getWorker(this.ctx.workerId)) ?? null;
    return { selected: self, status: this.ctx.lastScheduler, eligible: self === null ? [] : [self] };
  }

  private unreachableReason(worker: WorkerRecord): string | null {
    if (worker.id === this.ctx.workerId) return null;
    if (this.ctx.remote === undefined) return `placement selected remote worker ${worker.id}, but this server has no worker RPC client`;
    if (worker.capacity.rpcUrl === undefined || worker.capacity.rpcUrl === '') return `placement selected remote worker ${worker.id}, which advertises no rpc_url`;
    return null;
  }

  // ---------------------------------------------------------------- spawn

  spawn(request: SpawnRequest, caller: Caller): Promise<SandboxRecord> {
    return this.ctx.op('spawn', async () => {
      const { spec, quota } = await this.resolve(request, caller);
      const pool = this.pool;
      if (pool?.wants(spec) === true) {
        // Under the admission lock, like a reservation: the owner's limits see every other claim.
        const claimed = await this.admissionLock.run(async () => {
          await this.checkLimits(spec, quota, false);
          return pool.claim(spec);
        });
        if (claimed !== undefined) return claimed;
      }
      const { record, provider } = await this.reserve(spec, quota);
      return this.ctx.sandboxLock.run(record.id, () => this.materialise(record, spec, provider));
    });
  }

  /** Lets spawns claim warm sandboxes from `pool`. */
  attachPool(pool: PoolClaimer): void {
    this.pool = pool;
  }

  /**
   * Creates a sandbox from a resolved spec on this worker, skipping placement: the warm pool's
   * fill path. Server-wide limits, lease and record are exactly those of a normal spawn.
   */
  spawnLocal(spec: ResolvedSpawn): Promise<SandboxRecord> {
    return this.ctx.op('pool_fill', async () => {
      const { record, provider } = await this.reserve(spec, undefined, true);
      return this.ctx.sandboxLock.run(record.id, () => this.materialise(record, spec, provider));
    });
  }

  /**
   * Admission, placement, lease and the `creating` record, serialised in-process so that
   * concurrent spawns each see the others' reservations when they count.
   */
  private reserve(
    spec: ResolvedSpawn,
    quota: QuotaRecord | undefined,
    local = false,
  ): Promise<{ record: SandboxRecord; provider: Provider | undefined }> {
    return this.admissionLock.run(async () => {
      await this.checkLimits(spec, quota);
      const placed = local ? await this.localPlacement() : await this.placement(spec.provider, spec.ownerId);
      if (placed.selected === null) {
        throw new StacyError('no_eligible_worker', placed.status.reason ?? 'no eligible worker', {
          retryAfterSeconds: Math.max(1, Math.ceil(this.ctx.config.worker.heartbeatIntervalMs / 1000)),
        });
      }
      const worker = placed.selected;
      const unreachable = this.unreachableReason(worker);
      if (unreachable !== null) throw new StacyError('remote_worker_rpc_unavailable', unreachable);
      // A remote worker is reached before anything is written, so an unreachable one leaves no trace.
      const provider =
        worker.id === this.ctx.workerId || this.ctx.remote === undefined
          ? this.ctx.providers.get(spec.provider)
          : await bounded(this.ctx.remote.provider(worker, spec.provider), `connect to worker ${worker.id}`);
      let id = newSandboxId();
      while ((await this.ctx.store.getSandbox(id)) !== undefined) id = newSandboxId();
      // The lease comes first and is held by the worker that will run the sandbox: the worker
      // refuses spawn and destroy under any other holder.
      await this.ctx.acquireLease(id, worker.id);
      const now = this.ctx.clock.now();
      const record: SandboxRecord = {
        id,
        state: 'creating',
        provider: spec.provider,
        image: spec.image,
        memoryMb: spec.memoryMb,
        vcpus: spec.vcpus,
        ownerId: spec.ownerId,
        workerId: worker.id,
        runtimeId: null,
        template: spec.template,
        metadata: spec.metadata,
        createdAt: now,
        updatedAt: now,
        expiresAt: now + spec.ttlMs,
        stateReason: null,
      };
      try {
        await this.ctx.store.createSandbox(record);
      } catch (err) {
        await this.ctx.releaseLease(id, worker.id);
        throw err;
      }
      return { record, provider };
    });
  }

  /**
   * Creates the runtime for a reserved record. On failure nothing is left behind: the runtime
   * (if any) is destroyed, the record is deleted and the lease released, so the store never
   * holds a record without a runtime nor a provider a runtime without a record. Only if the
   * record cannot be deleted is it marked `error` so an operator can see it.
   */
  private async materialise(record: SandboxRecord, spec: ResolvedSpawn, provider: Provider | undefined): Promise<SandboxRecord> {
    // A destroy may have slipped in between the reservation and this lock: then there is
    // nothing left to create, and the destroyed record stays as history.
    const current = await this.ctx.store.getSandbox(record.id);
    if (current?.state !== 'creating') throw conflict(`sandbox ${record.id} was destroyed before its runtime was created`);
    const workerId = this.ctx.holderOf(record);
    let runtimeId: string | null = null;
    try {
      if (provider === undefined) throw unavailable(`provider ${spec.provider} is not available`);
      const result = await this.ctx.callProvider('spawn', () =>
        provider.spawn({
          sandboxId: record.id,
          image: spec.image,
          memoryMb: spec.memoryMb,
          vcpus: spec.vcpus,
          ownerId: spec.ownerId,
          workerId,
          env: spec.env,
          ...(spec.networkMode !== undefined ? { networkMode: spec.networkMode } : {}),
          labels: {
            'stacyvm.sandbox_id': record.id,
            'stacyvm.worker_id': workerId,
            ...(spec.ownerId !== null ? { 'stacyvm.owner_id': spec.ownerId } : {}),
          },
        }),
      );
      runtimeId = result.runtimeId;
      const running = await this.ctx.store.updateSandbox(record.id, { state: 'running', runtimeId, updatedAt: this.ctx.clock.now() });
      this.ctx.emit('sandbox.spawned', {
        sandboxId: record.id,
        workerId,
        data: { provider: spec.provider, image: spec.image, ownerId: spec.ownerId, runtimeId },
      });
      return running;
    } catch (err) {
      await this.undoSpawn(record, provider, runtimeId, err);
      throw err;
    }
  }

  private async undoSpawn(record: SandboxRecord, provider: Provider | undefined, runtimeId: string | null, cause: unknown): Promise<void> {
    const reason = cause instanceof Error ? cause.message : String(cause);
    if (runtimeId !== null && provider !== undefined) {
      try {
        await provider.destroy(runtimeId);
      } catch (err) {
        this.ctx.log.error({ err, sandboxId: record.id, runtimeId }, 'could not remove the runtime of a failed spawn');
        // The runtime may live on: keep the record (as error) so reconciliation can find it.
        await this.markError(record.id, `spawn failed (${reason}); runtime ${runtimeId} could not be removed`);
        return;
      }
    }
    try {
      await this.ctx.store.deleteSandboxes([record.id]);
      await this.ctx.releaseLease(record.id, this.ctx.holderOf(record));
    } catch (err) {
      this.ctx.log.error({ err, sandboxId: record.id }, 'could not delete the record of a failed spawn');
      await this.markError(record.id, `spawn failed: ${reason}`);
    }
    this.ctx.emit('sandbox.error', { sandboxId: record.id, workerId: this.ctx.holderOf(record), data: { phase: 'spawn', reason } });
  }

  private async markError(id: string, reason: string): Promise<void> {
    try {
      await this.ctx.store.updateSandbox(id, { state: 'error', stateReason: reason, updatedAt: this.ctx.clock.now() });
    } catch (err) {
      this.ctx.log.error({ err, sandboxId: id }, 'could not mark sandbox as error');
    }
  }

  // ---------------------------------------------------------------- read

  /**
   * Active sandboxes (not destroyed or expired), oldest first. A caller with a user id who is
   * not an admin sees only its own; admins and anonymous local callers (no auth, no user id)
   * see all. Finished records stay readable through get() until the retention window ends.
   */
  list(caller: Caller): Promise<SandboxRecord[]> {
    return this.ctx.op('list', async () => {
      const filter = caller.userId !== null && !caller.isAdmin ? { states: ACTIVE_SANDBOX_STATES, ownerId: caller.userId } : { states: ACTIVE_SANDBOX_STATES };
      // Unclaimed warm sandboxes belong to no one yet and are not listed.
      const rows = (await this.ctx.store.listSandboxes(filter)).filter((r) => !isPooled(r));
      return rows.sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1));
    });
  }

  get(id: string, caller: Caller): Promise<SandboxRecord> {
    return this.ctx.op('get', () => this.ctx.load(id, caller));
  }

  // ---------------------------------------------------------------- destroy / extend

  destroy(id: string, caller: Caller): Promise<void> {
    return this.ctx.op('destroy', async () => {
      const record = await this.ctx.load(id, caller);
      await this.teardown(record, 'destroyed', 'destroyed on request');
    });
  }

  /**
   * Tears a sandbox down under its lease. The lease is acquired (or renewed) before anything
   * changes; when another worker holds it this throws lease_conflict having changed nothing.
   * Terminal records are left alone (idempotent destroy).
   */
  teardown(stale: SandboxRecord, final: 'destroyed' | 'expired', reason: string): Promise<SandboxRecord> {
    return this.ctx.sandboxLock.run(stale.id, async () => {
      // Re-read under the lock: a spawn or another teardown may have finished meanwhile.
      const record = await this.ctx.store.getSandbox(stale.id);
      if (record === undefined) throw notFound('sandbox', stale.id);
      // An extend that landed meanwhile wins over the reaper.
      if (final === 'expired' && record.expiresAt > this.ctx.clock.now()) return record;
      return this.teardownLocked(record, final, reason);
    });
  }

  private async teardownLocked(record: SandboxRecord, final: 'destroyed' | 'expired', reason: string): Promise<SandboxRecord> {
    if (TERMINAL_SANDBOX_STATES.includes(record.state)) return record;
    const holder = this.ctx.holderOf(record);
    if (this.ctx.isRemote(record)) {
      // The remote provider acquires the lease for the worker itself, on the call that presents it.
      const lease = await this.ctx.store.getLease(record.id);
      if (lease !== undefined && lease.holderId !== holder && lease.expiresAt > (await this.ctx.store.now())) {
        throw new StacyError('lease_conflict', `sandbox ${record.id} is leased by worker ${lease.holderId}`);
      }
    } else {
      await this.ctx.acquireLease(record.id);
    }
    if (record.runtimeId !== null) {
      const runtimeId = record.runtimeId;
      if (this.ctx.isRemote(record)) {
        if (await this.workerIsStale(holder)) {
          // A stale worker may be hung rather than gone; calling it would only wait out the
          // reply bound. The record settles here and the runtime is removed when the worker
          // returns (its inventory is reconciled then).
          this.ctx.log.warn({ sandboxId: record.id, workerId: holder }, 'worker stale; sandbox settled without reaching its runtime');
          reason = `${reason}; worker ${holder} stale, runtime removed when it returns`;
        } else {
          const provider = await this.ctx.providerFor(record);
          await this.ctx.callProvider('destroy', () => provider.destroy(runtimeId));
        }
      } else {
        const provider = this.ctx.providers.get(record.provider);
        if (provider !== undefined) {
          await this.ctx.callProvider('destroy', () => provider.destroy(runtimeId));
        } else {
          this.ctx.log.warn({ sandboxId: record.id, provider: record.provider }, 'provider not configured; marking sandbox destroyed without reaching its runtime');
          reason = `${reason}; provider ${record.provider} not configured, runtime not verified`;
        }
      }
    }
    const updated = await this.ctx.store.updateSandbox(record.id, { state: final, stateReason: reason, updatedAt: this.ctx.clock.now() });
    await this.ctx.releaseLease(record.id, holder);
    this.ctx.emit(final === 'expired' ? 'sandbox.expired' : 'sandbox.destroyed', {
      sandboxId: record.id,
      workerId: holder,
      data: { provider: record.provider, ownerId: record.ownerId, reason },
    });
    return updated;
  }

  private async workerIsStale(workerId: string): Promise<boolean> {
    const worker = await this.ctx.store.getWorker(workerId);
    // An unknown worker may be a peer server sharing the store: never settle its sandboxes from here.
    return worker !== undefined && isStale(worker, this.ctx.clock.now(), this.ctx.config.workers.staleAfterMs);
  }

  extend(id: string, ttlMs: number, caller: Caller): Promise<SandboxRecord> {
    return this.ctx.op('extend', async () => {
      const record = await this.ctx.load(id, caller);
      if (TERMINAL_SANDBOX_STATES.includes(record.state)) throw conflict(`sandbox ${id} is ${record.state}`);
      if (!Number.isFinite(ttlMs) || ttlMs <= 0) throw badRequest('ttl: must be a positive duration');
      const max = maxTtlFor(this.ctx.config, await this.ownerQuota(record.ownerId));
      const now = this.ctx.clock.now();
      const granted = Math.min(ttlMs, max);
      const updated = await this.ctx.store.updateSandbox(id, { expiresAt: now + granted, updatedAt: now });
      this.ctx.emit('sandbox.extended', {
        sandboxId: id,
        workerId: record.workerId ?? undefined,
        data: { requestedTtlMs: ttlMs, grantedTtlMs: granted, expiresAt: updated.expiresAt, capped: granted < ttlMs },
      });
      return updated;
    });
  }
}
