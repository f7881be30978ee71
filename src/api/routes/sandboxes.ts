import { Readable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { formatDuration } from '../../core/duration.js';
import { isStacyError } from '../../core/errors.js';
import type { ExecCall } from '../../orchestrator/service.js';
import type { ExecEvent } from '../../providers/provider.js';
import { type ApiContext, callerOf } from '../context.js';
import { toErrorResponse } from '../errors.js';
import {
  AdmissionWire,
  ErrorBody,
  ExecBody,
  type ExecBodyT,
  ExecResultWire,
  ExtendBody,
  SandboxWire,
  SpawnBody,
  type SpawnBodyT,
  StatusBody,
  admissionOut,
  durationIn,
  execOut,
  sandboxOut,
  spawnIn,
} from '../wire.js';

const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }) });
const errors = { '4xx': ErrorBody, '5xx': ErrorBody };

/** How long a stream waits for its first event before committing to a 200 with headers. */
const FIRST_EVENT_GRACE_MS = 100;

export function sandboxRoutes(app: FastifyInstance, ctx: ApiContext): void {
  const { service } = ctx;
  const preview = ctx.config.server.previewDomain;

  app.post<{ Body: SpawnBodyT }>(
    '/sandboxes',
    { schema: { tags: ['sandboxes'], body: SpawnBody, response: { 201: SandboxWire, ...errors } } },
    async (req, reply) => {
      const sb = await service.spawn(spawnIn(req.body), callerOf(req));
      return reply.code(201).send(sandboxOut(sb, preview));
    },
  );

  app.post<{ Body: SpawnBodyT }>(
    '/sandboxes/admission',
    { schema: { tags: ['sandboxes'], body: SpawnBody, response: { 200: AdmissionWire, ...errors } } },
    async (req) => admissionOut(await service.admission(spawnIn(req.body), callerOf(req))),
  );

  app.get('/sandboxes', { schema: { tags: ['sandboxes'], response: { 200: Type.Array(SandboxWire), ...errors } } }, async (req) =>
    (await service.list(callerOf(req))).map((s) => sandboxOut(s, preview)),
  );

  app.delete(
    '/sandboxes',
    { schema: { tags: ['sandboxes'], response: { 200: Type.Object({ pruned: Type.Integer() }), ...errors } } },
    async () => ({ pruned: await service.prune() }),
  );

  app.get<{ Params: { id: string } }>(
    '/sandboxes/:id',
    { schema: { tags: ['sandboxes'], params: IdParams, response: { 200: SandboxWire, ...errors } } },
    async (req) => sandboxOut(await service.get(req.params.id, callerOf(req)), preview),
  );

  app.delete<{ Params: { id: string } }>(
    '/sandboxes/:id',
    { schema: { tags: ['sandboxes'], params: IdParams, response: { 200: StatusBody, ...errors } } },
    async (req) => {
      await service.destroy(req.params.id, callerOf(req));
      return { status: 'destroyed' };
    },
  );

  app.post<{ Params: { id: string }; Body: { ttl: string } }>(
    '/sandboxes/:id/extend',
    { schema: { tags: ['sandboxes'], params: IdParams, body: ExtendBody, response: { 200: SandboxWire, ...errors } } },
    async (req) => {
      const ttl = durationIn(req.body.ttl, 'ttl') as number;
      return sandboxOut(await service.extend(req.params.id, ttl, callerOf(req)), preview);
    },
  );

  app.get<{ Params: { id: string }; Querystring: { lines?: number } }>(
    '/sandboxes/:id/logs',
    {
      schema: {
        tags: ['sandboxes'],
        params: IdParams,
        querystring: Type.Object({ lines: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000 })) }),
        response: { 200: Type.Array(Type.String()), ...errors },
      },
    },
    async (req) => service.logs(req.params.id, req.query.lines ?? 100, callerOf(req)),
  );

  app.post<{ Params: { id: string }; Body: ExecBodyT }>(
    '/sandboxes/:id/exec',
    { schema: { tags: ['exec'], params: IdParams, body: ExecBody, response: { 200: ExecResultWire, ...errors } } },
    async (req, reply) => {
      const call = execCallIn(req.body);
      if (req.body.stream === true) return streamExec(req, reply, ctx, call);
      return execOut(await service.exec(req.params.id, call, callerOf(req)));
    },
  );
}

function execCallIn(body: ExecBodyT): ExecCall {
  const call: ExecCall = {
    command: body.command,
    args: body.args ?? [],
    mode: body.mode ?? 'shell',
    env: body.env ?? {},
  };
  if (body.workdir !== undefined) call.workdir = body.workdir;
  const timeout = durationIn(body.timeout, 'timeout');
  if (timeout !== undefined) call.timeoutMs = timeout;
  return call;
}

/** One UTF-8 decoder per output stream of one exec. */
type StreamDecoders = Record<'stdout' | 'stderr', StringDecoder>;

/**
 * The NDJSON for one event ('' when a chunk holds only part of a character). `data` is text on
 * the wire, so each stream is decoded across chunks: a multi-byte character split between two
 * chunks arrives whole in the later line instead of as two replacement characters. Bytes of an
 * incomplete character left when the command exits are flushed before the exit line.
 */
function eventLines(ev: ExecEvent, decoders: StreamDecoders): string {
  if (ev.type === 'exit') {
    let out = '';
    for (const stream of ['stdout', 'stderr'] as const) {
      const rest = decoders[stream].end();
      if (rest !== '') out += `${JSON.stringify({ stream, data: rest })}\n`;
    }
    return `${out}${JSON.stringify({ stream: 'exit', data: '', exit_code: ev.exitCode, duration: formatDuration(ev.durationMs) })}\n`;
  }
  const data = decoders[ev.type].write(ev.data);
  return data === '' ? '' : `${JSON.stringify({ stream: ev.type, data })}\n`;
}

function errorLine(err: unknown): string {
  const { body } = toErrorResponse(err);
  return `${JSON.stringify({ stream: 'error', data: body.message, code: body.code })}\n`;
}

/**
 * NDJSON exec. Errors that happen before any output (unknown sandbox, bad timeout) still get
 * their real status; once the 200 is committed a failure becomes a final `error` line. A client
 * that disconnects aborts the command.
 */
async function streamExec(req: FastifyRequest<{ Params: { id: string } }>, reply: FastifyReply, ctx: ApiContext, call: ExecCall): Promise<FastifyReply> {
  const abort = new AbortController();
  ctx.streams.add(abort);
  // Listened for from the start: a client may be gone before the first event, and then the
  // command must stop rather than run to its timeout.
  reply.raw.on('close', () => {
    if (!reply.raw.writableFinished) abort.abort();
  });
  const iterator = ctx.service.execStream(req.params.id, call, callerOf(req), abort.signal)[Symbol.asyncIterator]();
  const first = iterator.next();
  let timer: NodeJS.Timeout | undefined;
  const grace = new Promise<'grace'>((resolve) => {
    timer = setTimeout(() => resolve('grace'), FIRST_EVENT_GRACE_MS);
  });
  let early: IteratorResult<ExecEvent> | 'grace';
  try {
    early = await Promise.race([first, grace]);
  } catch (err) {
    ctx.streams.delete(abort);
    throw err;
  } finally {
    clearTimeout(timer);
  }
  // A failure before the grace period ended propagated above and is rendered by the error mapper.

  let started = false;
  async function* lines(): AsyncGenerator<string> {
    started = true;
    const decoders: StreamDecoders = { stdout: new StringDecoder('utf8'), stderr: new StringDecoder('utf8') };
    try {
      let next = early === 'grace' ? await first : early;
      while (!next.done) {
        const text = eventLines(next.value, decoders);
        if (text !== '') yield text;
        if (next.value.type === 'exit') return;
        next = await iterator.next();
      }
    } catch (err) {
      if (!isStacyError(err) && !abort.signal.aborted) req.log.error({ err }, 'exec stream failed');
      // A shutdown abort still tells the client why its stream ends.
      const reason: unknown = abort.signal.aborted ? abort.signal.reason : err;
      if (!abort.signal.aborted || isStacyError(reason)) yield errorLine(reason);
    } finally {
      ctx.streams.delete(abort);
      await iterator.return?.();
    }
  }

  const body = Readable.from(lines(), { objectMode: false });
  // A body destroyed before its first read (the client left during the grace period) never
  // runs lines(), so its clean-up happens here instead.
  body.once('close', () => {
    if (started) return;
    abort.abort();
    ctx.streams.delete(abort);
    void iterator.return?.();
  });
  // During shutdown the connection is not kept alive for another request: close waits on it.
  const socket = reply.raw.socket;
  reply.raw.on('finish', () => {
    // Injected requests have no real socket to close.
    if (ctx.closing && typeof socket?.destroySoon === 'function') socket.destroySoon();
  });
  return reply.code(200).header('content-type', 'application/x-ndjson').header('cache-control', 'no-store').header('x-accel-buffering', 'no').send(body);
}
