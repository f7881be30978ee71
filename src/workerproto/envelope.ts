/**
 * Request/response envelopes of the worker RPC and their validation. A worker runs every
 * incoming request through `parseRequest` before acting on it; the control plane runs every
 * reply through `parseResponse`. Both are transport-neutral: they take decoded JSON values.
 */
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import type { TSchema } from '@sinclair/typebox';
import { StacyError, badRequest } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { normalizeSandboxPath } from '../core/paths.js';
import { toIso } from '../core/clock.js';
import type { LeaseRecord } from '../core/types.js';
import { WORKER_ID_PATTERN } from './claims.js';
import { METHODS, WireLeaseSchema, isWorkerMethod, leasedResourceOf, type ParamsOf, type ResultOf, type WireLease, type WorkerMethod } from './methods.js';
import { fromWireError, toWireError, type WireError } from './wire-errors.js';

export interface RpcRequest<M extends WorkerMethod = WorkerMethod> {
  id: string;
  method: M;
  /** The worker the request is addressed to. */
  worker_id: string;
  lease?: WireLease;
  params: ParamsOf<M>;
}

/** A request of any method; switching on `method` narrows `params`. */
export type AnyRpcRequest = { [M in WorkerMethod]: RpcRequest<M> }[WorkerMethod];

/** `id` is null only when the request was too malformed to carry one. */
export type RpcResponse<M extends WorkerMethod = WorkerMethod> =
  | { id: string | null; result: ResultOf<M>; error?: undefined }
  | { id: string | null; error: WireError; result?: undefined };

const MAX_REQUEST_ID = 128;
const ENVELOPE_KEYS = new Set(['id', 'method', 'worker_id', 'lease', 'params']);
const PATH_PARAMS = ['path', 'old_path', 'new_path'] as const;

const compiled = new Map<TSchema, TypeCheck<TSchema>>();
function checkerOf(schema: TSchema): TypeCheck<TSchema> {
  let c = compiled.get(schema);
  if (c === undefined) {
    c = TypeCompiler.Compile(schema);
    compiled.set(schema, c);
  }
  return c;
}

/** Lists every schema violation as `prefix.path: message`. */
function violations(schema: TSchema, value: unknown, prefix: string): string[] {
  const c = checkerOf(schema);
  if (c.Check(value)) return [];
  const out: string[] = [];
  for (const e of c.Errors(value)) {
    const line = `${prefix}${e.path.replace(/\//g, '.')}: ${e.message}`;
    if (!out.includes(line)) out.push(line);
    if (out.length >= 10) break;
  }
  return out;
}

const isRecord = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** The request id of a possibly malformed request, for echoing in its error response. */
export function requestIdOf(input: unknown): string | null {
  return isRecord(input) && typeof input.id === 'string' && input.id.length > 0 && input.id.length <= MAX_REQUEST_ID ? input.id : null;
}

export interface ParseRequestOptions {
  /** When set, a request addressed to another worker is refused. */
  workerId?: string;
}

/**
 * Validates a decoded request: known method, envelope and params types, a lease where the
 * method requires one and naming the resource the call acts on, sandbox paths normalised.
 * Throws `bad_request` for malformed input, `lease_conflict` for a lease of another resource.
 */
export function parseRequest(input: unknown, options: ParseRequestOptions = {}): AnyRpcRequest {
  if (!isRecord(input)) throw badRequest('request: expected a JSON object');
  const problems: string[] = [];
  for (const key of Object.keys(input)) if (!ENVELOPE_KEYS.has(key)) problems.push(`${key}: unknown envelope field`);
  if (requestIdOf(input) === null) problems.push(`id: expected a non-empty string of at most ${MAX_REQUEST_ID} characters`);
  if (typeof input.worker_id !== 'string' || !WORKER_ID_PATTERN.test(input.worker_id)) problems.push('worker_id: expected a worker id');
  const method = input.method;
  if (!isWorkerMethod(method)) {
    problems.push(`method: unknown method ${typeof method === 'string' ? JSON.stringify(method) : String(method)}`);
    throw badRequest(problems.join('; '));
  }
  const spec = METHODS[method];
  if (input.lease === undefined) {
    if (spec.lease) problems.push(`lease: required for ${method}`);
  } else {
    problems.push(...violations(WireLeaseSchema, input.lease, 'lease'));
  }
  problems.push(...violations(spec.params, input.params, 'params'));
  if (problems.length > 0) throw badRequest(problems.join('; '));

  if (options.workerId !== undefined && input.worker_id !== options.workerId) {
    throw badRequest(`worker_id: request is addressed to ${JSON.stringify(input.worker_id)}, this worker is ${JSON.stringify(options.workerId)}`);
  }
  const params = { ...(input.params as Record<string, unknown>) };
  for (const key of PATH_PARAMS) {
    if (typeof params[key] === 'string') params[key] = normalizeSandboxPath(params[key], `params.${key}`);
  }
  const lease = input.lease as WireLease | undefined;
  const resource = leasedResourceOf(method, params);
  if (lease !== undefined && resource !== undefined && lease.resource_id !== resource) {
    throw new StacyError('lease_conflict', `lease is for ${JSON.stringify(lease.resource_id)}, not ${JSON.stringify(resource)}`);
  }
  const request = { id: input.id as string, method, worker_id: input.worker_id as string, params } as AnyRpcRequest;
  if (lease !== undefined) request.lease = { ...lease };
  return request;
}

/** Builds a request with a fresh id; the caller supplies a lease for lease-required methods. */
export function createRequest<M extends WorkerMethod>(
  method: M,
  workerId: string,
  params: ParamsOf<M>,
  lease?: WireLease,
): RpcRequest<M> {
  const request: RpcRequest<M> = { id: newId('rpc'), method, worker_id: workerId, params };
  if (lease !== undefined) request.lease = lease;
  return request;
}

/** A successful response. */
export function okResponse<M extends WorkerMethod>(id: string | null, result: ResultOf<M>): RpcResponse<M> {
  return { id, result };
}

/** An error response; anything that is not a StacyError is reported as `internal`. */
export function errorResponse(id: string | null, err: unknown): RpcResponse<never> {
  return { id, error: toWireError(err) };
}

/**
 * Checks a worker's reply to `request` and returns its result, or throws the StacyError the
 * worker reported. A reply that does not match the protocol is `internal`: the worker is
 * broken or speaks another version, which retrying will not fix.
 */
export function parseResponse<M extends WorkerMethod>(request: Pick<RpcRequest<M>, 'id' | 'method'>, input: unknown): ResultOf<M> {
  const malformed = (why: string) => new StacyError('internal', `malformed response to ${request.method} ${request.id}: ${why}`);
  if (!isRecord(input)) throw malformed('expected a JSON object');
  if (input.id !== request.id) throw malformed(`id ${JSON.stringify(input.id)} does not match the request`);
  const hasResult = input.result !== undefined;
  const hasError = input.error !== undefined;
  if (hasResult === hasError) throw malformed('expected exactly one of result and error');
  if (hasError) {
    const e = input.error;
    if (!isRecord(e) || typeof e.code !== 'string' || typeof e.message !== 'string') throw malformed('error must be {code, message}');
    const retry = e.retry_after_seconds;
    throw fromWireError({
      code: e.code,
      message: e.message,
      ...(typeof retry === 'number' && Number.isFinite(retry) && retry >= 0 ? { retry_after_seconds: retry } : {}),
    });
  }
  const problems = violations(METHODS[request.method].result, input.result, 'result');
  if (problems.length > 0) throw malformed(problems.join('; '));
  return input.result as ResultOf<M>;
}

/** The wire form of a store lease, as the control plane presents it. */
export function leaseToWire(lease: Pick<LeaseRecord, 'resourceId' | 'holderId' | 'generation' | 'expiresAt'>): WireLease {
  return { resource_id: lease.resourceId, holder_id: lease.holderId, generation: lease.generation, expires_at: toIso(lease.expiresAt) };
}
