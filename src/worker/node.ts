/**
 * The worker's side of every RPC method once the gate has admitted a request: it maps the wire
 * envelope onto the worker's local Provider instances. Transport-free, so the HTTP server only
 * moves bytes and this is the one place that decides what a call does.
 *
 * Beyond plain dispatch it keeps two invariants the control plane relies on:
 * - one runtime per sandbox on this worker: a repeated spawn (a control-plane retry after a lost
 *   reply) returns the runtime it already made instead of starting a second one;
 * - a runtime is only reachable through the sandbox it was spawned for, so a request naming
 *   sandbox A cannot operate on sandbox B's runtime.
 */
import { hostname as osHostname } from 'node:os';
import type { Readable } from 'node:stream';
import { StacyError, badRequest, notFound } from '../core/errors.js';
import { formatDuration, parseDuration } from '../core/duration.js';
import { toIso } from '../core/clock.js';
import type { WorkerStatus } from '../core/types.js';
import type { ExecEvent, FileEntry, Provider } from '../providers/provider.js';
import type { AnyRpcRequest, ParamsOf, ResultOf, WireLease } from '../workerproto/index.js';
import type { LeaseKeeper } from './lease-keeper.js';

export interface WorkerCapacityOptions {
  maxSandboxes?: number;
  maxSandboxesPerOwner?: number;
  /** The URL the control plane reaches this worker's RPC on. */
  rpcUrl?: string;
  previewDomain?: string;
}

export interface WorkerNodeOptions {
  workerId: string;
  providers: readonly Provider[];
  hostname?: string;
  capacity?: WorkerCapacityOptions;
  /** Output kept per stream by the buffered `worker.exec`; the rest is cut. Default 10 MiB. */
  maxExecOutputBytes?: number;
  /** Keeps the lease of a spawn or destroy alive while it runs (the daemon renews through the control plane). */
  leaseKeeper?: LeaseKeeper;
}

type ExecParams = ParamsOf<'worker.exec'>;
type StreamChunk = ResultOf<'worker.exec_stream'>;
type Ref = { sandbox_id: string; provider: string; runtime_id: string };

/** Capabilities every worker advertises; per-provider isolation is added as `isolation:<provider>:<level>`. */
export const WORKER_BASE_CAPABILITIES = ['rpc', 'spawn', 'exec', 'exec_stream', 'files', 'logs', 'lease_fencing', 'drain'] as const;

const DEFAULT_MAX_EXEC_OUTPUT = 10 * 1024 * 1024;

export class WorkerNode {
  readonly workerId: string;
  private readonly providers = new Map<string, Provider>();
  private readonly hostname: string;
  private readonly capacity: WorkerCapacityOptions;
  private readonly maxExecOutputBytes: number;
  private state: WorkerStatus = 'online';
  /** sandbox id → the runtime this worker made for it. */
  private readonly bySandbox = new Map<string, { provider: string; runtimeId: string }>();
  /** `${provider}\0${runtimeId}` → sandbox id. */
  private readonly byRuntime = new Map<string, string>();
  private readonly spawning = new Map<string, Promise<ResultOf<'worker.spawn'>>>();
  private readonly drainListeners: Array<() => void> = [];
  private leaseKeeper: LeaseKeeper | undefined;

  constructor(options: WorkerNodeOptions) {
    this.workerId = options.workerId;
    for (const p of options.providers) {
      if (this.providers.has(p.name)) throw new Error(`provider ${p.name} given twice`);
      this.providers.set(p.name, p);
    }
    this.hostname = options.hostname ?? osHostname();
    this.capacity = { ...options.capacity };
    this.maxExecOutputBytes = options.maxExecOutputBytes ?? DEFAULT_MAX_EXEC_OUTPUT;
    this.leaseKeeper = options.leaseKeeper;
  }

  /** Sets how leases of long operations are kept alive (the daemon builds it after the node). */
  setLeaseKeeper(keeper: LeaseKeeper): void {
    this.leaseKeeper = keeper;
  }

  /** Whether this worker has a runtime for the sandbox or is creating one (its lease floor must be kept). */
  hasSandbox(sandboxId: string): boolean {
    return this.bySandbox.has(sandboxId) || this.spawning.has(sandboxId);
  }

  /** Learns the runtimes the providers already run (a restarted worker), so their sandboxes stay reachable. */
  async loadInventory(): Promise<void> {
    for (const provider of this.providers.values()) {
      if (provider.inventory === undefined) continue;
      for (const rt of await provider.inventory()) {
        if (rt.sandboxId !== undefined && rt.status !== 'missing' && (rt.workerId === undefined || rt.workerId === this.workerId)) {
          this.remember(rt.sandboxId, provider.name, rt.runtimeId);
        }
      }
    }
  }

  get status(): WorkerStatus {
    return this.state;
  }

  /** Stops accepting spawns; existing sandboxes keep working. Idempotent. */
  drain(): void {
    if (this.state === 'draining') return;
    this.state = 'draining';
    for (const l of this.drainListeners) l();
  }

  /** Called once when the worker starts draining (daemon reports it at once). */
  onDrain(listener: () => void): void {
    this.drainListeners.push(listener);
  }

  get providerNames(): string[] {
    return [...this.providers.keys()].sort();
  }

  /** What this worker advertises: base capabilities plus each provider's isolation. */
  capabilities(): string[] {
    return [...WORKER_BASE_CAPABILITIES, ...this.providerNames.map((n) => `isolation:${n}:${(this.providers.get(n) as Provider).capabilities.isolation}`)];
  }

  /** The heartbeat document (also the `worker.heartbeat` result). */
  heartbeat(): ResultOf<'worker.heartbeat'> {
    const capacity: ResultOf<'worker.heartbeat'>['capacity'] = {};
    if (this.capacity.maxSandboxes !== undefined) capacity.max_sandboxes = this.capacity.maxSandboxes;
    if (this.capacity.maxSandboxesPerOwner !== undefined) capacity.max_sandboxes_per_owner = this.capacity.maxSandboxesPerOwner;
    if (this.capacity.rpcUrl !== undefined) capacity.rpc_url = this.capacity.rpcUrl;
    if (this.capacity.previewDomain !== undefined) capacity.preview_domain = this.capacity.previewDomain;
    return {
      worker_id: this.workerId,
      hostname: this.hostname,
      status: this.state,
      providers: this.providerNames,
      capabilities: this.capabilities(),
      capacity,
    };
  }

  /** Sets the advertised RPC URL once the listener knows its port. */
  setRpcUrl(url: string): void {
    this.capacity.rpcUrl = url;
  }

  /** Runs an admitted non-streaming request and returns its result. */
  async call(request: AnyRpcRequest): Promise<unknown> {
    switch (request.method) {
      case 'worker.heartbeat':
        return this.heartbeat();
      case 'worker.shutdown':
        this.drain();
        return { status: 'draining' };
      case 'worker.renew_lease':
        // The gate has fenced the lease; what is in force is exactly what was admitted.
        return { ...(request.lease as NonNullable<typeof request.lease>) };
      case 'worker.spawn':
        return this.spawn(request.params, request.lease);
      case 'worker.destroy':
        return this.destroy(request.params, request.lease);
      case 'worker.status': {
        const { provider, runtimeId } = this.resolve(request.params);
        if (runtimeId === undefined) return { status: 'missing' };
        return { status: await provider.status(runtimeId) };
      }
      case 'worker.inventory': {
        const provider = this.providerOf(request.params.provider);
        const runtimes = provider.inventory === undefined ? [] : await provider.inventory();
        return {
          runtimes: runtimes.map((rt) => ({
            runtime_id: rt.runtimeId,
            status: rt.status,
            ...(rt.sandboxId !== undefined ? { sandbox_id: rt.sandboxId } : {}),
            ...(rt.workerId !== undefined ? { worker_id: rt.workerId } : {}),
            ...(rt.ownerId !== undefined ? { owner_id: rt.ownerId } : {}),
            ...(rt.createdAt !== undefined ? { created_at: toIso(rt.createdAt) } : {}),
          })),
        };
      }
      case 'worker.exec':
        return this.execBuffered(request.params);
      case 'worker.exec_stream':
        throw badRequest('worker.exec_stream is a streaming method');
      case 'worker.file_write': {
        const p = request.params;
        const { provider, runtimeId } = this.operable(p);
        await provider.writeFile(runtimeId, p.path, Buffer.from(p.content, 'base64'), p.mode);
        return { status: 'written' };
      }
      case 'worker.file_read':
        throw badRequest('worker.file_read is a streaming method');
      case 'worker.file_list': {
        const p = request.params;
        const { provider, runtimeId } = this.operable(p);
        return { entries: (await provider.listFiles(runtimeId, p.path)).map(entryToWire) };
      }
      case 'worker.file_delete': {
        const p = request.params;
        const { provider, runtimeId } = this.operable(p);
        await provider.deleteFile(runtimeId, p.path, p.recursive);
        return { status: 'deleted' };
      }
      case 'worker.file_move': {
        const p = request.params;
        const { provider, runtimeId } = this.operable(p);
        await provider.moveFile(runtimeId, p.old_path, p.new_path);
        return { status: 'moved' };
      }
      case 'worker.file_chmod': {
        const p = request.params;
        const { provider, runtimeId } = this.operable(p);
        await provider.chmod(runtimeId, p.path, p.mode);
        return { status: 'changed' };
      }
      case 'worker.file_stat': {
        const p = request.params;
        const { provider, runtimeId } = this.operable(p);
        return { entry: entryToWire(await provider.stat(runtimeId, p.path)) };
      }
      case 'worker.file_glob': {
        const p = request.params;
        const { provider, runtimeId } = this.operable(p);
        return { paths: await provider.glob(runtimeId, p.pattern) };
      }
      case 'worker.logs': {
        const p = request.params;
        const { provider, runtimeId } = this.operable(p);
        return { lines: await provider.consoleLog(runtimeId, p.lines) };
      }
    }
  }

  /**
   * Runs `worker.exec_stream`: yields wire chunks as the provider produces them, the exit last.
   * Returning early from the iteration (or aborting `signal`) kills the command.
   */
  async *execStream(params: ExecParams, signal?: AbortSignal): AsyncGenerator<StreamChunk> {
    const { provider, runtimeId } = this.operable(params);
    for await (const ev of provider.execStream(runtimeId, execRequestOf(params), signal)) yield eventToWire(ev);
  }

  /**
   * Opens a file for `worker.file_read`. Errors the provider reports up front (missing file, a
   * directory) are thrown here, before the transport has sent a status line.
   */
  async openFile(params: ParamsOf<'worker.file_read'>): Promise<Readable> {
    const { provider, runtimeId } = this.operable(params);
    return provider.readFile(runtimeId, params.path);
  }

  private async execBuffered(params: ExecParams): Promise<ResultOf<'worker.exec'>> {
    const { provider, runtimeId } = this.operable(params);
    const out: Record<'stdout' | 'stderr', Buffer[]> = { stdout: [], stderr: [] };
    const kept = { stdout: 0, stderr: 0 };
    for await (const ev of provider.execStream(runtimeId, execRequestOf(params))) {
      if (ev.type === 'exit') {
        return {
          exit_code: ev.exitCode,
          stdout: Buffer.concat(out.stdout).toString('utf8'),
          stderr: Buffer.concat(out.stderr).toString('utf8'),
          duration: formatDuration(ev.durationMs),
        };
      }
      const room = this.maxExecOutputBytes - kept[ev.type];
      if (room > 0) {
        const part = ev.data.length > room ? ev.data.subarray(0, room) : ev.data;
        out[ev.type].push(part);
        kept[ev.type] += part.length;
      }
    }
    throw new StacyError('provider_error', `command in ${params.sandbox_id} ended without an exit event`);
  }

  private async spawn(p: ParamsOf<'worker.spawn'>, lease: WireLease | undefined): Promise<ResultOf<'worker.spawn'>> {
    const existing = this.bySandbox.get(p.sandbox_id);
    if (existing !== undefined) {
      const provider = this.providers.get(existing.provider);
      if (existing.provider !== p.provider) {
        throw new StacyError('conflict', `sandbox ${p.sandbox_id} already has a ${existing.provider} runtime on worker ${this.workerId}`);
      }
      if (provider !== undefined && (await provider.status(existing.runtimeId)) !== 'missing') {
        return { sandbox_id: p.sandbox_id, runtime_id: existing.runtimeId };
      }
      this.forget(p.sandbox_id);
    }
    const inflight = this.spawning.get(p.sandbox_id);
    if (inflight !== undefined) return inflight;
    if (this.state === 'draining') {
      throw new StacyError('unavailable', `worker ${this.workerId} is draining and accepts no new sandboxes`, { retryAfterSeconds: 5 });
    }
    const provider = this.providerOf(p.provider);
    const run = (async () => {
      const { value, lost } = await this.kept(lease, () =>
        provider.spawn({
          sandboxId: p.sandbox_id,
          image: p.image,
          memoryMb: p.memory_mb,
          vcpus: p.vcpus,
          ownerId: p.owner_id,
          workerId: this.workerId,
          env: { ...p.env },
          ...(p.network_mode !== undefined ? { networkMode: p.network_mode } : {}),
          labels: { ...p.labels },
        }),
      );
      const { runtimeId } = value;
      if (lost !== undefined) {
        // Another holder may own the sandbox now: the runtime made under the lost lease must not stay.
        const removed = await provider.destroy(runtimeId).then(
          () => 'the runtime made meanwhile was removed',
          (err: unknown) => `removing the runtime made meanwhile failed (${err instanceof Error ? err.message : String(err)})`,
        );
        throw new StacyError('lease_conflict', `spawn of ${p.sandbox_id} lost its lease: ${lost}; ${removed}`);
      }
      this.remember(p.sandbox_id, provider.name, runtimeId);
      return { sandbox_id: p.sandbox_id, runtime_id: runtimeId };
    })();
    this.spawning.set(p.sandbox_id, run);
    try {
      return await run;
    } finally {
      this.spawning.delete(p.sandbox_id);
    }
  }

  private async destroy(p: Ref, lease: WireLease | undefined): Promise<ResultOf<'worker.destroy'>> {
    const { provider, runtimeId } = this.resolve(p);
    // A destroy cannot be undone, so one that outlived its lease still reports what it did.
    if (runtimeId !== undefined) await this.kept(lease, () => provider.destroy(runtimeId));
    this.forget(p.sandbox_id);
    return { status: 'destroyed' };
  }

  /** Runs a lease-fenced operation, keeping its lease alive when a keeper is configured. */
  private kept<T>(lease: WireLease | undefined, op: () => Promise<T>): Promise<{ value: T; lost: string | undefined }> {
    if (this.leaseKeeper === undefined || lease === undefined) return op().then((value) => ({ value, lost: undefined }));
    return this.leaseKeeper.keep(lease, op);
  }

  private providerOf(name: string): Provider {
    const provider = this.providers.get(name);
    if (provider === undefined) {
      throw badRequest(`provider ${JSON.stringify(name)} is not enabled on worker ${this.workerId} (enabled: ${this.providerNames.join(', ') || 'none'})`);
    }
    return provider;
  }

  /**
   * The provider and runtime a ref names. A runtime known to belong to another sandbox yields
   * no runtime (`not_found` for operations, `missing` for status): the caller's tuple is wrong.
   */
  private resolve(ref: Ref): { provider: Provider; runtimeId: string | undefined } {
    const provider = this.providerOf(ref.provider);
    const owner = this.byRuntime.get(runtimeKey(ref.provider, ref.runtime_id));
    if (owner !== undefined && owner !== ref.sandbox_id) return { provider, runtimeId: undefined };
    return { provider, runtimeId: ref.runtime_id };
  }

  private operable(ref: Ref): { provider: Provider; runtimeId: string } {
    const { provider, runtimeId } = this.resolve(ref);
    if (runtimeId === undefined) throw notFound('runtime', ref.runtime_id);
    return { provider, runtimeId };
  }

  private remember(sandboxId: string, provider: string, runtimeId: string): void {
    this.bySandbox.set(sandboxId, { provider, runtimeId });
    this.byRuntime.set(runtimeKey(provider, runtimeId), sandboxId);
  }

  private forget(sandboxId: string): void {
    const known = this.bySandbox.get(sandboxId);
    if (known === undefined) return;
    this.bySandbox.delete(sandboxId);
    this.byRuntime.delete(runtimeKey(known.provider, known.runtimeId));
  }
}

const runtimeKey = (provider: string, runtimeId: string): string => `${provider}\0${runtimeId}`;

function execRequestOf(p: ExecParams) {
  return {
    command: p.command,
    args: [...p.args],
    mode: p.mode,
    env: { ...p.env },
    ...(p.workdir !== undefined ? { workdir: p.workdir } : {}),
    timeoutMs: parseDuration(p.timeout, 'params.timeout'),
  };
}

function eventToWire(ev: ExecEvent): StreamChunk {
  if (ev.type === 'exit') return { stream: 'exit', data: '', exit_code: ev.exitCode, duration: formatDuration(ev.durationMs) };
  return { stream: ev.type, data: ev.data.toString('base64') };
}

function entryToWire(e: FileEntry): ResultOf<'worker.file_stat'>['entry'] {
  return { name: e.name, path: e.path, size: e.size, is_dir: e.isDir, mod_time: toIso(e.modTime), mode: e.mode };
}
