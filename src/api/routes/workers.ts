import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { StacyError } from '../../core/errors.js';
import { type ApiContext, callerOf } from '../context.js';
import {
  ErrorBody,
  HeartbeatBody,
  type HeartbeatBodyT,
  LeaseWire,
  QuotaBody,
  type QuotaBodyT,
  QuotaUsageWire,
  QuotaWire,
  StatusBody,
  WorkerWire,
  durationIn,
  heartbeatIn,
  leaseOut,
  quotaIn,
  quotaOut,
  quotaUsageOut,
  workerOut,
} from '../wire.js';

const errors = { '4xx': ErrorBody, '5xx': ErrorBody };
const WorkerParams = Type.Object({ workerID: Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9._:-]+$' }) });
const OwnerParams = Type.Object({ ownerID: Type.String({ minLength: 1, maxLength: 128, pattern: '^[^\\s/\\\\]+$' }) });

export function workerRoutes(app: FastifyInstance, ctx: ApiContext): void {
  const { service } = ctx;

  app.get('/workers', { schema: { tags: ['workers'], response: { 200: Type.Array(WorkerWire), ...errors } } }, async () =>
    (await service.listWorkers()).map(workerOut),
  );
  app.get<{ Params: { workerID: string } }>(
    '/workers/:workerID',
    { schema: { tags: ['workers'], params: WorkerParams, response: { 200: WorkerWire, ...errors } } },
    async (req) => workerOut(await service.getWorker(req.params.workerID)),
  );

  app.post<{ Params: { workerID: string }; Body: HeartbeatBodyT }>(
    '/admin/workers/:workerID/heartbeat',
    { schema: { tags: ['workers'], params: WorkerParams, body: HeartbeatBody, response: { 200: WorkerWire, ...errors } } },
    async (req) => workerOut(await service.heartbeat(req.params.workerID, heartbeatIn(req.body))),
  );
  app.delete<{ Params: { workerID: string } }>(
    '/admin/workers/:workerID',
    { schema: { tags: ['workers'], params: WorkerParams, response: { 200: StatusBody, ...errors } } },
    async (req) => {
      await service.deleteWorker(req.params.workerID);
      return { status: 'deleted' };
    },
  );

  app.post<{ Params: { workerID: string } }>(
    '/admin/workers/:workerID/drain',
    { schema: { tags: ['workers'], params: WorkerParams, response: { 200: WorkerWire, ...errors } } },
    async (req) => workerOut(await service.drainWorker(req.params.workerID)),
  );

  // Worker-credential routes: the auth hook has already verified the credential and its id.
  app.post<{ Params: { workerID: string }; Body: HeartbeatBodyT }>(
    '/worker/:workerID/heartbeat',
    { schema: { tags: ['workers'], params: WorkerParams, body: HeartbeatBody, response: { 200: WorkerWire, ...errors } } },
    async (req) => {
      requireScope(req.worker?.scopes, 'worker:heartbeat');
      return workerOut(await service.heartbeat(req.params.workerID, heartbeatIn(req.body)));
    },
  );
  app.post<{ Params: { workerID: string; resourceID: string }; Body: { ttl: string } }>(
    '/worker/:workerID/leases/:resourceID/renew',
    {
      schema: {
        tags: ['workers'],
        params: Type.Object({ workerID: WorkerParams.properties.workerID, resourceID: Type.String({ minLength: 1, maxLength: 256 }) }),
        body: Type.Object({ ttl: Type.String() }),
        response: { 200: Type.Object({ lease: LeaseWire }), ...errors },
      },
    },
    async (req) => {
      requireScope(req.worker?.scopes, 'worker:lease');
      const ttl = durationIn(req.body.ttl, 'ttl') as number;
      return { lease: leaseOut(await service.renewLease(req.params.workerID, req.params.resourceID, ttl)) };
    },
  );
}

/**
 * The credential must list `scope`. Static tokens come back from the verifier with every scope;
 * an empty list is a signed token that grants nothing, never a wildcard (the worker RPC gate
 * reads it the same way).
 */
function requireScope(scopes: readonly string[] | undefined, scope: string): void {
  if (scopes === undefined || !scopes.includes(scope)) throw new StacyError('forbidden', `worker credential lacks scope ${scope}`);
}

export function quotaRoutes(app: FastifyInstance, ctx: ApiContext): void {
  const { service } = ctx;
  const Summary = Type.Object({ total: Type.Integer(), items: Type.Array(QuotaUsageWire) });
  for (const prefix of ['', '/admin']) {
    app.get(`${prefix}/quotas`, { schema: { tags: ['quotas'], response: { 200: Type.Array(QuotaWire), ...errors } } }, async () =>
      (await service.listQuotas()).map(quotaOut),
    );
    app.get(`${prefix}/quotas/summary`, { schema: { tags: ['quotas'], response: { 200: Summary, ...errors } } }, async () => {
      const quotas = await service.listQuotas();
      const items = await Promise.all(quotas.map(async (q) => quotaUsageOut(await service.quotaUsage(q.ownerId))));
      return { total: quotas.length, items };
    });
    app.get<{ Params: { ownerID: string } }>(
      `${prefix}/quotas/:ownerID`,
      { schema: { tags: ['quotas'], params: OwnerParams, response: { 200: QuotaWire, ...errors } } },
      async (req) => quotaOut(await service.getQuota(req.params.ownerID)),
    );
    app.put<{ Params: { ownerID: string }; Body: QuotaBodyT }>(
      `${prefix}/quotas/:ownerID`,
      { schema: { tags: ['quotas'], params: OwnerParams, body: QuotaBody, response: { 200: QuotaWire, ...errors } } },
      async (req) => {
        requireAdmin(callerOf(req).isAdmin);
        return quotaOut(await service.putQuota(req.params.ownerID, quotaIn(req.body)));
      },
    );
    app.delete<{ Params: { ownerID: string } }>(
      `${prefix}/quotas/:ownerID`,
      { schema: { tags: ['quotas'], params: OwnerParams, response: { 200: StatusBody, ...errors } } },
      async (req) => {
        requireAdmin(callerOf(req).isAdmin);
        await service.deleteQuota(req.params.ownerID);
        return { status: 'deleted' };
      },
    );
    app.get<{ Params: { ownerID: string } }>(
      `${prefix}/quotas/:ownerID/usage`,
      { schema: { tags: ['quotas'], params: OwnerParams, response: { 200: QuotaUsageWire, ...errors } } },
      async (req) => quotaUsageOut(await service.quotaUsage(req.params.ownerID)),
    );
  }
}

/** Quota changes are an operator action even on the non-/admin alias. */
function requireAdmin(isAdmin: boolean): void {
  if (!isAdmin) throw new StacyError('forbidden', 'changing quotas needs the admin API key');
}
