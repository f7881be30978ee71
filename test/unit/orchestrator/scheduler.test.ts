import { describe, expect, it } from 'vitest';
import type { WorkerRecord } from '../../../src/core/types.js';
import { isStale, place } from '../../../src/orchestrator/scheduler.js';
import type { PlacementInput } from '../../../src/orchestrator/scheduler.js';

const NOW = 1_800_000_000_000;
const STALE_AFTER = 120_000;

function worker(id: string, over: Partial<WorkerRecord> = {}): WorkerRecord {
  return {
    id,
    hostname: `${id}.example`,
    status: 'online',
    providers: [],
    capabilities: ['spawn'],
    capacity: {},
    lastHeartbeat: NOW - 1000,
    createdAt: NOW - 10_000,
    updatedAt: NOW - 1000,
    ...over,
  };
}

function input(workers: WorkerRecord[], load: Record<string, number> = {}, over: Partial<PlacementInput> = {}): PlacementInput {
  return {
    localWorkerId: 'local',
    workers,
    activeByWorker: new Map(Object.entries(load)),
    provider: 'mock',
    now: NOW,
    staleAfterMs: STALE_AFTER,
    ...over,
  };
}

describe('placement', () => {
  it('prefers the local worker when it is eligible, even when a remote one is less loaded', () => {
    const r = place(input([worker('local'), worker('w2')], { local: 5, w2: 0 }));
    expect(r.selected?.id).toBe('local');
    expect(r.status).toEqual({ workerId: 'local', selectedWorkerId: 'local', eligibleWorkers: 2 });
  });

  it('picks the least-loaded worker when local is not eligible, ties broken by id', () => {
    const workers = [worker('local', { status: 'draining' }), worker('w3'), worker('w1'), worker('w2')];
    const r = place(input(workers, { w1: 3, w2: 1, w3: 1 }));
    expect(r.selected?.id).toBe('w2');
    expect(r.status.eligibleWorkers).toBe(3);
  });

  it.each(['draining', 'offline', 'unhealthy'] as const)('skips %s workers', (status) => {
    const r = place(input([worker('local', { status }), worker('w2')]));
    expect(r.selected?.id).toBe('w2');
    expect(r.status.eligibleWorkers).toBe(1);
  });

  it('skips stale workers, local included (no special case), using a strict window', () => {
    const justFresh = worker('local', { lastHeartbeat: NOW - STALE_AFTER });
    expect(isStale(justFresh, NOW, STALE_AFTER)).toBe(false);
    expect(place(input([justFresh])).selected?.id).toBe('local');
    const stale = worker('local', { lastHeartbeat: NOW - STALE_AFTER - 1 });
    const r = place(input([stale, worker('w2')]));
    expect(r.selected?.id).toBe('w2');
    expect(r.status.eligibleWorkers).toBe(1);
  });

  it('requires provider support; an empty provider list means any', () => {
    const workers = [worker('local', { providers: ['oci'] }), worker('w2', { providers: ['mock', 'oci'] }), worker('w3', { providers: [] })];
    const r = place(input(workers, { w2: 2, w3: 1 }));
    expect(r.eligible.map((w) => w.id).sort()).toEqual(['w2', 'w3']);
    expect(r.selected?.id).toBe('w3');
    expect(place(input(workers, {}, { provider: 'oci' })).selected?.id).toBe('local');
  });

  it('respects declared capacity; zero or absent means unlimited', () => {
    const workers = [worker('local', { capacity: { maxSandboxes: 2 } }), worker('w2', { capacity: { maxSandboxes: 0 } })];
    expect(place(input(workers, { local: 1 })).selected?.id).toBe('local');
    const full = place(input(workers, { local: 2, w2: 50 }));
    expect(full.selected?.id).toBe('w2');
    expect(full.status.eligibleWorkers).toBe(1);
  });

  it("respects a worker's declared per-owner limit for the sandbox's owner; zero or absent means unlimited", () => {
    const workers = [worker('local', { capacity: { maxSandboxesPerOwner: 2 } }), worker('w2', { capacity: { maxSandboxesPerOwner: 0 } })];
    expect(place(input(workers, { local: 5 }, { ownerActiveByWorker: new Map([['local', 1]]) })).selected?.id).toBe('local');
    const full = place(input(workers, { local: 5, w2: 9 }, { ownerActiveByWorker: new Map([['local', 2]]) }));
    expect(full.selected?.id).toBe('w2');
    expect(full.status.eligibleWorkers).toBe(1);
    // No owner, no per-owner limit.
    expect(place(input(workers, { local: 5 })).selected?.id).toBe('local');
    const nobody = place(input([workers[0]!], {}, { ownerActiveByWorker: new Map([['local', 2]]) }));
    expect(nobody.status.reason).toMatch(/local: at its per-owner limit/);
  });

  it('reports no selection and a reason when nobody is eligible', () => {
    const r = place(input([worker('local', { status: 'offline' }), worker('w2', { providers: ['docker'] })]));
    expect(r.selected).toBeNull();
    expect(r.status.selectedWorkerId).toBeNull();
    expect(r.status.eligibleWorkers).toBe(0);
    expect(r.status.reason).toMatch(/local: status offline/);
    expect(r.status.reason).toMatch(/w2: does not run provider mock/);
    expect(place(input([])).status.reason).toMatch(/no workers/);
  });

  it('selects a remote worker when only it is eligible (the caller must refuse honestly)', () => {
    const r = place(input([worker('local', { capacity: { maxSandboxes: 1 } }), worker('remote-1')], { local: 1 }));
    expect(r.status).toEqual({ workerId: 'local', selectedWorkerId: 'remote-1', eligibleWorkers: 1 });
  });
});
