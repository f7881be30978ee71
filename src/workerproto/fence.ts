/**
 * Ownership fencing on the worker side. The store's lease generation is the fencing token: it
 * grows with every acquire and renew, so a caller that lost its lease (paused, partitioned)
 * still presents an older generation than the one the new owner already used here, and its
 * late destroy or spawn is refused before it touches a runtime.
 *
 * The highest generation seen is kept per resource for the life of the process. This relies on
 * the store never lowering a resource's generation (release keeps the row's counter).
 */
import type { Clock } from '../core/clock.js';
import { StacyError } from '../core/errors.js';
import type { WireLease } from './methods.js';

export class LeaseFence {
  private readonly highest = new Map<string, number>();

  constructor(
    private readonly workerId: string,
    private readonly clock: Clock,
  ) {}

  /**
   * Accepts the lease for a mutating call on `resourceId` and records its generation, or throws
   * `lease_conflict` when the lease is missing, names another resource or holder, has expired,
   * or is older than a generation already accepted for that resource. A refused lease records
   * nothing.
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
    if (seen !== undefined && lease.generation < seen) {
      throw conflict(`lease generation ${lease.generation} on ${JSON.stringify(resourceId)} is older than generation ${seen} already seen`);
    }
    if (seen === undefined || lease.generation > seen) this.highest.set(resourceId, lease.generation);
  }

  /** The highest generation accepted for a resource, if any. */
  highestGeneration(resourceId: string): number | undefined {
    return this.highest.get(resourceId);
  }
}

const conflict = (message: string): StacyError => new StacyError('lease_conflict', message);
