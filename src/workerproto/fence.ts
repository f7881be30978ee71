/**
 * Ownership fencing on the worker side. The store's lease generation is the fencing token: it
 * grows with every acquire and renew, so a caller that lost its lease (paused, partitioned)
 * still presents an older generation than the one the new owner already used here, and its
 * late destroy or spawn is refused before it touches a runtime.
 *
 * The highest generation seen is kept per resource. This relies on the store never lowering a
 * resource's generation (release keeps the row's counter). With a journal the floor also
 * survives a restart of the worker: a raised floor is written out before the call it admits
 * runs, so no call can act under a generation the next process would have forgotten.
 *
 * Entries are bounded by one rule: an entry is dropped only when `isLive` says the worker has
 * nothing for the resource (no runtime, no operation in flight) and the newest lease accepted
 * for it expired more than `retainMs` ago. Any older lease for that resource has expired by then
 * too, provided no lease lives longer than `retainMs`, so dropping it cannot readmit one.
 */
import type { Clock } from '../core/clock.js';
import { StacyError } from '../core/errors.js';
import type { WireLease } from './methods.js';

/** What the fence remembers about one resource. */
export interface FenceEntry {
  generation: number;
  /** Expiry (ms) of the lease that carried `generation`. */
  expiresAt: number;
}

/** Durable storage for the fence's floors; `save` returns only once the entries are durable. */
export interface FenceJournal {
  load(): Map<string, FenceEntry>;
  save(entries: ReadonlyMap<string, FenceEntry>): void;
}

export interface LeaseFenceOptions {
  journal?: FenceJournal;
  /** Whether the worker still has something for the resource; such entries are never dropped. */
  isLive?: (resourceId: string) => boolean;
  /** How long after its newest lease expired an entry for a resource that is not live is kept. Default 15 min. */
  retainMs?: number;
}

/** Default retention: longer than any lease the control plane grants (`worker.lease_ttl`, 2m by default). */
export const FENCE_RETAIN_MS = 15 * 60_000;

export class LeaseFence {
  private readonly highest: Map<string, FenceEntry>;
  private readonly journal: FenceJournal | undefined;
  private readonly retainMs: number;
  private isLive: (resourceId: string) => boolean;

  constructor(
    private readonly workerId: string,
    private readonly clock: Clock,
    options: LeaseFenceOptions = {},
  ) {
    this.journal = options.journal;
    this.retainMs = options.retainMs ?? FENCE_RETAIN_MS;
    this.isLive = options.isLive ?? (() => false);
    this.highest = this.journal?.load() ?? new Map();
  }

  /** Sets which resources the worker still has (their floors are kept whatever their age). */
  retainWhile(isLive: (resourceId: string) => boolean): void {
    this.isLive = isLive;
  }

  /**
   * Accepts the lease for a mutating call on `resourceId` and records its generation, or throws
   * `lease_conflict` when the lease is missing, names another resource or holder, has expired,
   * or is older than a generation already accepted for that resource. A refused lease records
   * nothing. With a journal, a raised floor is durable before this returns (`unavailable` when
   * it cannot be written, and then nothing is admitted).
   */
  admit(lease: WireLease | undefined, resourceId: string): void {
    if (lease === undefined) throw conflict(`a lease is required to change ${JSON.stringify(resourceId)}`);
    if (lease.resource_id !== resourceId) {
      throw conflict(`lease is for ${JSON.stringify(lease.resource_id)}, not ${JSON.stringify(resourceId)}`);
    }
    if (lease.holder_id !== this.workerId) {
      throw conflict(`lease on ${JSON.stringify(resourceId)} is held by ${JSON.stringify(lease.holder_id)}, not this worker (${JSON.stringify(this.workerId)})`);
    }
    const expiresAt = Date.parse(lease.expires_at);
    if (!Number.isFinite(expiresAt)) throw new StacyError('bad_request', `lease.expires_at: not a timestamp: ${JSON.stringify(lease.expires_at)}`);
    if (expiresAt <= this.clock.now()) throw conflict(`lease on ${JSON.stringify(resourceId)} expired at ${lease.expires_at}`);
    const seen = this.highest.get(resourceId);
    if (seen !== undefined && lease.generation < seen.generation) {
      throw conflict(`lease generation ${lease.generation} on ${JSON.stringify(resourceId)} is older than generation ${seen.generation} already seen`);
    }
    if (seen !== undefined && lease.generation === seen.generation && expiresAt <= seen.expiresAt) return;
    const next = new Map(this.highest);
    next.set(resourceId, { generation: lease.generation, expiresAt: Math.max(expiresAt, seen?.expiresAt ?? 0) });
    this.commit(this.pruned(next));
  }

  /** The highest generation accepted for a resource, if any. */
  highestGeneration(resourceId: string): number | undefined {
    return this.highest.get(resourceId)?.generation;
  }

  /** How many resources have a floor. */
  get size(): number {
    return this.highest.size;
  }

  /** Drops the entries the retention rule allows dropping (see the module comment); returns how many. */
  prune(): number {
    const next = this.pruned(this.highest);
    const dropped = this.highest.size - next.size;
    if (dropped > 0) this.commit(next);
    return dropped;
  }

  private pruned(entries: ReadonlyMap<string, FenceEntry>): Map<string, FenceEntry> {
    const cutoff = this.clock.now() - this.retainMs;
    const out = new Map<string, FenceEntry>();
    for (const [id, e] of entries) if (e.expiresAt > cutoff || this.isLive(id)) out.set(id, e);
    return out;
  }

  private commit(next: Map<string, FenceEntry>): void {
    if (this.journal !== undefined) {
      try {
        this.journal.save(next);
      } catch (err) {
        throw new StacyError('unavailable', `cannot record lease generations: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      }
    }
    this.highest.clear();
    for (const [id, e] of next) this.highest.set(id, e);
  }
}

const conflict = (message: string): StacyError => new StacyError('lease_conflict', message);
