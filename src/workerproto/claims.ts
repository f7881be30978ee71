/**
 * What an authenticated worker credential may do. Scopes are per RPC method family; every
 * worker route and RPC method names exactly one (see METHODS in methods.ts).
 */
import { StacyError } from '../core/errors.js';

export const WORKER_SCOPES = [
  'worker:heartbeat',
  'worker:spawn',
  'worker:destroy',
  'worker:status',
  'worker:exec',
  'worker:files',
  'worker:logs',
  'worker:lease',
] as const;

export type WorkerScope = (typeof WORKER_SCOPES)[number];

/** The result of authenticating a worker credential. */
export interface WorkerClaims {
  worker_id: string;
  scopes: readonly WorkerScope[];
  /** Epoch milliseconds after which the credential is no longer valid; null for static tokens. */
  expires: number | null;
}

/** Worker ids travel in headers, URLs and lease holder columns; kept in step with config's rule. */
export const WORKER_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** True when `value` is one of WORKER_SCOPES. */
export function isWorkerScope(value: unknown): value is WorkerScope {
  return typeof value === 'string' && (WORKER_SCOPES as readonly string[]).includes(value);
}

/** Throws `forbidden` unless the claims carry `scope`. */
export function requireScope(claims: WorkerClaims, scope: WorkerScope): void {
  if (!claims.scopes.includes(scope)) {
    throw new StacyError('forbidden', `worker credential for ${JSON.stringify(claims.worker_id)} lacks scope ${scope}`);
  }
}
