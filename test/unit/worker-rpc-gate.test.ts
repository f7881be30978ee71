import { describe, expect, it } from 'vitest';
import { ManualClock, toIso } from '../../src/core/clock.js';
import { LeaseFence, WorkerAuthenticator, WorkerRpcGate, mintWorkerToken, type IncomingRpc, type WorkerScope } from '../../src/workerproto/index.js';
import { codeOf, SIGNING_KEY as KEY, SANDBOX_ID as SB, SANDBOX_REF as ref } from '../fixtures/workerproto.js';


function setup() {
  const clock = new ManualClock();
  const authenticator = new WorkerAuthenticator({ workerToken: '', workerTokens: { w1: 'static-w1' }, workerSigningKeys: [KEY], revokedTokenIds: [] }, clock);
  const fence = new LeaseFence('w1', clock);
  const gate = new WorkerRpcGate('w1', authenticator, fence);
  const token = (scopes?: WorkerScope[], workerId = 'w1', audience: 'worker:rpc' | 'worker:control-plane' = 'worker:rpc') =>
    mintWorkerToken([KEY], { workerId, audience, now: clock.now(), ttlMs: 60_000, ...(scopes ? { scopes } : {}) }).token;
  const lease = (generation: number) => ({ resource_id: SB, holder_id: 'w1', generation, expires_at: toIso(clock.now() + 60_000) });
  const destroy = (generation: number, tok = token()): IncomingRpc => ({
    workerId: 'w1',
    token: tok,
    body: { id: 'r1', method: 'worker.destroy', worker_id: 'w1', lease: lease(generation), params: ref },
  });
  return { clock, fence, gate, token, destroy };
}

describe('WorkerRpcGate', () => {
  it('admits an authenticated, scoped, fenced request', () => {
    const { gate, fence, destroy } = setup();
    const { request, caller } = gate.admit(destroy(2));
    expect(request.method).toBe('worker.destroy');
    expect(caller).toMatchObject({ worker_id: 'w1', credential: 'signed' });
    expect(fence.highestGeneration(SB)).toBe(2);
  });

  it('a static per-worker token passes too', () => {
    const { gate, destroy } = setup();
    expect(gate.admit(destroy(1, 'static-w1')).caller.credential).toBe('per_worker');
  });

  it('authenticates before reading the body', () => {
    const { gate } = setup();
    expect(codeOf(() => gate.admit({ workerId: 'w1', token: 'wrong', body: 'not even json' }))).toBe('unauthorized');
    expect(codeOf(() => gate.admit({ workerId: undefined, token: undefined, body: {} }))).toBe('unauthorized');
  });

  it("refuses another worker's credential and the control-plane audience", () => {
    const { gate, token, destroy } = setup();
    expect(codeOf(() => gate.admit({ ...destroy(1), workerId: 'w2', token: token(undefined, 'w2') }))).toBe('forbidden');
    expect(codeOf(() => gate.admit(destroy(1, token(undefined, 'w1', 'worker:control-plane'))))).toBe('forbidden');
  });

  it('refuses a method outside the credential scopes', () => {
    const { gate, token, destroy } = setup();
    expect(codeOf(() => gate.admit(destroy(1, token(['worker:exec']))))).toBe('forbidden');
    expect(gate.admit(destroy(1, token(['worker:destroy']))).request.method).toBe('worker.destroy');
  });

  it('refuses a malformed envelope and one addressed to another worker', () => {
    const { gate, token } = setup();
    expect(codeOf(() => gate.admit({ workerId: 'w1', token: token(), body: { id: 'r', method: 'worker.nope', worker_id: 'w1', params: {} } }))).toBe('bad_request');
    expect(codeOf(() => gate.admit({ workerId: 'w1', token: token(), body: { id: 'r', method: 'worker.status', worker_id: 'w2', params: ref } }))).toBe('bad_request');
  });

  it('fences: an older generation after a newer one, and an expired lease, are refused', () => {
    const { gate, destroy, clock } = setup();
    gate.admit(destroy(5));
    expect(codeOf(() => gate.admit(destroy(4)))).toBe('lease_conflict');
    const late = destroy(6);
    // The lease in `late` expires 60 s after it was made; the token stays valid through the skew window.
    clock.advance(61_000);
    expect(codeOf(() => gate.admit(late))).toBe('lease_conflict');
  });
});
