/**
 * Keeps a lease alive while the operation it admitted runs on this worker. A `worker.spawn` that
 * builds or pulls an image (or a slow destroy) can outlast the lease the control plane
 * presented; without renewal the lease would lapse mid-operation and another holder could take
 * the sandbox while this worker is still creating its runtime.
 *
 * The worker is the lease's holder, so it renews it itself through the control plane
 * (`POST /api/v1/worker/{id}/leases/{resource}/renew`, asking for 90% of the lifetime the lease
 * had when the call arrived) every third of that lifetime and
 * feeds each renewed lease into its own fence, which raises the floor to the new generation.
 * An operation ends fenced out when the control plane refused a renewal (the store no longer
 * lists this worker as an unexpired holder) or when the last lease it knows of expired before
 * the operation finished (the control plane could not be reached to renew it); the caller then
 * undoes what it can and answers `lease_conflict`.
 */
import type { Logger } from 'pino';
import { pino } from 'pino';
import type { Clock } from '../core/clock.js';
import { isStacyError } from '../core/errors.js';
import type { LeaseFence, WireLease } from '../workerproto/index.js';

/** Renews `resourceId`'s lease for this worker for `ttlMs` and returns the lease now in force. */
export type LeaseRenewer = (resourceId: string, ttlMs: number) => Promise<WireLease>;

/** The timer functions the keeper uses; injectable so tests drive time by hand. */
export interface KeeperTimers {
  set(fn: () => void, ms: number): unknown;
  clear(handle: unknown): void;
}

export const realTimers: KeeperTimers = {
  set: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clear: (h) => clearTimeout(h as NodeJS.Timeout),
};

export interface LeaseKeeperOptions {
  fence: LeaseFence;
  renew: LeaseRenewer;
  clock: Clock;
  timers?: KeeperTimers;
  logger?: Logger;
}

export interface Kept<T> {
  value: T;
  /** Why the operation no longer holds its lease, when it does not. */
  lost: string | undefined;
}

/** Renewals never come closer together than this, however short the lease. */
const MIN_RENEW_INTERVAL_MS = 100;
/** Share of the lease's observed lifetime each renewal asks for. */
const RENEW_TTL_SHARE = 0.9;

export class LeaseKeeper {
  private readonly timers: KeeperTimers;
  private readonly log: Logger;

  constructor(private readonly options: LeaseKeeperOptions) {
    this.timers = options.timers ?? realTimers;
    this.log = options.logger ?? pino({ level: 'silent' });
  }

  /**
   * Runs `op` while renewing `lease` (already admitted by the fence) every third of its lifetime.
   * Returns the operation's value and whether the lease was lost meanwhile; `op`'s own error
   * propagates unchanged.
   */
  async keep<T>(lease: WireLease, op: () => Promise<T>): Promise<Kept<T>> {
    const resourceId = lease.resource_id;
    const { clock } = this.options;
    let expiresAt = Date.parse(lease.expires_at);
    const ttlMs = expiresAt - clock.now();
    const every = Math.max(MIN_RENEW_INTERVAL_MS, Math.floor(ttlMs / 3));
    // The control plane refuses a TTL above its maximum (worker.lease_ttl or more); asking for a
    // little less than the lifetime seen here keeps a worker clock running somewhat behind the
    // control plane's from asking for more than it grants.
    const askMs = Math.max(MIN_RENEW_INTERVAL_MS, Math.floor(ttlMs * RENEW_TTL_SHARE));
    let refused: string | undefined;
    let done = false;
    let handle: unknown;
    let renewing: Promise<void> | undefined;

    const renewOnce = async (): Promise<void> => {
      let renewed: WireLease;
      try {
        renewed = await this.options.renew(resourceId, askMs);
      } catch (err) {
        if (isStacyError(err, 'lease_conflict') || isStacyError(err, 'not_found')) {
          refused = `the control plane refused to renew the lease on ${resourceId}: ${err.message}`;
          this.log.warn({ resource_id: resourceId, err: err.message }, 'lease lost during an operation');
        } else {
          // Unreachable or busy: the next tick tries again while the lease still runs.
          this.log.warn({ resource_id: resourceId, err: err instanceof Error ? err.message : String(err) }, 'could not renew the lease of an operation in progress');
        }
        return;
      }
      try {
        this.options.fence.admit(renewed, resourceId);
        expiresAt = Math.max(expiresAt, Date.parse(renewed.expires_at));
        this.log.debug({ resource_id: resourceId, generation: renewed.generation, expires_at: renewed.expires_at }, 'lease renewed during an operation');
      } catch (err) {
        // A newer generation already arrived (a control-plane renewal): the fence is ahead already.
        this.log.warn({ resource_id: resourceId, err: err instanceof Error ? err.message : String(err) }, 'renewed lease not admitted by the fence');
      }
    };
    const tick = () => {
      renewing = renewOnce().finally(() => {
        if (!done && refused === undefined) handle = this.timers.set(tick, every);
      });
    };
    if (ttlMs > 0) handle = this.timers.set(tick, every);
    try {
      const value = await op();
      done = true;
      this.timers.clear(handle);
      await renewing;
      if (refused !== undefined) return { value, lost: refused };
      if (expiresAt <= clock.now()) return { value, lost: `the lease on ${resourceId} expired at ${new Date(expiresAt).toISOString()} before the operation finished` };
      return { value, lost: undefined };
    } finally {
      done = true;
      this.timers.clear(handle);
    }
  }
}
