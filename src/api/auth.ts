/**
 * Authentication and scopes (spec/api.md "Auth headers"). Three identities that never cross:
 * user keys (regular or admin) open the public and admin surface, worker credentials open only
 * `/worker/*`. Key comparison is constant-time.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { StacyError, badRequest } from '../core/errors.js';
import type { Config } from '../config/types.js';
import type { Caller } from '../orchestrator/service.js';

/** Verifies worker credentials; the composition root adapts the configured verifier to this. */
export interface WorkerAuth {
  /**
   * Resolves with the scopes the credential grants when `token` is a valid credential for
   * `workerId` (every scope for a static token; an empty list grants nothing); throws
   * StacyError `unauthorized` or `forbidden` otherwise.
   */
  authenticate(workerId: string, token: string): Promise<{ workerId: string; scopes: string[] }>;
}

export type RouteScope = 'public' | 'user' | 'admin' | 'worker';

/** Which identity a path needs; `path` is relative to /api/v1. */
export function scopeOf(path: string): RouteScope {
  if (path.startsWith('/worker/') || path === '/worker') return 'worker';
  if (path.startsWith('/admin/') || path === '/admin') return 'admin';
  if (path === '/live' || path === '/health' || path === '/ready' || path === '/openapi.json') return 'public';
  return 'user';
}

/** Constant-time string equality (hashing first so lengths do not leak either). */
export function safeEqual(a: string, b: string): boolean {
  const ha = createHash('sha256').update(a).digest();
  const hb = createHash('sha256').update(b).digest();
  return timingSafeEqual(ha, hb) && a.length === b.length;
}

function header(req: FastifyRequest, name: string): string | undefined {
  const v = req.headers[name];
  if (Array.isArray(v)) return v[0];
  return v;
}

// eslint-disable-next-line no-control-regex
const BAD_USER_ID = /[\s\x00-\x1f\x7f/\\]/;

/** X-User-ID: trimmed, ≤128 chars, no whitespace, control characters or path separators. */
export function parseUserId(raw: string | undefined): string | null {
  if (raw === undefined) return null;
  const v = raw.trim();
  if (v === '') return null;
  if (v.length > 128) throw badRequest('X-User-ID: longer than 128 characters');
  if (BAD_USER_ID.test(v)) throw badRequest('X-User-ID: must not contain whitespace, control characters or path separators');
  return v;
}

/** The worker credential a request carries, if any. */
export function workerCredential(req: FastifyRequest): { workerId: string | undefined; token: string | undefined } {
  let token = header(req, 'x-worker-token');
  const authz = header(req, 'authorization');
  if (token === undefined && authz !== undefined && /^bearer\s+/i.test(authz)) token = authz.replace(/^bearer\s+/i, '').trim();
  return { workerId: header(req, 'x-worker-id'), token };
}

/** The authenticated worker on a /worker/* request. */
export interface WorkerIdentity {
  workerId: string;
  scopes: string[];
}

/**
 * Establishes who is calling a user/admin/public route, or throws 401/403/400.
 * Worker routes are handled by `authenticateWorker`.
 */
export function authenticateUser(req: FastifyRequest, scope: Exclude<RouteScope, 'worker'>, auth: Config['auth']): Caller {
  const userId = parseUserId(header(req, 'x-user-id'));
  const requestId = String(req.id);
  if (header(req, 'x-worker-token') !== undefined || header(req, 'x-worker-id') !== undefined) {
    throw new StacyError('forbidden', 'worker credentials only open /worker/* routes');
  }
  if (scope === 'public') return { userId, isAdmin: false, requestId };
  if (!auth.enabled) return { userId, isAdmin: true, requestId };

  const apiKey = header(req, 'x-api-key');
  const adminHeader = header(req, 'x-admin-api-key');
  const adminConfigured = auth.adminApiKey !== '';
  const isAdminKey =
    adminConfigured &&
    ((adminHeader !== undefined && safeEqual(adminHeader, auth.adminApiKey)) || (apiKey !== undefined && safeEqual(apiKey, auth.adminApiKey)));
  if (adminHeader !== undefined && !isAdminKey) throw new StacyError('unauthorized', 'invalid admin API key');
  const isUserKey = !isAdminKey && apiKey !== undefined && auth.apiKey !== '' && safeEqual(apiKey, auth.apiKey);
  if (!isAdminKey && !isUserKey) {
    throw new StacyError('unauthorized', apiKey === undefined ? 'missing API key (X-API-Key)' : 'invalid API key');
  }
  if (scope === 'admin' && !isAdminKey) {
    if (adminConfigured || !auth.adminFallbackEnabled) throw new StacyError('forbidden', 'this route needs the admin API key');
    return { userId, isAdmin: true, requestId };
  }
  return { userId, isAdmin: isAdminKey, requestId };
}

/**
 * Verifies the worker credential on a /worker/{id}/… route; the id must match the path and must
 * not be `ownWorkerId`, the id this server registers itself under: that record and the leases
 * it holds belong to this process, and a remote worker writing them (typically one started
 * without an id of its own, so with the same default) would overwrite the server's own
 * registration and extend its leases.
 */
export async function authenticateWorker(
  req: FastifyRequest,
  pathWorkerId: string | undefined,
  workerAuth: WorkerAuth | undefined,
  ownWorkerId?: string,
): Promise<WorkerIdentity> {
  const { workerId, token } = workerCredential(req);
  if (workerId === undefined || token === undefined || token === '') {
    throw new StacyError('unauthorized', 'worker routes need X-Worker-ID and X-Worker-Token (or Authorization: Bearer)');
  }
  if (workerAuth === undefined) throw new StacyError('unauthorized', 'no worker credentials are configured on this server');
  const identity = await workerAuth.authenticate(workerId, token);
  if (ownWorkerId !== undefined && identity.workerId === ownWorkerId) {
    throw new StacyError('forbidden', `worker id ${JSON.stringify(ownWorkerId)} is this server's own worker; a remote worker needs an id of its own`);
  }
  if (pathWorkerId !== undefined && identity.workerId !== pathWorkerId) {
    throw new StacyError('forbidden', `credential for worker ${JSON.stringify(identity.workerId)} cannot act as ${JSON.stringify(pathWorkerId)}`);
  }
  return identity;
}
