/**
 * The control plane's side of the worker RPC: `RemoteWorkerClient` sends workerproto envelopes
 * to one worker's `POST /rpc` over a keep-alive undici Pool, and `RemoteProvider` adapts a client
 * to the Provider interface so a remote worker's runtime is driven exactly like a local one.
 *
 * Failure policy: every network-level failure (refused, reset, TLS, connect/headers/body
 * timeouts, a stream that stops mid-way) becomes `remote_worker_rpc_unavailable` (503); nothing
 * waits without a bound. Errors the worker reports come back as the StacyError it raised.
 */
import { Readable } from 'node:stream';
import { Pool, type Dispatcher } from 'undici';
import { StacyError, isStacyError } from '../core/errors.js';
import { formatDuration, parseDuration } from '../core/duration.js';
import { systemClock, type Clock } from '../core/clock.js';
import { SANDBOX_ID_PATTERN, newId } from '../core/ids.js';
import { ndjsonLines } from '../core/ndjson.js';
import type {
  ExecEvent,
  ExecRequest,
  FileEntry,
  Provider,
  ProviderCapabilities,
  ProviderHealth,
  RuntimeInfo,
  RuntimeStatus,
  SpawnResult,
  SpawnSpec,
} from '../providers/provider.js';
import { createRequest, fromWireError, parseResponse, type ParamsOf, type ResultOf, type WireLease, type WorkerMethod } from '../workerproto/index.js';
import { CredentialSource, type WorkerCredential } from './credentials.js';

export interface RemoteWorkerTlsOptions {
  /** PEM CA bundle that signs the worker's server certificate (default: the system store). */
  ca?: string | Buffer;
  /** PEM client certificate and key, for workers that require mTLS. */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** Name to verify the server certificate against when it differs from the URL's host. */
  serverName?: string;
}

export interface RemoteWorkerClientOptions {
  workerId: string;
  /** The worker's advertised `rpc_url` (base URL, or the full `/rpc` URL). */
  url: string;
  credential: WorkerCredential;
  tls?: RemoteWorkerTlsOptions;
  clock?: Clock;
  /** TCP + TLS connect bound. Default 3 s. */
  connectTimeoutMs?: number;
  /** Bound on waiting for a unary reply. Default 60 s. */
  requestTimeoutMs?: number;
  /** Bound on `worker.spawn`, which may pull an image. Default 5 min. */
  spawnTimeoutMs?: number;
  /** A stream that delivers nothing (not even a keepalive) for this long is dead. Default 30 s. */
  streamIdleTimeoutMs?: number;
  /** Pooled connections. Default 32. */
  connections?: number;
}

export interface CallOptions {
  lease?: WireLease;
  /** Sent as X-Request-ID so worker logs line up with the caller's. */
  requestId?: string;
  signal?: AbortSignal;
  /** Overrides the method's reply bound. */
  timeoutMs?: number;
}

type UnaryMethod = Exclude<WorkerMethod, 'worker.exec_stream' | 'worker.file_read'>;
type Ref = { sandbox_id: string; provider: string; runtime_id: string };
type StreamChunk = ResultOf<'worker.exec_stream'>;
type ResponseBody = Dispatcher.ResponseData['body'];

/** Margin over a command's own timeout before a buffered exec reply counts as lost. */
const EXEC_REPLY_MARGIN_MS = 30_000;

export class RemoteWorkerClient {
  readonly workerId: string;
  readonly url: string;
  private readonly pool: Pool;
  private readonly path: string;
  private readonly credentials: CredentialSource;
  private readonly requestTimeoutMs: number;
  private readonly spawnTimeoutMs: number;
  private readonly streamIdleTimeoutMs: number;
  /** Set by abort(): every call in flight and every later call fails with it. */
  private cut: StacyError | undefined;

  constructor(options: RemoteWorkerClientOptions) {
    this.workerId = options.workerId;
    this.url = options.url;
    let parsed: URL;
    try {
      parsed = new URL(options.url);
    } catch {
      throw new StacyError('bad_request', `worker ${options.workerId}: rpc_url ${JSON.stringify(options.url)} is not a URL`);
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      throw new StacyError('bad_request', `worker ${options.workerId}: rpc_url must be http(s), got ${parsed.protocol}`);
    }
    const base = parsed.pathname.replace(/\/+$/, '');
    this.path = base.endsWith('/rpc') ? base : `${base}/rpc`;
    this.credentials = new CredentialSource(options.workerId, options.credential, options.clock ?? systemClock);
    this.requestTimeoutMs = options.requestTimeoutMs ?? 60_000;
    this.spawnTimeoutMs = options.spawnTimeoutMs ?? 5 * 60_000;
    this.streamIdleTimeoutMs = options.streamIdleTimeoutMs ?? 30_000;
    const tls = options.tls;
    this.pool = new Pool(parsed.origin, {
      connections: options.connections ?? 32,
      keepAliveTimeout: 20_000,
      connect: {
        timeout: options.connectTimeoutMs ?? 3_000,
        ...(tls?.ca !== undefined ? { ca: tls.ca } : {}),
        ...(tls?.cert !== undefined ? { cert: tls.cert } : {}),
        ...(tls?.key !== undefined ? { key: tls.key } : {}),
        ...(tls?.serverName !== undefined ? { servername: tls.serverName } : {}),
      },
    });
  }

  /** Sends one unary request and returns its result, or throws the worker's (or the transport's) error. */
  async call<M extends UnaryMethod>(method: M, params: ParamsOf<M>, options: CallOptions = {}): Promise<ResultOf<M>> {
    const request = createRequest(method, this.workerId, params, options.lease);
    const timeout = options.timeoutMs ?? this.defaultTimeout(method, params);
    const { statusCode, body } = await this.open(request, timeout, timeout, options);
    return decode(request, statusCode, await this.readText(body, options), this.describe());
  }

  /**
   * Runs `worker.exec_stream` and yields its chunks (keepalive chunks dropped; output chunks carry
   * their decoded `bytes`), the `exit` chunk last. Returning early or aborting `signal` closes the connection, which kills the command.
   */
  async *execStream(params: ParamsOf<'worker.exec_stream'>, options: CallOptions = {}): AsyncGenerator<StreamChunk & { bytes?: Buffer }> {
    const request = createRequest('worker.exec_stream', this.workerId, params);
    const abort = new AbortController();
    const onAbort = () => abort.abort(options.signal?.reason);
    if (options.signal?.aborted) onAbort();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    let finished = false;
    let body: ResponseBody | undefined;
    try {
      const response = await this.open(request, this.streamIdleTimeoutMs, this.streamIdleTimeoutMs, { ...options, signal: abort.signal });
      body = response.body;
      if (response.statusCode !== 200) {
        decode(request, response.statusCode, await this.readText(body, options), this.describe());
        throw new StacyError('internal', `worker ${this.describe()} answered exec_stream with status ${response.statusCode}`);
      }
      try {
        for await (const line of ndjsonLines(body)) {
          const value = parseJson(line, request.method, this.describe());
          const output = outputChunkOf(value, request.id);
          if (output !== undefined) {
            // Empty chunks are the worker's keepalives.
            if (output.bytes.length > 0) yield output;
            continue;
          }
          const result = parseResponse(request, value);
          if (result.stream === 'exit') {
            // Reading to the end of the response lets the pool reuse the connection; the worker
            // ends it right after the exit chunk, and the idle bound still applies.
            for await (const _ of body) void _;
            finished = true;
            yield result;
            return;
          }
          if (result.data !== '') yield result;
        }
      } catch (err) {
        if (this.cut !== undefined) throw this.cut;
        throw isStacyError(err) || abort.signal.aborted ? err : this.unavailable(err);
      }
      throw new StacyError('remote_worker_rpc_unavailable', `worker ${this.describe()}: exec stream ended before the command's exit`);
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
      if (!finished && body !== undefined) body.destroy();
    }
  }

  /**
   * Runs `worker.file_read`. Resolves once the worker has opened the file (its errors, such as
   * not_found, reject here) with a stream of the content that pulls from the worker as it is
   * read. A reply that ends without the eof line fails the stream with
   * `remote_worker_rpc_unavailable`; destroying the stream closes the connection.
   */
  async readFile(params: ParamsOf<'worker.file_read'>, options: CallOptions = {}): Promise<Readable> {
    const request = createRequest('worker.file_read', this.workerId, params);
    const response = await this.open(request, this.requestTimeoutMs, this.streamIdleTimeoutMs, options);
    const body = response.body;
    if (response.statusCode !== 200) {
      decode(request, response.statusCode, await this.readText(body, options), this.describe());
      throw new StacyError('internal', `worker ${this.describe()} answered file_read with status ${response.statusCode}`);
    }
    const describe = this.describe();
    const unavailable = (err: unknown) => this.unavailable(err);
    let complete = false;
    async function* chunks(): AsyncGenerator<Buffer> {
      try {
        for await (const line of ndjsonLines(body)) {
          const result = parseResponse(request, parseJson(line, request.method, describe));
          if (result.eof === true) {
            complete = true;
            return;
          }
          if (result.content !== '') yield Buffer.from(result.content, 'base64');
        }
      } catch (err) {
        throw isStacyError(err) ? err : unavailable(err);
      } finally {
        if (!complete) body.destroy();
      }
      throw new StacyError('remote_worker_rpc_unavailable', `worker ${describe}: file read of ${params.path} ended before the end of the file`);
    }
    const out = Readable.from(chunks(), { objectMode: false });
    // A stream destroyed before its first read never starts the generator, so its `finally`
    // cannot be relied on to let go of the response: an unread body would hold the pooled
    // connection, and the worker's read of the file, for good.
    out.once('close', () => {
      if (!complete) body.destroy();
    });
    return out;
  }

  /** Liveness and what the worker advertises. */
  heartbeat(options?: CallOptions): Promise<ResultOf<'worker.heartbeat'>> {
    return this.call('worker.heartbeat', {}, options);
  }

  /** Creates the sandbox's runtime under `lease` (holder = this worker). */
  spawn(params: ParamsOf<'worker.spawn'>, lease: WireLease, options?: CallOptions): Promise<ResultOf<'worker.spawn'>> {
    return this.call('worker.spawn', params, { ...options, lease });
  }

  /** Tears the runtime down under `lease`. */
  destroy(ref: Ref, lease: WireLease, options?: CallOptions): Promise<ResultOf<'worker.destroy'>> {
    return this.call('worker.destroy', ref, { ...options, lease });
  }

  /** Presents a renewed lease so the worker fences older holders from now on. */
  renewLease(lease: WireLease, options?: CallOptions): Promise<WireLease> {
    return this.call('worker.renew_lease', { resource_id: lease.resource_id }, { ...options, lease });
  }

  /** Puts the worker into `draining`. */
  shutdown(options?: CallOptions): Promise<ResultOf<'worker.shutdown'>> {
    return this.call('worker.shutdown', {}, options);
  }

  /** Closes pooled connections. */
  async close(): Promise<void> {
    // abort() has already torn the connections down.
    if (this.cut !== undefined) return;
    await this.pool.close();
  }

  /**
   * Gives up on the worker at once: calls in flight (unary and streams) fail now with
   * `remote_worker_rpc_unavailable` carrying `reason`, and so does every later call. Used when
   * the worker is known to be unreachable (its heartbeat went stale) so that nobody waits out
   * a reply bound on a connection whose packets are being dropped.
   */
  async abort(reason: string): Promise<void> {
    this.cut ??= new StacyError('remote_worker_rpc_unavailable', `worker ${this.describe()}: ${reason}; calls to it were cut`);
    await this.pool.destroy(this.cut).catch(() => undefined);
  }

  private defaultTimeout(method: UnaryMethod, params: unknown): number {
    if (method === 'worker.spawn') return this.spawnTimeoutMs;
    if (method === 'worker.exec') return parseDuration((params as ParamsOf<'worker.exec'>).timeout) + EXEC_REPLY_MARGIN_MS;
    return this.requestTimeoutMs;
  }

  private describe(): string {
    return `${this.workerId} (${this.url})`;
  }

  private unavailable(err: unknown): StacyError {
    const e = err as { code?: string; message?: string };
    return new StacyError('remote_worker_rpc_unavailable', `worker ${this.describe()} is unreachable over RPC: ${e.code ?? e.message ?? String(err)}`, { cause: err });
  }

  private async open(request: { id: string }, headersTimeout: number, bodyTimeout: number, options: CallOptions): Promise<{ statusCode: number; body: ResponseBody }> {
    if (this.cut !== undefined) throw this.cut;
    const headers = {
      ...(await this.credentials.headers('worker:rpc')),
      'content-type': 'application/json',
      'x-request-id': options.requestId ?? newId('req'),
    };
    try {
      const res = await this.pool.request({
        path: this.path,
        method: 'POST',
        headers,
        body: JSON.stringify(request),
        headersTimeout,
        bodyTimeout,
        ...(options.signal !== undefined ? { signal: options.signal } : {}),
      });
      return { statusCode: res.statusCode, body: res.body };
    } catch (err) {
      if (this.cut !== undefined) throw this.cut;
      if (options.signal?.aborted) throw err;
      throw this.unavailable(err);
    }
  }

  private async readText(body: ResponseBody, options: CallOptions): Promise<string> {
    try {
      return await body.text();
    } catch (err) {
      if (this.cut !== undefined) throw this.cut;
      if (options.signal?.aborted) throw err;
      throw this.unavailable(err);
    }
  }
}

/**
 * The common stream line, an output chunk, checked without the generic validator: the schema's
 * base64 pattern scans the whole string, which for 64 KiB chunks cost more than everything else
 * in the relay. A decode/re-encode round trip is as strict (only canonical base64 passes) and
 * yields the bytes the caller needs anyway. Anything else (exit, errors, malformed) returns
 * undefined and goes through parseResponse.
 */
function outputChunkOf(value: unknown, id: string): (StreamChunk & { bytes: Buffer }) | undefined {
  if (value === null || typeof value !== 'object') return undefined;
  const v = value as Record<string, unknown>;
  if (v.id !== id || v.error !== undefined || Object.keys(v).length !== 2) return undefined;
  const r = v.result as Record<string, unknown> | null | undefined;
  if (r === null || typeof r !== 'object' || Object.keys(r).length !== 2) return undefined;
  if ((r.stream !== 'stdout' && r.stream !== 'stderr') || typeof r.data !== 'string') return undefined;
  const bytes = Buffer.from(r.data, 'base64');
  if (bytes.toString('base64') !== r.data) return undefined;
  return { stream: r.stream, data: r.data, bytes };
}

function parseJson(text: string, method: string, who: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new StacyError('internal', `worker ${who} sent a reply to ${method} that is not JSON`);
  }
}

/** Turns an HTTP reply into the method's result or the StacyError it carries. */
function decode<M extends WorkerMethod>(request: { id: string; method: M }, status: number, text: string, who: string): ResultOf<M> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    // Something between us and the worker (a proxy, a restarting listener) answered instead.
    if (status >= 500) throw new StacyError('remote_worker_rpc_unavailable', `worker ${who} answered ${status} without an RPC envelope`);
    throw new StacyError('internal', `worker ${who} answered ${request.method} with status ${status} and a body that is not JSON`);
  }
  const v = value as { id?: unknown; error?: { code?: unknown; message?: unknown; retry_after_seconds?: unknown } };
  // Refusals before the envelope was readable carry no id; their error is still the worker's.
  if (v !== null && typeof v === 'object' && v.id === null && v.error !== null && typeof v.error === 'object') {
    const e = v.error;
    if (typeof e.code === 'string' && typeof e.message === 'string') {
      throw fromWireError({ code: e.code, message: e.message, ...(typeof e.retry_after_seconds === 'number' ? { retry_after_seconds: e.retry_after_seconds } : {}) });
    }
  }
  return parseResponse(request, value);
}

/** Obtains the wire lease the control plane holds for a sandbox (resource) on this worker. */
export type LeaseSupplier = (resourceId: string, operation: 'spawn' | 'destroy') => Promise<WireLease>;

export interface RemoteProviderOptions {
  client: RemoteWorkerClient;
  /** The provider's name on the worker; also this Provider's name. */
  provider: string;
  capabilities: ProviderCapabilities;
  leases: LeaseSupplier;
  /** The request id of the operation in progress (e.g. from AsyncLocalStorage), sent as X-Request-ID. */
  requestId?: () => string | undefined;
}

const HANDLE = /^(sb-[0-9a-f]{8}):(.+)$/s;

/**
 * A Provider whose runtimes live on a remote worker. Runtime ids it hands out are handles
 * `<sandbox_id>:<worker runtime id>`, because every runtime RPC names the sandbox too (the
 * worker refuses a runtime reached through the wrong sandbox) while Provider methods only get
 * the runtime id; persisting the handle as the sandbox's runtime id keeps that tuple whole. A
 * string that is not such a handle names no runtime this provider could have made: `status`
 * answers `missing`, `destroy` succeeds, everything else is `not_found`, without a call.
 *
 * spawn and destroy ask the LeaseSupplier for the sandbox's lease (holder = the worker) and
 * present it; a stale one is refused by the worker with `lease_conflict`.
 */
export class RemoteProvider implements Provider {
  readonly name: string;
  readonly capabilities: ProviderCapabilities;
  private readonly client: RemoteWorkerClient;
  private readonly leases: LeaseSupplier;
  private readonly requestId: (() => string | undefined) | undefined;

  constructor(options: RemoteProviderOptions) {
    this.client = options.client;
    this.name = options.provider;
    this.capabilities = options.capabilities;
    this.leases = options.leases;
    this.requestId = options.requestId;
  }

  /**
   * Asks the worker what it runs and builds a RemoteProvider for `provider`; `bad_request` when
   * the worker does not enable it. Isolation comes from the worker's `isolation:<p>:<level>`.
   */
  static async connect(
    client: RemoteWorkerClient,
    provider: string,
    leases: LeaseSupplier,
    extra: Pick<RemoteProviderOptions, 'requestId'> = {},
  ): Promise<RemoteProvider> {
    const hb = await client.heartbeat();
    if (!hb.providers.includes(provider)) {
      throw new StacyError('bad_request', `worker ${client.workerId} does not run provider ${JSON.stringify(provider)} (it runs: ${hb.providers.join(', ') || 'none'})`);
    }
    const prefix = `isolation:${provider}:`;
    const level = hb.capabilities.find((c) => c.startsWith(prefix))?.slice(prefix.length);
    if (level !== 'none' && level !== 'container' && level !== 'vm') {
      throw new StacyError('internal', `worker ${client.workerId} does not advertise the isolation of provider ${provider}`);
    }
    return new RemoteProvider({ ...extra, client, provider, leases, capabilities: { isolation: level, features: ['remote'] } });
  }

  /** The runtime id this provider uses for a worker runtime of a sandbox. */
  static handle(sandboxId: string, runtimeId: string): string {
    return `${sandboxId}:${runtimeId}`;
  }

  /** Splits a handle, or undefined when the string is not one. */
  static parseHandle(handle: string): { sandboxId: string; runtimeId: string } | undefined {
    const m = HANDLE.exec(handle);
    return m === null ? undefined : { sandboxId: m[1] as string, runtimeId: m[2] as string };
  }

  get workerId(): string {
    return this.client.workerId;
  }

  async spawn(spec: SpawnSpec): Promise<SpawnResult> {
    const lease = await this.leases(spec.sandboxId, 'spawn');
    const result = await this.client.spawn(
      {
        sandbox_id: spec.sandboxId,
        provider: this.name,
        image: spec.image,
        memory_mb: spec.memoryMb,
        vcpus: spec.vcpus,
        owner_id: spec.ownerId,
        env: { ...spec.env },
        ...(spec.networkMode !== undefined ? { network_mode: spec.networkMode } : {}),
        labels: { ...spec.labels },
      },
      lease,
      this.ctx(),
    );
    return { runtimeId: RemoteProvider.handle(result.sandbox_id, result.runtime_id) };
  }

  async status(runtimeId: string): Promise<RuntimeStatus> {
    const ref = this.refOf(runtimeId);
    if (ref === undefined) return 'missing';
    return (await this.client.call('worker.status', ref, this.ctx())).status;
  }

  async destroy(runtimeId: string): Promise<void> {
    const ref = this.refOf(runtimeId);
    if (ref === undefined) return;
    await this.client.destroy(ref, await this.leases(ref.sandbox_id, 'destroy'), this.ctx());
  }

  async *execStream(runtimeId: string, request: ExecRequest, signal?: AbortSignal): AsyncIterable<ExecEvent> {
    const ref = this.operable(runtimeId);
    const params: ParamsOf<'worker.exec_stream'> = {
      ...ref,
      command: request.command,
      args: [...request.args],
      mode: request.mode,
      env: { ...request.env },
      ...(request.workdir !== undefined ? { workdir: request.workdir } : {}),
      timeout: formatDuration(request.timeoutMs),
    };
    for await (const chunk of this.client.execStream(params, { ...this.ctx(), ...(signal !== undefined ? { signal } : {}) })) {
      if (chunk.stream === 'exit') yield { type: 'exit', exitCode: chunk.exit_code, durationMs: parseDuration(chunk.duration) };
      else yield { type: chunk.stream, data: chunk.bytes ?? Buffer.from(chunk.data, 'base64') };
    }
  }

  async writeFile(runtimeId: string, path: string, content: Buffer | Readable, mode?: number): Promise<void> {
    const ref = this.operable(runtimeId);
    const data = Buffer.isBuffer(content) ? content : await readAll(content);
    await this.client.call('worker.file_write', { ...ref, path, content: data.toString('base64'), ...(mode !== undefined ? { mode } : {}) }, this.ctx());
  }

  async readFile(runtimeId: string, path: string): Promise<Readable> {
    return this.client.readFile({ ...this.operable(runtimeId), path }, this.ctx());
  }

  async listFiles(runtimeId: string, path: string): Promise<FileEntry[]> {
    return (await this.client.call('worker.file_list', { ...this.operable(runtimeId), path }, this.ctx())).entries.map(entryFromWire);
  }

  async deleteFile(runtimeId: string, path: string, recursive: boolean): Promise<void> {
    await this.client.call('worker.file_delete', { ...this.operable(runtimeId), path, recursive }, this.ctx());
  }

  async moveFile(runtimeId: string, fromPath: string, toPath: string): Promise<void> {
    await this.client.call('worker.file_move', { ...this.operable(runtimeId), old_path: fromPath, new_path: toPath }, this.ctx());
  }

  async chmod(runtimeId: string, path: string, mode: number): Promise<void> {
    await this.client.call('worker.file_chmod', { ...this.operable(runtimeId), path, mode }, this.ctx());
  }

  async stat(runtimeId: string, path: string): Promise<FileEntry> {
    return entryFromWire((await this.client.call('worker.file_stat', { ...this.operable(runtimeId), path }, this.ctx())).entry);
  }

  async glob(runtimeId: string, pattern: string): Promise<string[]> {
    return (await this.client.call('worker.file_glob', { ...this.operable(runtimeId), pattern }, this.ctx())).paths;
  }

  async consoleLog(runtimeId: string, lines: number): Promise<string[]> {
    const ref = this.operable(runtimeId);
    // The wire takes 1–10000 lines; zero lines needs no call.
    if (lines <= 0) return [];
    return (await this.client.call('worker.logs', { ...ref, lines: Math.min(lines, 10_000) }, this.ctx())).lines;
  }

  /**
   * The worker's runtimes of this provider, as handles. Only runtimes labelled with a sandbox id
   * (every runtime StacyVM spawned) can be named by a handle, so only those are listed.
   */
  async inventory(): Promise<RuntimeInfo[]> {
    const { runtimes } = await this.client.call('worker.inventory', { provider: this.name }, this.ctx());
    const out: RuntimeInfo[] = [];
    for (const rt of runtimes) {
      if (rt.sandbox_id === undefined || !SANDBOX_ID_PATTERN.test(rt.sandbox_id)) continue;
      out.push({
        runtimeId: RemoteProvider.handle(rt.sandbox_id, rt.runtime_id),
        status: rt.status,
        sandboxId: rt.sandbox_id,
        workerId: rt.worker_id ?? this.client.workerId,
        ...(rt.owner_id !== undefined ? { ownerId: rt.owner_id } : {}),
        ...(rt.created_at !== undefined ? { createdAt: Date.parse(rt.created_at) } : {}),
      });
    }
    return out;
  }

  /** Healthy when the worker answers its heartbeat, still runs this provider and is not offline/unhealthy. */
  async health(): Promise<ProviderHealth> {
    const started = performance.now();
    try {
      const hb = await this.client.heartbeat({ timeoutMs: 10_000 });
      const latencyMs = performance.now() - started;
      const details = { worker_id: hb.worker_id, worker_status: hb.status, rpc_url: this.client.url, isolation: this.capabilities.isolation };
      if (!hb.providers.includes(this.name)) return { healthy: false, latencyMs, error: `worker no longer runs provider ${this.name}`, details };
      if (hb.status === 'offline' || hb.status === 'unhealthy') return { healthy: false, latencyMs, error: `worker is ${hb.status}`, details };
      return { healthy: true, latencyMs, details };
    } catch (err) {
      return {
        healthy: false,
        latencyMs: performance.now() - started,
        error: err instanceof Error ? err.message : String(err),
        details: { worker_id: this.client.workerId, rpc_url: this.client.url },
      };
    }
  }

  /** Per-call options: the current request id, when the caller tracks one. */
  private ctx(): CallOptions {
    const id = this.requestId?.();
    return id === undefined ? {} : { requestId: id };
  }

  private refOf(runtimeId: string): Ref | undefined {
    const h = RemoteProvider.parseHandle(runtimeId);
    return h === undefined ? undefined : { sandbox_id: h.sandboxId, provider: this.name, runtime_id: h.runtimeId };
  }

  private operable(runtimeId: string): Ref {
    const ref = this.refOf(runtimeId);
    if (ref === undefined) throw new StacyError('not_found', `runtime ${JSON.stringify(runtimeId)} not found on worker ${this.client.workerId}`);
    return ref;
  }
}

function entryFromWire(e: ResultOf<'worker.file_stat'>['entry']): FileEntry {
  return { name: e.name, path: e.path, size: e.size, isDir: e.is_dir, modTime: Date.parse(e.mod_time), mode: e.mode };
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string));
  return Buffer.concat(chunks);
}
