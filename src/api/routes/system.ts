import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { formatDuration } from '../../core/duration.js';
import { toIso } from '../../core/clock.js';
import { VERSION } from '../../core/version.js';
import type { StacyEvent } from '../../orchestrator/service.js';
import type { ApiContext } from '../context.js';
import {
  DiagnosticsWire,
  ErrorBody,
  PoolStatusWire,
  ProviderDetailWire,
  ProviderSummaryWire,
  diagnosticsOut,
  poolStatusOut,
  providerDetailOut,
  providerSummaryOut,
  snakeKeys,
} from '../wire.js';

const errors = { '4xx': ErrorBody, '5xx': ErrorBody };
const Liveness = Type.Object({ status: Type.String(), version: Type.String(), uptime: Type.String() });
const FreeObject = Type.Record(Type.String(), Type.Unknown());

/** SSE keep-alive comment interval, so proxies do not cut idle event streams. */
const SSE_KEEPALIVE_MS = 15_000;

export function systemRoutes(app: FastifyInstance, ctx: ApiContext): void {
  const { service } = ctx;
  const uptime = () => formatDuration(Date.now() - ctx.startedAt);

  app.get('/live', { schema: { tags: ['system'], response: { 200: Liveness } } }, async () => ({ status: 'alive', version: VERSION, uptime: uptime() }));
  app.get('/health', { schema: { tags: ['system'], response: { 200: Liveness } } }, async () => ({ status: 'ok', version: VERSION, uptime: uptime() }));

  app.get(
    '/ready',
    {
      schema: {
        tags: ['system'],
        response: {
          200: Type.Object({ status: Type.String(), store: Type.Boolean(), providers: Type.Record(Type.String(), Type.Boolean()) }),
          503: Type.Object({
            code: Type.String(),
            message: Type.String(),
            status: Type.String(),
            store: Type.Boolean(),
            providers: Type.Record(Type.String(), Type.Boolean()),
          }),
        },
      },
    },
    async (_req, reply) => {
      const r = await service.readiness();
      if (r.ready) return { status: 'ready', store: r.store, providers: r.providers };
      const message = r.store ? 'no provider is healthy' : 'the store is unreachable';
      return reply.code(503).send({ code: 'unavailable', message, status: 'not_ready', store: r.store, providers: r.providers });
    },
  );

  const diagnostics = async () => diagnosticsOut(await service.diagnostics());
  const metrics = async () => snakeKeys(await service.metrics()) as Record<string, unknown>;
  const prometheus = async (_req: FastifyRequest, reply: FastifyReply) => {
    const { contentType, body } = await service.prometheus();
    return reply.type(contentType).send(body);
  };
  for (const prefix of ['', '/admin']) {
    app.get(`${prefix}/diagnostics`, { schema: { tags: ['system'], response: { 200: DiagnosticsWire, ...errors } } }, diagnostics);
    app.get(`${prefix}/metrics`, { schema: { tags: ['system'], response: { 200: FreeObject, ...errors } } }, metrics);
    app.get(`${prefix}/metrics/prometheus`, { schema: { tags: ['system'], response: errors } }, prometheus);
    app.get(`${prefix}/pool/status`, { schema: { tags: ['system'], response: { 200: PoolStatusWire, ...errors } } }, async () => poolStatusOut(await service.poolStatus()));
  }

  // Open event streams never go idle, so they are ended before the server waits for connections.
  const openStreams = new Set<() => void>();
  app.addHook('preClose', async () => {
    for (const end of [...openStreams]) end();
  });

  app.get('/events', { schema: { tags: ['system'] } }, (req, reply) => {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
      'x-request-id': String(req.id),
    });
    res.write(': connected\n\n');
    const send = (ev: StacyEvent) => {
      const payload: Record<string, unknown> = { id: ev.id, type: ev.type, time: toIso(ev.time), data: ev.data };
      if (ev.sandboxId !== undefined) payload.sandbox_id = ev.sandboxId;
      if (ev.workerId !== undefined) payload.worker_id = ev.workerId;
      res.write(`id: ${ev.id}\nevent: ${ev.type}\ndata: ${JSON.stringify(payload)}\n\n`);
    };
    const unsubscribe = service.subscribe(send);
    const keepalive = setInterval(() => res.write(': keep-alive\n\n'), SSE_KEEPALIVE_MS);
    keepalive.unref();
    const stop = () => {
      clearInterval(keepalive);
      unsubscribe();
      openStreams.delete(end);
    };
    const end = () => {
      stop();
      res.end();
    };
    openStreams.add(end);
    res.on('close', stop);
  });
}

export function providerRoutes(app: FastifyInstance, ctx: ApiContext): void {
  const { service } = ctx;
  const NameParams = Type.Object({ name: Type.String({ minLength: 1, maxLength: 64 }) });
  for (const prefix of ['', '/admin']) {
    app.get(`${prefix}/providers`, { schema: { tags: ['providers'], response: { 200: Type.Array(ProviderSummaryWire), ...errors } } }, async () =>
      (await service.listProviders()).map(providerSummaryOut),
    );
    app.get<{ Params: { name: string } }>(
      `${prefix}/providers/:name`,
      { schema: { tags: ['providers'], params: NameParams, response: { 200: ProviderDetailWire, ...errors } } },
      async (req) => providerDetailOut(await service.getProvider(req.params.name)),
    );
    app.post(
      `${prefix}/providers/test`,
      { schema: { tags: ['providers'], response: { 200: Type.Record(Type.String(), Type.Boolean()), ...errors } } },
      async () => service.testProviders(),
    );
  }
}
