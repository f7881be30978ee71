import type { FastifyRequest } from 'fastify';
import type { Config } from '../config/types.js';
import type { Caller, SandboxService } from '../orchestrator/service.js';
import { StacyError } from '../core/errors.js';
import type { WorkerAuth, WorkerIdentity } from './auth.js';

/** What every route module receives. */
export interface ApiContext {
  service: SandboxService;
  config: Config;
  workerAuth: WorkerAuth | undefined;
  startedAt: number;
  /** Running exec streams, aborted when the server shuts down so close() never waits on them. */
  streams: Set<AbortController>;
  /** Set once shutdown begins. */
  closing: boolean;
}

declare module 'fastify' {
  interface FastifyRequest {
    caller: Caller | null;
    worker: WorkerIdentity | null;
  }
}

/** The caller the auth hook established; routes outside the user scopes never call this. */
export function callerOf(req: FastifyRequest): Caller {
  if (req.caller === null) throw new StacyError('internal', 'request reached a handler without an established caller');
  return req.caller;
}

export const idParams = {
  type: 'object',
  properties: { id: { type: 'string', minLength: 1, maxLength: 128 } },
  required: ['id'],
} as const;
