/**
 * The worker's HTTP transport for the RPC contract: `POST /rpc` carrying workerproto envelopes.
 *
 * Plain node:http(s) rather than Fastify: the route is one endpoint whose body is validated by
 * workerproto's own schemas and gate, so a framework would add per-request work (hooks, its
 * own validation and serializer) to a hop whose cost is budgeted in single milliseconds, and
 * the streaming path needs direct control of writes, `drain` and socket close anyway.
 *
 * Every request goes through WorkerRpcGate (credential, worker id, envelope, scope, lease fence)
 * before WorkerNode touches a provider. Errors are sent as error envelopes with the HTTP status
 * of their catalog code. `worker.exec_stream` answers 200 with NDJSON: one response envelope per
 * output chunk, flushed as produced, the `exit` chunk last; a write the socket cannot take waits
 * for `drain`, and a client that disconnects aborts the command. While a command is silent an
 * empty stdout chunk is sent every few seconds, so the client can tell a quiet command from a
 * dead worker without a limit on how long a command may stay quiet. `worker.file_read` streams
 * the same way (chunks of the file, then an eof line), so no file is ever held whole in memory.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { pino, type Logger } from 'pino';
import { StacyError, badRequest, httpStatusOf, isStacyError } from '../core/errors.js';
import { systemClock, type Clock } from '../core/clock.js';
import { newId } from '../core/ids.js';
import { LeaseFence, WorkerRpcGate, errorResponse, okResponse, requestIdOf, toWireError, type AnyRpcRequest, type ResultOf, type WorkerAuthenticator } from '../workerproto/index.js';
import type { WorkerNode } from './node.js';

type StreamChunk = ResultOf<'worker.exec_stream'>;

export interface WorkerRpcTlsOptions {
  /** PEM server certificate (chain) and key. */
  cert: string | Buffer;
  key: string | Buffer;
  /** PEM CA bundle that signs client certificates; when set, clients are asked for one. */
  clientCa?: string | Buffer;
  /** With `clientCa`: refuse TLS connections that present no valid client certificate. Default true. */
  requireClientCert?: boolean;
}

export interface WorkerRpcServerOptions {
  node: WorkerNode;
  authenticator: WorkerAuthenticator;
  clock?: Clock;
  tls?: WorkerRpcTlsOptions;
  logger?: Logger;
  /** Largest request body accepted; file writes travel base64 inside it. Default 64 MiB. */
  bodyLimitBytes?: number;
  /** Quiet time after which an exec stream sends an empty chunk. Default 5 s. */
  streamKeepaliveMs?: number;
  /**
   * How long a streamed reply may wait for a client that takes no more data before the
   * connection is dropped (the command is stopped, the file closed). Default 5 min: far beyond
   * any consumer that is merely slow, short of pinning a file or a process for good.
   */
  stalledWriteMs?: number;
  /** The lease fence lease-required calls pass (the daemon's, journalled); default a fresh in-memory one. */
  fence?: LeaseFence;
}

const DEFAULT_BODY_LIMIT = 64 * 1024 * 1024;
const DEFAULT_KEEPALIVE_MS = 5_000;
const DEFAULT_STALLED_WRITE_MS = 5 * 60_000;
const REQUEST_ID = /^[\x21-\x7e]{1,128}$/;

export class WorkerRpcServer {
  private readonly server: Server;
  private readonly gate: WorkerRpcGate;
  private readonly authenticator: WorkerAuthenticator;
  private readonly log: Logger;
  private readonly node: WorkerNode;
  private readonly bodyLimit: number;
  private readonly keepaliveMs: number;
  private readonly stalledWriteMs: number;
  private readonly tls: boolean;
  private boundUrl: string | undefined;

  constructor(options: WorkerRpcServerOptions) {
    this.node = options.node;
    const clock = options.clock ?? systemClock;
    this.authenticator = options.authenticator;
    this.gate = new WorkerRpcGate(options.node.workerId, options.authenticator, options.fence ?? new LeaseFence(options.node.workerId, clock));
    this.log = (options.logger ?? pino({ level: 'silent' })).child({ component: 'worker-rpc', worker_id: options.node.workerId });
    this.bodyLimit = options.bodyLimitBytes ?? DEFAULT_BODY_LIMIT;
    this.keepaliveMs = options.streamKeepaliveMs ?? DEFAULT_KEEPALIVE_MS;
    this.stalledWriteMs = options.stalledWriteMs ?? DEFAULT_STALLED_WRITE_MS;
    const handler = (req: IncomingMessage, res: ServerResponse) => {
      this.handle(req, res).catch((err: unknown) => {
        this.log.error({ err }, 'rpc handler failed');
        if (!res.headersSent) sendJson(res, 500, errorResponse(null, err));
        else res.destroy();
      });
    };
    this.tls = options.tls !== undefined;
    if (options.tls !== undefined) {
      const t = options.tls;
      const verifyClients = t.clientCa !== undefined;
      this.server = createHttpsServer(
        {
          cert: t.cert,
          key: t.key,
          ...(verifyClients ? { ca: t.clientCa, requestCert: true, rejectUnauthorized: t.requireClientCert ?? true } : {}),
        },
        handler,
      );
    } else {
      this.server = createHttpServer(handler);
    }
    // Keep pooled control-plane connections open across heartbeat-spaced calls.
    this.server.keepAliveTimeout = 30_000;
  }

  /** Starts listening; resolves with the base URL (e.g. `http://127.0.0.1:41234`). */
  async listen(port = 0, host = '127.0.0.1'): Promise<string> {
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.off('error', onError);
        resolve();
      });
    });
    const addr = this.server.address() as AddressInfo;
    const h = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
    this.boundUrl = `${this.tls ? 'https' : 'http'}://${h}:${addr.port}`;
    return this.boundUrl;
  }

  /** The base URL once listening. */
  get url(): string | undefined {
    return this.boundUrl;
  }

  /** Stops accepting connections and closes idle ones; in-flight requests finish. */
  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeIdleConnections();
    });
  }

  /** Ends every connection now, including streams in flight (their commands are aborted). */
  closeAllConnections(): void {
    this.server.closeAllConnections();
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const given = single(req.headers['x-request-id']);
    const requestId = given !== undefined && REQUEST_ID.test(given) ? given : newId('req');
    res.setHeader('x-request-id', requestId);
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/rpc') {
      await discard(req);
      sendJson(res, 404, errorResponse(null, new StacyError('not_found', `no route ${req.method ?? ''} ${path ?? ''}; the worker RPC is POST /rpc`)));
      return;
    }
    if (req.method !== 'POST') {
      await discard(req);
      res.setHeader('allow', 'POST');
      sendJson(res, 400, errorResponse(null, badRequest('the worker RPC accepts POST only')));
      return;
    }
    const socket = req.socket as Partial<TLSSocket>;
    if (this.tls && typeof socket.getPeerCertificate === 'function') {
      // With an optional client certificate, one that was presented must still verify.
      const peer = socket.getPeerCertificate();
      if (peer !== null && Object.keys(peer).length > 0 && socket.authorized !== true) {
        await discard(req);
        sendJson(res, 401, errorResponse(null, new StacyError('unauthorized', `client certificate refused: ${String(socket.authorizationError ?? 'not trusted')}`)));
        return;
      }
    }

    const workerId = single(req.headers['x-worker-id']);
    const token = tokenOf(req);
    try {
      // Checked before the body is read, so a caller without a credential cannot make the
      // worker buffer bodies of up to the size limit; the gate checks it again with the body.
      this.authenticator.authenticate(workerId, token, 'worker:rpc');
    } catch (err) {
      this.log.info({ request_id: requestId, code: toWireError(err).code }, 'rpc refused');
      res.setHeader('connection', 'close');
      sendError(res, null, err);
      return;
    }

    const raw = await readBody(req, this.bodyLimit);
    if (raw === undefined) {
      res.setHeader('connection', 'close');
      sendJson(res, 413, errorResponse(null, new StacyError('payload_too_large', `request body exceeds ${this.bodyLimit} bytes`)));
      return;
    }
    let body: unknown;
    let jsonProblem: string | undefined;
    try {
      body = JSON.parse(raw.toString('utf8'));
    } catch (err) {
      jsonProblem = (err as Error).message;
    }
    const rpcId = requestIdOf(body);
    let request: AnyRpcRequest;
    let log = this.log.child({ request_id: requestId, rpc_id: rpcId });
    try {
      const admitted = this.gate.admit({ workerId, token, body });
      request = admitted.request;
      log = log.child({ method: request.method, credential: admitted.caller.credential, ...(admitted.caller.jti ? { jti: admitted.caller.jti } : {}) });
    } catch (err) {
      const e = jsonProblem !== undefined && isStacyError(err, 'bad_request') ? badRequest(`request body is not JSON: ${jsonProblem}`) : err;
      log.info({ code: toWireError(e).code }, 'rpc refused');
      sendError(res, rpcId, e);
      return;
    }

    const started = process.hrtime.bigint();
    if (request.method === 'worker.exec_stream') {
      await this.stream(request.id, request.params, res, log);
      log.info({ ms: msSince(started) }, 'rpc stream done');
      return;
    }
    if (request.method === 'worker.file_read') {
      await this.streamFile(request.id, request.params, res, log);
      log.debug({ ms: msSince(started) }, 'rpc file read done');
      return;
    }
    try {
      const result = await this.node.call(request);
      sendJson(res, 200, okResponse(request.id, result as never));
      log.debug({ ms: msSince(started) }, 'rpc ok');
    } catch (err) {
      if (!(err instanceof StacyError)) log.error({ err }, 'rpc failed unexpectedly');
      else log.info({ code: err.code, ms: msSince(started) }, 'rpc failed');
      sendError(res, request.id, err);
    }
  }

  private async stream(id: string, params: Extract<AnyRpcRequest, { method: 'worker.exec_stream' }>['params'], res: ServerResponse, log: Logger): Promise<void> {
    // Headers go out with the first chunk (or keepalive) rather than in a packet of their own.
    res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
    const abort = new AbortController();
    const onClose = () => {
      if (!res.writableFinished) abort.abort();
    };
    res.on('close', onClose);
    const { write, stop: stopKeepalive } = keptAlive(res, `${JSON.stringify(okResponse(id, { stream: 'stdout', data: '' }))}\n`, this.keepaliveMs);
    const iterator = this.node.execStream(params, abort.signal);
    // The exit chunk is last; it leaves with the end of the response, in one write.
    let last = '';
    try {
      for (;;) {
        const next = await iterator.next();
        if (next.done === true || abort.signal.aborted) break;
        if (next.value.stream === 'exit') last = chunkLine(id, next.value);
        else if (!write(chunkLine(id, next.value))) await drained(res, this.stalledWriteMs, log);
      }
    } catch (err) {
      if (!abort.signal.aborted) {
        if (!(err instanceof StacyError)) log.error({ err }, 'exec stream failed unexpectedly');
        last = `${JSON.stringify(errorResponse(id, err))}\n`;
      }
    } finally {
      stopKeepalive();
      res.off('close', onClose);
      if (abort.signal.aborted) log.info('exec stream aborted: client went away');
      await iterator.return(undefined);
      res.end(last);
    }
  }

  /**
   * `worker.file_read`: NDJSON like exec output, one `{content}` line per chunk the provider
   * yields, then `{content: "", eof: true}`. The file is opened before the status line, so a
   * missing file or a directory is an ordinary error reply; a failure mid-way ends the reply with
   * an error line, and a client that goes away stops the read.
   */
  private async streamFile(id: string, params: Extract<AnyRpcRequest, { method: 'worker.file_read' }>['params'], res: ServerResponse, log: Logger): Promise<void> {
    let source: Readable;
    try {
      source = await this.node.openFile(params);
    } catch (err) {
      if (!(err instanceof StacyError)) log.error({ err }, 'file read failed unexpectedly');
      sendError(res, id, err);
      return;
    }
    res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
    const prefix = `{"id":${JSON.stringify(id)},"result":{"content":"`;
    let last = `${JSON.stringify(okResponse(id, { content: '', eof: true }))}\n`;
    // A source that pauses (a FIFO, a slow mount) must not look like a dead worker.
    const { write, stop: stopKeepalive } = keptAlive(res, `${prefix}"}}\n`, this.keepaliveMs);
    try {
      for await (const chunk of source) {
        if (res.destroyed) break;
        const bytes = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string);
        // Base64 needs no JSON escaping, so the line is spliced rather than stringified.
        if (bytes.length > 0 && !write(`${prefix}${bytes.toString('base64')}"}}\n`)) await drained(res, this.stalledWriteMs, log);
      }
    } catch (err) {
      if (!(err instanceof StacyError)) log.error({ err }, 'file read failed mid-way');
      last = `${JSON.stringify(errorResponse(id, err))}\n`;
    } finally {
      stopKeepalive();
      source.destroy();
      if (res.destroyed) log.info('file read aborted: client went away');
      else res.end(last);
    }
  }
}

/**
 * Writes to a streamed reply, sending `keepalive` (an empty chunk line) whenever nothing was
 * written for `keepaliveMs`, so the client can tell a quiet stream from a dead worker without a
 * limit on how long the stream may stay quiet.
 */
function keptAlive(res: ServerResponse, keepalive: string, keepaliveMs: number): { write: (line: string) => boolean; stop: () => void } {
  let lastWrite = Date.now();
  const write = (line: string): boolean => {
    lastWrite = Date.now();
    return res.write(line);
  };
  const timer = setInterval(() => {
    if (Date.now() - lastWrite >= keepaliveMs && !res.writableEnded) write(keepalive);
  }, Math.max(50, Math.floor(keepaliveMs / 2)));
  return { write, stop: () => clearInterval(timer) };
}

/**
 * One NDJSON line for a stream chunk. Output chunks are spliced in directly: their data is
 * WorkerNode's Buffer#toString('base64'), which needs no JSON escaping, and JSON.stringify
 * scanning a 64 KiB chunk's string for escapes costs more than producing it.
 */
function chunkLine(id: string, chunk: StreamChunk): string {
  if (chunk.stream === 'exit') return `${JSON.stringify(okResponse(id, chunk))}\n`;
  return `{"id":${JSON.stringify(id)},"result":{"stream":"${chunk.stream}","data":"${chunk.data}"}}\n`;
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** X-Worker-Token, else the Authorization bearer token. */
function tokenOf(req: IncomingMessage): string | undefined {
  const direct = single(req.headers['x-worker-token']);
  if (direct !== undefined && direct !== '') return direct;
  const auth = single(req.headers.authorization);
  const m = auth === undefined ? null : /^Bearer\s+(\S+)\s*$/i.exec(auth);
  return m?.[1];
}

function sendJson(res: ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function sendError(res: ServerResponse, id: string | null, err: unknown): void {
  const wire = toWireError(err);
  if (wire.retry_after_seconds !== undefined) res.setHeader('retry-after', String(Math.ceil(wire.retry_after_seconds)));
  sendJson(res, httpStatusOf(wire.code), errorResponse(id, err));
}

/** The body, or undefined when it is larger than `limit` (the rest is drained unread). */
async function readBody(req: IncomingMessage, limit: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  let over = false;
  for await (const chunk of req) {
    if (over) continue;
    size += (chunk as Buffer).length;
    if (size > limit) over = true;
    else chunks.push(chunk as Buffer);
  }
  return over ? undefined : Buffer.concat(chunks);
}

async function discard(req: IncomingMessage): Promise<void> {
  for await (const _ of req) void _;
}

/**
 * Resolves when the response can take more data or the connection is gone. A client that takes
 * nothing for `stalledMs` has its connection dropped, which ends the wait as well: nothing on the
 * worker waits for a reader without a bound.
 */
function drained(res: ServerResponse, stalledMs: number, log: Logger): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    const timer = setTimeout(() => {
      log.warn({ stalled_ms: stalledMs }, 'client took no data; dropping the connection');
      res.destroy();
    }, stalledMs);
    res.on('drain', done);
    res.on('close', done);
  });
}

const msSince = (start: bigint): number => Number(process.hrtime.bigint() - start) / 1e6;
