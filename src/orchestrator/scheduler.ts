import type { WorkerRecord } from '../core/types.js';
import type { SchedulerStatus } from './service.js';

export interface PlacementInput {
  /** The worker id of this process. */
  localWorkerId: string;
  workers: readonly WorkerRecord[];
  /** Sandboxes per worker id that are neither destroyed nor expired. */
  activeByWorker: ReadonlyMap<string, number>;
  /** The provider the sandbox needs. */
  provider: string;
  /**
   * The new sandbox's owner's active sandboxes per worker id, checked against each worker's
   * declared `maxSandboxesPerOwner`. Absent when the sandbox has no owner.
   */
  ownerActiveByWorker?: ReadonlyMap<string, number>;
  now: number;
  staleAfterMs: number;
}

export interface Placement {
  status: SchedulerStatus;
  /** The chosen worker, or null when none is eligible. */
  selected: WorkerRecord | null;
  eligible: WorkerRecord[];
}

/** True when the worker's last heartbeat is older than the freshness window. */
export function isStale(worker: Pick<WorkerRecord, 'lastHeartbeat'>, now: number, staleAfterMs: number): boolean {
  return now - worker.lastHeartbeat > staleAfterMs;
}

/** Why a worker cannot take a sandbox right now, or null when it can. */
export function ineligibility(worker: WorkerRecord, input: Omit<PlacementInput, 'workers' | 'localWorkerId'>): string | null {
  if (worker.status !== 'online') return `status ${worker.status}`;
  if (isStale(worker, input.now, input.staleAfterMs)) return 'stale heartbeat';
  if (worker.providers.length > 0 && !worker.providers.includes(input.provider)) return `does not run provider ${input.provider}`;
  const max = worker.capacity.maxSandboxes;
  // 0/absent means the worker declared no limit of its own.
  if (max !== undefined && max > 0 && (input.activeByWorker.get(worker.id) ?? 0) >= max) return 'at capacity';
  const perOwner = worker.capacity.maxSandboxesPerOwner;
  if (input.ownerActiveByWorker !== undefined && perOwner !== undefined && perOwner > 0 && (input.ownerActiveByWorker.get(worker.id) ?? 0) >= perOwner) {
    return 'at its per-owner limit';
  }
  return null;
}

/**
 * Chooses the worker for a new sandbox: among online, fresh workers that run the provider and
 * are below their declared capacity (in total and for the sandbox's owner), the local worker when it is eligible, otherwise the least
 * loaded one (ties broken by id so the choice is deterministic). A stale local record is not
 * special-cased: the heartbeat loop is what keeps it eligible.
 */
export function place(input: PlacementInput): Placement {
  const eligible = input.workers.filter((w) => ineligibility(w, input) === null);
  const load = (w: WorkerRecord): number => input.activeByWorker.get(w.id) ?? 0;
  let selected = eligible.find((w) => w.id === input.localWorkerId) ?? null;
  if (selected === null) {
    const ranked = [...eligible].sort((a, b) => load(a) - load(b) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    selected = ranked[0] ?? null;
  }
  const status: SchedulerStatus = {
    workerId: input.localWorkerId,
    selectedWorkerId: selected?.id ?? null,
    eligibleWorkers: eligible.length,
  };
  if (selected === null) status.reason = noEligibleReason(input);
  return { status, selected, eligible };
}

function noEligibleReason(input: PlacementInput): string {
  if (input.workers.length === 0) return 'no workers are registered';
  const reasons = input.workers.map((w) => `${w.id}: ${ineligibility(w, input) ?? 'eligible'}`);
  const shown = reasons.slice(0, 5).join('; ');
  return `no eligible worker for provider ${input.provider} (${shown}${reasons.length > 5 ? `; +${reasons.length - 5} more` : ''})`;
}
