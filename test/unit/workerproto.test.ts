import { describe, expect, it } from 'vitest';
import { ManualClock, toIso } from '../../src/core/clock.js';
import { ERROR_STATUS, StacyError, isStacyError, type ErrorCode } from '../../src/core/errors.js';
import {
  LeaseFence,
  METHODS,
  WORKER_METHODS,
  WORKER_SCOPES,
  createRequest,
  errorResponse,
  fromWireError,
  leaseToWire,
  methodNeedsLease,
  okResponse,
  parseRequest,
  parseResponse,
  requestIdOf,
  requireScope,
  scopeOf,
  toWireError,
  type AnyRpcRequest,
  type ParamsOf,
  type WireLease,
  type WorkerMethod,
} from '../../src/workerproto/index.js';
import { codeOf, SANDBOX_ID as SB, SANDBOX_REF as ref } from '../fixtures/workerproto.js';

const clock = new ManualClock();

function lease(over: Partial<WireLease> = {}): WireLease {
  return { resource_id: SB, holder_id: 'w1', generation: 3, expires_at: toIso(clock.now() + 60_000), ...over };
}

/** A valid params object for every method. */
const VALID: { [M in WorkerMethod]: ParamsOf<M> } = {
  'worker.heartbeat': {},
  'worker.spawn': { sandbox_id: SB, provider: 'mock', image: 'python:3', memory_mb: 512, vcpus: 0.5, owner_id: null, env: {}, labels: { a: 'b' } },
  'worker.destroy': ref,
  'worker.status': ref,
  'worker.exec': { ...ref, command: 'echo', args: ['hi'], mode: 'argv', env: {}, timeout: '30s' },
  'worker.exec_stream': { ...ref, command: 'echo', args: [], mode: 'shell', env: { A: '1' }, workdir: '/tmp', timeout: '1m30s' },
  'worker.file_write': { ...ref, path: '/a.txt', content: Buffer.from('hi').toString('base64'), mode: 0o644 },
  'worker.file_read': { ...ref, path: '/a.txt' },
  'worker.file_list': { ...ref, path: '/' },
  'worker.file_delete': { ...ref, path: '/a', recursive: true },
  'worker.file_move': { ...ref, old_path: '/a', new_path: '/b' },
  'worker.file_chmod': { ...ref, path: '/a', mode: 0o755 },
  'worker.file_stat': { ...ref, path: '/a' },
  'worker.file_glob': { ...ref, pattern: '/**/*.py' },
  'worker.logs': { ...ref, lines: 100 },
  'worker.inventory': { provider: 'mock' },
  'worker.renew_lease': { resource_id: SB },
  'worker.shutdown': {},
};

function envelope(method: string, params: unknown, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const withLease = (METHODS as Record<string, { lease: boolean }>)[method]?.lease ? { lease: lease() } : {};
  return { id: 'r1', method, worker_id: 'w1', params, ...withLease, ...extra };
}

function messageOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return (err as Error).message;
  }
  return '';
}

describe('method table', () => {
  it('lists exactly the methods of the spec', () => {
    expect([...WORKER_METHODS].sort()).toEqual(
      [
        'worker.heartbeat',
        'worker.spawn',
        'worker.destroy',
        'worker.status',
        'worker.exec',
        'worker.exec_stream',
        'worker.file_write',
        'worker.file_read',
        'worker.file_list',
        'worker.file_delete',
        'worker.file_move',
        'worker.file_chmod',
        'worker.file_stat',
        'worker.file_glob',
        'worker.logs',
        'worker.inventory',
        'worker.renew_lease',
        'worker.shutdown',
      ].sort(),
    );
  });

  it('requires a lease exactly for spawn, destroy and renew_lease', () => {
    expect(WORKER_METHODS.filter(methodNeedsLease).sort()).toEqual(['worker.destroy', 'worker.renew_lease', 'worker.spawn']);
  });

  it('maps every method to one known scope, and every scope is used', () => {
    expect(scopeOf('worker.heartbeat')).toBe('worker:heartbeat');
    expect(scopeOf('worker.spawn')).toBe('worker:spawn');
    expect(scopeOf('worker.destroy')).toBe('worker:destroy');
    expect(scopeOf('worker.status')).toBe('worker:status');
    expect(scopeOf('worker.exec')).toBe('worker:exec');
    expect(scopeOf('worker.exec_stream')).toBe('worker:exec');
    expect(scopeOf('worker.logs')).toBe('worker:logs');
    expect(scopeOf('worker.inventory')).toBe('worker:status');
    expect(scopeOf('worker.renew_lease')).toBe('worker:lease');
    for (const m of WORKER_METHODS.filter((m) => m.startsWith('worker.file_'))) expect(scopeOf(m)).toBe('worker:files');
    expect(new Set(WORKER_METHODS.map(scopeOf))).toEqual(new Set(WORKER_SCOPES));
  });

  it('requireScope refuses a missing scope with forbidden', () => {
    const claims = { worker_id: 'w1', scopes: ['worker:exec' as const], expires: null };
    expect(() => requireScope(claims, 'worker:exec')).not.toThrow();
    expect(codeOf(() => requireScope(claims, 'worker:destroy'))).toBe('forbidden');
  });
});

describe('parseRequest', () => {
  it.each(WORKER_METHODS)('accepts a valid %s request', (method) => {
    const req = parseRequest(envelope(method, VALID[method]));
    expect(req.method).toBe(method);
    expect(req.params).toEqual(VALID[method]);
    expect(req.lease !== undefined).toBe(METHODS[method].lease);
  });

  it('narrows params by method', () => {
    const req: AnyRpcRequest = parseRequest(envelope('worker.exec', VALID['worker.exec']));
    if (req.method !== 'worker.exec') throw new Error('narrowing');
    expect(req.params.timeout).toBe('30s');
  });

  it('rejects unknown methods', () => {
    expect(codeOf(() => parseRequest(envelope('worker.format_disk', {})))).toBe('bad_request');
    expect(messageOf(() => parseRequest(envelope('toString', {})))).toMatch(/unknown method/);
    expect(codeOf(() => parseRequest(envelope(42 as unknown as string, {})))).toBe('bad_request');
  });

  it.each(['worker.spawn', 'worker.destroy', 'worker.renew_lease'] as const)('rejects %s without a lease', (method) => {
    const env = envelope(method, VALID[method]);
    delete env.lease;
    expect(codeOf(() => parseRequest(env))).toBe('bad_request');
    expect(messageOf(() => parseRequest(env))).toMatch(/lease: required/);
  });

  it('rejects a lease naming another resource with lease_conflict', () => {
    expect(codeOf(() => parseRequest(envelope('worker.destroy', ref, { lease: lease({ resource_id: 'sb-ffffffff' }) })))).toBe('lease_conflict');
    expect(codeOf(() => parseRequest(envelope('worker.renew_lease', { resource_id: 'sb-ffffffff' })))).toBe('lease_conflict');
  });

  it.each([
    ['not an object', 'x'],
    ['array', []],
    ['null', null],
  ])('rejects a request that is %s', (_name, input) => {
    expect(codeOf(() => parseRequest(input))).toBe('bad_request');
  });

  it.each([
    ['missing id', { id: undefined }],
    ['empty id', { id: '' }],
    ['numeric id', { id: 7 }],
    ['bad worker_id', { worker_id: 'has space' }],
    ['unknown envelope field', { extra: 1 }],
    ['malformed lease', { lease: { resource_id: SB, holder_id: 'w1', generation: 0, expires_at: 'tomorrow' } }],
  ])('rejects %s', (_name, extra) => {
    const env = envelope('worker.status', ref, extra);
    if ('id' in extra && extra.id === undefined) delete env.id;
    expect(codeOf(() => parseRequest(env))).toBe('bad_request');
  });

  it.each([
    ['worker.spawn', { ...VALID['worker.spawn'], memory_mb: '512' }, 'params.memory_mb'],
    ['worker.spawn', { ...VALID['worker.spawn'], vcpus: 0 }, 'params.vcpus'],
    ['worker.spawn', { ...VALID['worker.spawn'], sandbox_id: 'nope' }, 'params.sandbox_id'],
    ['worker.exec', { ...VALID['worker.exec'], mode: 'bash' }, 'params.mode'],
    ['worker.exec', { ...VALID['worker.exec'], timeout: '10 minutes' }, 'params.timeout'],
    ['worker.exec', { ...VALID['worker.exec'], timeout: '-1s' }, 'params.timeout'],
    ['worker.exec', { ...VALID['worker.exec'], args: [1] }, 'params.args'],
    ['worker.exec', { ...VALID['worker.exec'], env: { A: 1 } }, 'params.env'],
    ['worker.exec', { ...VALID['worker.exec'], sandboxId: SB }, 'params.sandboxId'],
    ['worker.exec', { ...VALID['worker.exec'], command: 'a\0b' }, 'params.command'],
    ['worker.exec', { ...VALID['worker.exec'], args: ['a\0'] }, 'params.args.0'],
    ['worker.exec', { ...VALID['worker.exec'], env: { A: 'x\0' } }, 'params.env.A'],
    ['worker.exec', { ...VALID['worker.exec'], env: { 'A=B': 'x' } }, 'params.env.A=B'],
    ['worker.spawn', { ...VALID['worker.spawn'], env: { '': 'x' } }, 'params.env'],
    ['worker.file_write', { ...VALID['worker.file_write'], content: 'not base64!' }, 'params.content'],
    ['worker.file_chmod', { ...VALID['worker.file_chmod'], mode: 0o10000 }, 'params.mode'],
    ['worker.file_delete', { ...ref, path: '/a' }, 'params.recursive'],
    ['worker.logs', { ...ref, lines: 0 }, 'params.lines'],
    ['worker.status', { sandbox_id: SB, provider: 'mock' }, 'params.runtime_id'],
    ['worker.heartbeat', { x: 1 }, 'params.x'],
    ['worker.heartbeat', undefined, 'params'],
  ] as const)('%s rejects wrong params (%j) naming %s', (method, params, field) => {
    const fn = () => parseRequest(envelope(method, params));
    expect(codeOf(fn)).toBe('bad_request');
    expect(messageOf(fn)).toContain(field);
  });

  it('reports several problems at once', () => {
    const msg = messageOf(() => parseRequest({ id: '', method: 'worker.spawn', worker_id: 'w1', params: { ...VALID['worker.spawn'], image: 5 } }));
    expect(msg).toContain('id:');
    expect(msg).toContain('lease: required');
    expect(msg).toContain('params.image');
  });

  it('normalises sandbox paths and refuses traversal and NUL bytes', () => {
    const req = parseRequest(envelope('worker.file_move', { ...ref, old_path: '/a//b/./c', new_path: '/d/' }));
    expect(req.params).toMatchObject({ old_path: '/a/b/c', new_path: '/d/' });
    expect(codeOf(() => parseRequest(envelope('worker.file_read', { ...ref, path: '/../../etc/passwd' })))).toBe('bad_request');
    expect(codeOf(() => parseRequest(envelope('worker.file_read', { ...ref, path: 'etc/passwd' })))).toBe('bad_request');
    expect(codeOf(() => parseRequest(envelope('worker.file_write', { ...VALID['worker.file_write'], path: '/a\0b' })))).toBe('bad_request');
  });

  it('refuses a request addressed to another worker when the worker id is given', () => {
    expect(codeOf(() => parseRequest(envelope('worker.status', ref, { worker_id: 'w2' }), { workerId: 'w1' }))).toBe('bad_request');
    expect(parseRequest(envelope('worker.status', ref), { workerId: 'w1' }).worker_id).toBe('w1');
  });

  it('does not alias the input', () => {
    const input = envelope('worker.destroy', { ...ref });
    const req = parseRequest(input);
    (input.params as Record<string, unknown>).sandbox_id = 'sb-ffffffff';
    (input.lease as Record<string, unknown>).generation = 99;
    expect(req.params).toMatchObject({ sandbox_id: SB });
    expect(req.lease?.generation).toBe(3);
  });

  it('requestIdOf recovers the id of a malformed request for its error response', () => {
    expect(requestIdOf({ id: 'abc', method: 'nope' })).toBe('abc');
    expect(requestIdOf('garbage')).toBeNull();
    expect(requestIdOf({ id: 'x'.repeat(200) })).toBeNull();
  });

  it('createRequest output round-trips through parseRequest', () => {
    const req = createRequest('worker.destroy', 'w1', ref, lease());
    expect(req.id).toMatch(/^rpc-/);
    expect(parseRequest(JSON.parse(JSON.stringify(req)))).toEqual(req);
  });
});

describe('parseResponse', () => {
  const req = { id: 'r1', method: 'worker.spawn' as const };

  it('returns a valid result', () => {
    expect(parseResponse(req, okResponse('r1', { sandbox_id: SB, runtime_id: 'rt' }))).toEqual({ sandbox_id: SB, runtime_id: 'rt' });
  });

  it('rethrows the worker error as the same StacyError code', () => {
    let caught: unknown;
    try {
      parseResponse(req, errorResponse('r1', new StacyError('resource_limit', 'full', { retryAfterSeconds: 5 })));
    } catch (err) {
      caught = err;
    }
    expect(isStacyError(caught, 'resource_limit')).toBe(true);
    expect((caught as StacyError).retryAfterSeconds).toBe(5);
    expect((caught as StacyError).message).toBe('full');
  });

  it.each([
    ['not an object', 'x'],
    ['another id', { id: 'r2', result: { sandbox_id: SB, runtime_id: 'rt' } }],
    ['neither result nor error', { id: 'r1' }],
    ['both result and error', { id: 'r1', result: {}, error: { code: 'internal', message: 'x' } }],
    ['a result of the wrong shape', { id: 'r1', result: { runtime_id: 5 } }],
    ['an error of the wrong shape', { id: 'r1', error: 'boom' }],
  ])('a reply with %s is internal', (_name, reply) => {
    expect(codeOf(() => parseResponse(req, reply))).toBe('internal');
  });

  it('validates streamed exec chunks', () => {
    const s = { id: 'r1', method: 'worker.exec_stream' as const };
    expect(parseResponse(s, { id: 'r1', result: { stream: 'stdout', data: Buffer.from('hé').toString('base64') } })).toMatchObject({ stream: 'stdout' });
    expect(parseResponse(s, { id: 'r1', result: { stream: 'exit', data: '', exit_code: 3, duration: '1.5s' } })).toMatchObject({ exit_code: 3 });
    expect(codeOf(() => parseResponse(s, { id: 'r1', result: { stream: 'exit', data: '' } }))).toBe('internal');
  });
});

describe('wire errors', () => {
  it.each(Object.keys(ERROR_STATUS) as ErrorCode[])('%s round-trips', (code) => {
    const back = fromWireError(toWireError(new StacyError(code, `msg ${code}`)));
    expect(back.code).toBe(code);
    expect(back.message).toBe(`msg ${code}`);
    expect(back.status).toBe(ERROR_STATUS[code]);
  });

  it('hides details of unexpected errors', () => {
    expect(toWireError(new Error('EACCES /etc/shadow'))).toEqual({ code: 'internal', message: 'internal worker error' });
    expect(toWireError('thrown string')).toEqual({ code: 'internal', message: 'internal worker error' });
  });

  it('maps an unknown code to internal, keeping the original in the message', () => {
    const e = fromWireError({ code: 'martian', message: 'x' });
    expect(e.code).toBe('internal');
    expect(e.message).toContain('martian');
  });

  it('carries retry-after', () => {
    expect(toWireError(new StacyError('resource_limit', 'x', { retryAfterSeconds: 3 }))).toEqual({ code: 'resource_limit', message: 'x', retry_after_seconds: 3 });
  });
});

describe('LeaseFence', () => {
  const fence = () => new LeaseFence('w1', clock);

  it('admits the holder with an unexpired lease and records its generation', () => {
    const f = fence();
    f.admit(lease({ generation: 4 }), SB);
    expect(f.highestGeneration(SB)).toBe(4);
    f.admit(lease({ generation: 4 }), SB);
    f.admit(lease({ generation: 7 }), SB);
    expect(f.highestGeneration(SB)).toBe(7);
  });

  it('rejects a lease held by another worker', () => {
    expect(codeOf(() => fence().admit(lease({ holder_id: 'w2' }), SB))).toBe('lease_conflict');
  });

  it('rejects an expired lease, judged by the injected clock', () => {
    const c = new ManualClock();
    const f = new LeaseFence('w1', c);
    const l = { resource_id: SB, holder_id: 'w1', generation: 1, expires_at: toIso(c.now() + 1000) };
    f.admit(l, SB);
    c.advance(1000);
    expect(codeOf(() => f.admit(l, SB))).toBe('lease_conflict');
  });

  it('rejects a generation older than one already seen, per resource', () => {
    const f = fence();
    f.admit(lease({ generation: 5 }), SB);
    expect(codeOf(() => f.admit(lease({ generation: 4 }), SB))).toBe('lease_conflict');
    expect(messageOf(() => f.admit(lease({ generation: 4 }), SB))).toMatch(/older/);
    // Another resource has its own history.
    f.admit(lease({ resource_id: 'sb-00000001', generation: 1 }), 'sb-00000001');
  });

  it('a refused lease records nothing', () => {
    const f = fence();
    expect(codeOf(() => f.admit(lease({ generation: 9, holder_id: 'w2' }), SB))).toBe('lease_conflict');
    expect(f.highestGeneration(SB)).toBeUndefined();
    f.admit(lease({ generation: 2 }), SB);
  });

  it('rejects a missing lease and a lease for another resource', () => {
    expect(codeOf(() => fence().admit(undefined, SB))).toBe('lease_conflict');
    expect(codeOf(() => fence().admit(lease({ resource_id: 'sb-ffffffff' }), SB))).toBe('lease_conflict');
  });

  it('works on a store lease converted with leaseToWire', () => {
    const f = fence();
    const wire = leaseToWire({ resourceId: SB, holderId: 'w1', generation: 2, expiresAt: clock.now() + 5000 });
    expect(wire.expires_at).toBe(toIso(clock.now() + 5000));
    f.admit(wire, SB);
    expect(parseRequest(envelope('worker.destroy', ref, { lease: wire })).lease).toEqual(wire);
  });
});
