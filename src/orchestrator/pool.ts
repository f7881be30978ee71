/**
 * The warm pool: sandboxes of the default shape kept running on this worker so that a spawn of
 * that shape is answered by re-labelling a record instead of creating a runtime.
 *
 * A warm sandbox is an ordinary record (created through the lifecycle's spawn path, so its lease
 * is acquired before the record is written) marked with the `stacyvm.pool` metadata key, with no
 * owner and an expiry far in the future so the reaper leaves it alone. A claim happens under the
 * sandbox lock and the sandbox lease: the record is re-read, must still be marked and running,
 * and is then given its owner, TTL and metadata. Other workers never claim it: they cannot
 * acquire a lease this worker holds.
 */
import { Counter, Gauge } from 'prom-client';
import { isStacyError } from '../core/errors.js';
import type { SandboxRecord } from '../core/types.js';
import type { OrchestratorContext } from './context.js';
import type { PoolClaimer, SandboxLifecycle } from './lifecycle.js';
import type { PoolStatus } from './service.js';
import { type ResolvedSpawn, POOLED_METADATA_KEY, isPooled } from './validate.js';

/** Expiry of unclaimed warm sandboxes (9999-12-31): far enough that the reaper never takes them, still a valid date on the wire. */
export const POOLED_EXPIRES_AT = Date.UTC(9999, 11, 31);

/** States in which a warm sandbox counts toward the pool's target (ready or on its way). */
const LIVE = new Set(['creating', 'running']);

/** Running, with a runtime, and marked ready (not being withdrawn by a fill pass). */
function claimable(r: SandboxRecord): boolean {
  return r.state === 'running' && r.runtimeId !== null && r.metadata[POOLED_METADATA_KEY] === 'ready';
}

export class WarmPool implements PoolClaimer {
  private claims = 0;
  private misses = 0;
  private creating = 0;
  private ready = 0;
  /** Fill passes run one after another; a kick while one runs queues the next. */
  private pass: Promise<void> = Promise.resolve();
  private queued = false;
  private timer: NodeJS.Timeout | undefined;
  private stopped = true;
  private readonly claimsCounter: Counter;
  private readonly missesCounter: Counter;

  constructor(private readonly ctx: OrchestratorContext, private readonly lifecycle: SandboxLifecycle) {
    const registers = [ctx.metricsRecorder.registry];
    // Set from the last fill or claim: a scrape should not have to list the store.
    const readyNow = (): number => this.ready;
    new Gauge({
      name: 'stacyvm_pool_ready',
      help: 'Warm sandboxes ready to be claimed on this worker.',
      registers,
      collect() {
        this.set(readyNow());
      },
    });
    this.claimsCounter = new Counter({ name: 'stacyvm_pool_claims_total', help: 'Spawns answered with a warm sandbox.', registers });
    this.missesCounter = new Counter({ name: 'stacyvm_pool_misses_total', help: 'Spawns of the pool shape that found no warm sandbox ready.', registers });
  }

  private get enabled(): boolean {
    return this.ctx.config.pool.enabled;
  }

  private get target(): number {
    return this.enabled ? this.ctx.config.pool.size : 0;
  }

  private get image(): string {
    return this.ctx.config.pool.image !== '' ? this.ctx.config.pool.image : this.ctx.config.defaults.image;
  }

  private get provider(): string {
    return this.ctx.config.pool.provider !== '' ? this.ctx.config.pool.provider : this.ctx.defaultProviderName;
  }

  /** Whether a resolved spawn has the pool's shape: image, provider, memory, vCPUs and no env or network override. */
  matches(spec: Pick<ResolvedSpawn, 'image' | 'provider' | 'memoryMb' | 'vcpus' | 'env' | 'networkMode'>): boolean {
    const d = this.ctx.config.defaults;
    return (
      spec.image === this.image &&
      spec.provider === this.provider &&
      spec.memoryMb === d.memoryMb &&
      spec.vcpus === d.vcpus &&
      Object.keys(spec.env).length === 0 &&
      spec.networkMode === undefined
    );
  }

  wants(spec: ResolvedSpawn): boolean {
    return this.enabled && this.matches(spec);
  }

  /** Starts the refill timer and a first fill in the background (it never delays start-up). */
  start(): void {
    this.stopped = false;
    void this.fill();
    if (this.enabled && this.ctx.config.pool.refillIntervalMs > 0) {
      this.timer = setInterval(() => void this.fill(), this.ctx.config.pool.refillIntervalMs);
      this.timer.unref();
    }
  }

  /** Stops refilling and waits for a running pass. Warm sandboxes stay: they survive a restart and are reconciled like any other. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    await this.pass;
  }

  /** Runs a fill pass after any running one; resolves when it is done. */
  fill(): Promise<void> {
    if (this.queued) return this.pass;
    this.queued = true;
    this.pass = this.pass.then(async () => {
      this.queued = false;
      try {
        await this.fillOnce();
      } catch (err) {
        this.ctx.log.warn({ err }, 'warm pool fill failed; retrying at the next interval');
      }
    });
    return this.pass;
  }

  /** This worker's unclaimed warm sandboxes in any active state. */
  private async pooled(): Promise<SandboxRecord[]> {
    const rows = await this.ctx.store.listSandboxes({ states: ['creating', 'running', 'unhealthy', 'stopped', 'error'], workerId: this.ctx.workerId });
    return rows.filter(isPooled).sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1));
  }

  private async fillOnce(): Promise<void> {
    const rows = await this.pooled();
    // Broken ones, ones of a shape the configuration no longer asks for, and any beyond the target go.
    const keep: SandboxRecord[] = [];
    const drop: SandboxRecord[] = [];
    for (const r of rows) {
      const fits = LIVE.has(r.state) && r.metadata[POOLED_METADATA_KEY] === 'ready' && this.matches({ ...r, env: {}, networkMode: undefined }) && keep.length < this.target;
      (fits ? keep : drop).push(r);
    }
    for (const r of drop) {
      if (r.state === 'creating') continue; // still being materialised by a fill; next pass decides
      try {
        // Withdrawn under the lock first, so a claim racing this pass cannot take it and then lose it.
        const withdrawn = await this.ctx.sandboxLock.run(r.id, async () => {
          const current = await this.ctx.store.getSandbox(r.id);
          if (current === undefined || !isPooled(current)) return undefined;
          return this.ctx.store.updateSandbox(r.id, { metadata: { [POOLED_METADATA_KEY]: 'draining' }, updatedAt: this.ctx.clock.now() });
        });
        if (withdrawn !== undefined) await this.lifecycle.teardown(withdrawn, 'destroyed', `warm pool: no longer wanted (${r.state})`);
      } catch (err) {
        this.ctx.log.warn({ err, sandboxId: r.id }, 'warm pool could not remove a sandbox');
      }
    }
    this.ready = keep.filter((r) => r.state === 'running').length;
    let missing = this.target - keep.length;
    while (missing > 0 && !this.stopped) {
      this.creating += 1;
      try {
        await this.lifecycle.spawnLocal(this.spec());
        this.ready += 1;
      } catch (err) {
        // At the server limit this repeats every interval until capacity frees up: not worth a warning each time.
        const level = isStacyError(err, 'resource_limit') ? 'debug' : 'warn';
        this.ctx.log[level]({ err }, 'warm pool could not create a sandbox; retrying at the next interval');
        return;
      } finally {
        this.creating -= 1;
      }
      missing -= 1;
    }
  }

  private spec(): ResolvedSpawn {
    const d = this.ctx.config.defaults;
    return {
      image: this.image,
      provider: this.provider,
      template: null,
      memoryMb: d.memoryMb,
      vcpus: d.vcpus,
      ttlMs: POOLED_EXPIRES_AT - this.ctx.clock.now(),
      ownerId: null,
      metadata: { [POOLED_METADATA_KEY]: 'ready' },
      env: {},
      networkMode: undefined,
    };
  }

  /** Claims a ready warm sandbox for `spec` when it has the pool's shape; undefined otherwise. */
  async claim(spec: ResolvedSpawn): Promise<SandboxRecord | undefined> {
    if (!this.wants(spec)) return undefined;
    const candidates = (await this.pooled()).filter((r) => claimable(r) && this.matches({ ...r, env: {}, networkMode: undefined }));
    for (const candidate of candidates) {
      const claimed = await this.ctx.sandboxLock.run(candidate.id, () => this.claimOne(candidate.id, spec));
      if (claimed === undefined) continue;
      this.claims += 1;
      this.claimsCounter.inc();
      this.ready = Math.max(0, this.ready - 1);
      this.ctx.emit('sandbox.spawned', {
        sandboxId: claimed.id,
        workerId: this.ctx.workerId,
        data: { provider: claimed.provider, image: claimed.image, ownerId: claimed.ownerId, runtimeId: claimed.runtimeId, pooled: true },
      });
      if (!this.stopped) void this.fill();
      return claimed;
    }
    this.misses += 1;
    this.missesCounter.inc();
    if (!this.stopped) void this.fill();
    return undefined;
  }

  /** Under the sandbox lock: re-read, hold the lease, then hand the record over. */
  private async claimOne(id: string, spec: ResolvedSpawn): Promise<SandboxRecord | undefined> {
    const current = await this.ctx.store.getSandbox(id);
    if (current === undefined || !claimable(current) || current.workerId !== this.ctx.workerId) return undefined;
    try {
      await this.ctx.acquireLease(id);
    } catch (err) {
      if (isStacyError(err, 'lease_conflict')) return undefined;
      throw err;
    }
    const now = this.ctx.clock.now();
    return this.ctx.store.updateSandbox(id, {
      ownerId: spec.ownerId,
      template: spec.template,
      metadata: spec.metadata,
      expiresAt: now + spec.ttlMs,
      updatedAt: now,
    });
  }

  /** What GET /pool/status reports; `ready` is counted from the store. */
  async status(): Promise<PoolStatus> {
    this.ready = (await this.pooled()).filter(claimable).length;
    return {
      enabled: this.enabled,
      targetSize: this.target,
      ready: this.ready,
      creating: this.creating,
      image: this.image,
      provider: this.provider,
      claimsTotal: this.claims,
      missesTotal: this.misses,
    };
  }
}
