/**
 * The `stacyvm worker` daemon: runs this host's providers behind the worker RPC and keeps the
 * control plane informed through `POST {controlPlane}/api/v1/worker/{id}/heartbeat`
 * (credential audience `worker:control-plane`).
 *
 * Drain: `worker.shutdown` over RPC or `drain()` (the CLI calls it on SIGTERM) refuses new
 * spawns while existing sandboxes keep working, and a heartbeat reporting `draining` goes out
 * at once rather than at the next tick. `stop()` sends a last `offline` heartbeat and closes the
 * RPC listener; runtimes keep running so a restarted worker picks them up again.
 *
 * Leases: with a data dir the fence's floors are journalled there, so a restarted worker still
 * refuses generations older than ones it accepted before. While a spawn or destroy runs, the
 * daemon renews its lease through the control plane and raises its fence with each renewal
 * (LeaseKeeper).
 */
import { Pool, type Dispatcher } from 'undici';
import { pino, type Logger } from 'pino';
import { StacyError } from '../core/errors.js';
import { systemClock, type Clock } from '../core/clock.js';
import { newId } from '../core/ids.js';
import type { WorkerStatus } from '../core/types.js';
import type { Provider } from '../providers/provider.js';
import { formatDuration } from '../core/duration.js';
import { LeaseFence, WorkerAuthenticator, fromWireError, isErrorCode, type WireLease, type WorkerAuthSettings } from '../workerproto/index.js';
import { CredentialSource, type WorkerCredential } from './credentials.js';
import { FileFenceJournal, fenceJournalPath } from './fence-journal.js';
import { LeaseKeeper, type KeeperTimers } from './lease-keeper.js';
import { WorkerNode, type WorkerCapacityOptions } from './node.js';
import { WorkerRpcServer, type WorkerRpcTlsOptions } from './rpc-server.js';

export interface ControlPlaneTlsOptions {
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
}

export interface WorkerDaemonOptions {
  workerId: string;
  /** Base URL of the control plane, e.g. `http://10.0.0.1:7423`. */
  controlPlaneUrl: string;
  /** Credential this worker presents to the control plane. */
  credential: WorkerCredential;
  /** How inbound RPC credentials are verified (the control plane's tokens for this worker). */
  rpcAuth: WorkerAuthSettings | WorkerAuthenticator;
  providers: readonly Provider[];
  /** Where the RPC listener binds; omitted with `once`. */
  listen?: { host: string; port: number };
  /** The URL advertised as `rpc_url`; defaults to the bound listener's URL. */
  advertiseUrl?: string;
  rpcTls?: WorkerRpcTlsOptions;
  controlPlaneTls?: ControlPlaneTlsOptions;
  heartbeatIntervalMs: number;
  capacity?: Omit<WorkerCapacityOptions, 'rpcUrl'>;
  hostname?: string;
  logger?: Logger;
  clock?: Clock;
  /** Bound on one heartbeat request. Default 10 s. */
  heartbeatTimeoutMs?: number;
  /** Where the lease fence is journalled (`<dataDir>/worker-<id>.lease-fence.json`); in memory only when omitted. */
  dataDir?: string;
  /** Timers of the lease keeper (tests drive them by hand). */
  keeperTimers?: KeeperTimers;
}

export class WorkerDaemon {
  readonly node: WorkerNode;
  /** The fence every lease-required RPC passes; renewals of long operations raise it too. */
  readonly fence: LeaseFence;
  private readonly log: Logger;
  private readonly credentials: CredentialSource;
  private readonly controlPlane: Pool;
  private readonly heartbeatPath: string;
  private readonly workerPath: string;
  private server: WorkerRpcServer | undefined;
  private timer: NodeJS.Timeout | undefined;
  private inflight: Promise<void> | undefined;
  private stopped = false;
  private readonly clock: Clock;

  constructor(private readonly options: WorkerDaemonOptions) {
    this.clock = options.clock ?? systemClock;
    this.log = (options.logger ?? pino({ level: 'silent' })).child({ component: 'worker-daemon', worker_id: options.workerId });
    this.node = new WorkerNode({
      workerId: options.workerId,
      providers: options.providers,
      ...(options.hostname !== undefined ? { hostname: options.hostname } : {}),
      capacity: { ...options.capacity, ...(options.advertiseUrl !== undefined ? { rpcUrl: options.advertiseUrl } : {}) },
    });
    this.credentials = new CredentialSource(options.workerId, options.credential, this.clock);
    let base: URL;
    try {
      base = new URL(options.controlPlaneUrl);
    } catch {
      throw new StacyError('bad_request', `control-plane URL ${JSON.stringify(options.controlPlaneUrl)} is not a URL`);
    }
    this.workerPath = `${base.pathname.replace(/\/+$/, '')}/api/v1/worker/${encodeURIComponent(options.workerId)}`;
    this.heartbeatPath = `${this.workerPath}/heartbeat`;
    const tls = options.controlPlaneTls;
    this.controlPlane = new Pool(base.origin, {
      connections: 2,
      connect: {
        timeout: 5_000,
        ...(tls?.ca !== undefined ? { ca: tls.ca } : {}),
        ...(tls?.cert !== undefined ? { cert: tls.cert } : {}),
        ...(tls?.key !== undefined ? { key: tls.key } : {}),
      },
    });
    this.fence = new LeaseFence(options.workerId, this.clock, {
      ...(options.dataDir !== undefined ? { journal: new FileFenceJournal(fenceJournalPath(options.dataDir, options.workerId), options.workerId) } : {}),
      isLive: (id) => this.node.hasSandbox(id),
    });
    this.node.setLeaseKeeper(
      new LeaseKeeper({
        fence: this.fence,
        renew: (resourceId, ttlMs) => this.renewLease(resourceId, ttlMs),
        clock: this.clock,
        logger: this.log,
        ...(options.keeperTimers !== undefined ? { timers: options.keeperTimers } : {}),
      }),
    );
    // A drain must reach the control plane now: it stops placing sandboxes here only once it knows.
    this.node.onDrain(() => {
      this.log.info('draining: refusing new sandboxes, existing ones keep running');
      void this.heartbeatSoon();
    });
  }

  /** The RPC listener's URL once started. */
  get rpcUrl(): string | undefined {
    return this.server?.url;
  }

  /** Sends one heartbeat and returns; throws what the control plane (or the network) reported. */
  async heartbeatOnce(status: WorkerStatus = this.node.status): Promise<void> {
    const { worker_id: _id, ...doc } = this.node.heartbeat();
    await this.post(this.heartbeatPath, { ...doc, status }, 'heartbeat');
  }

  /**
   * POSTs `body` to a worker route of the control plane with this worker's credential and returns
   * the reply text; a refusal becomes the control plane's StacyError, an unreachable control
   * plane `unavailable`. `what` names the call in errors.
   */
  private async post(path: string, body: unknown, what: string): Promise<string> {
    const timeout = this.options.heartbeatTimeoutMs ?? 10_000;
    let res: Dispatcher.ResponseData;
    try {
      res = await this.controlPlane.request({
        path,
        method: 'POST',
        headers: { ...(await this.credentials.headers('worker:control-plane')), 'content-type': 'application/json', 'x-request-id': newId('req') },
        body: JSON.stringify(body),
        headersTimeout: timeout,
        bodyTimeout: timeout,
      });
    } catch (err) {
      throw new StacyError('unavailable', `control plane ${this.options.controlPlaneUrl} is unreachable: ${(err as { code?: string }).code ?? String(err)}`, { cause: err });
    }
    const text = await res.body.text().catch(() => '');
    if (res.statusCode < 200 || res.statusCode >= 300) throw errorFromControlPlane(res.statusCode, text, what);
    return text;
  }

  /**
   * Renews this worker's lease on `resourceId` through the control plane
   * (`POST …/worker/{id}/leases/{resource}/renew`) and returns it in wire form. The control
   * plane's refusal comes back as its StacyError (`lease_conflict` when this worker no longer
   * holds an unexpired lease); an unreachable control plane is `unavailable`.
   */
  async renewLease(resourceId: string, ttlMs: number): Promise<WireLease> {
    const text = await this.post(`${this.workerPath}/leases/${encodeURIComponent(resourceId)}/renew`, { ttl: formatDuration(Math.max(1, Math.round(ttlMs))) }, 'lease renewal');
    const lease = (JSON.parse(text) as { lease?: Partial<WireLease> }).lease;
    if (lease === undefined || typeof lease.resource_id !== 'string' || typeof lease.holder_id !== 'string' || typeof lease.generation !== 'number' || typeof lease.expires_at !== 'string') {
      throw new StacyError('internal', 'control plane answered the lease renewal without a lease');
    }
    return { resource_id: lease.resource_id, holder_id: lease.holder_id, generation: lease.generation, expires_at: lease.expires_at };
  }

  /**
   * Loads runtimes the providers already run, starts the RPC listener, sends the first heartbeat
   * (failing start-up if the control plane refuses it) and then heartbeats every interval.
   */
  async start(): Promise<void> {
    await this.node.loadInventory();
    // Floors of sandboxes gone while the worker was down, whose leases expired long ago.
    const dropped = this.fence.prune();
    this.log.info({ resources: this.fence.size, dropped }, 'lease fence loaded');
    if (this.options.listen !== undefined) {
      this.server = new WorkerRpcServer({
        node: this.node,
        fence: this.fence,
        authenticator: this.options.rpcAuth instanceof WorkerAuthenticator ? this.options.rpcAuth : new WorkerAuthenticator(this.options.rpcAuth, this.clock),
        clock: this.clock,
        logger: this.log,
        ...(this.options.rpcTls !== undefined ? { tls: this.options.rpcTls } : {}),
      });
      const url = await this.server.listen(this.options.listen.port, this.options.listen.host);
      if (this.options.advertiseUrl === undefined) this.node.setRpcUrl(url);
      this.log.info({ url }, 'worker RPC listening');
    }
    try {
      await this.heartbeatOnce();
    } catch (err) {
      // A worker the control plane does not accept must not keep serving RPC.
      this.stopped = true;
      await this.server?.close();
      await this.controlPlane.close();
      throw err;
    }
    this.log.info({ control_plane: this.options.controlPlaneUrl }, 'registered with the control plane');
    this.schedule();
  }

  /** Enters draining (idempotent) and reports it. */
  drain(): void {
    this.node.drain();
  }

  /** Stops heartbeats, reports `offline` (best effort), closes the RPC listener and the pool. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    await this.inflight?.catch(() => undefined);
    await this.heartbeatOnce('offline').catch((err: unknown) => this.log.warn({ err: String(err) }, 'could not report offline'));
    if (this.server !== undefined) {
      const closing = this.server.close();
      // Streams still open would keep close() waiting for as long as their commands run.
      setTimeout(() => this.server?.closeAllConnections(), 5_000).unref();
      await closing;
    }
    await this.controlPlane.close();
  }

  /** Releases the control-plane connections without reporting anything (after `heartbeatOnce`). */
  async close(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    await this.server?.close();
    await this.controlPlane.close();
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.heartbeatSoon().finally(() => this.schedule());
    }, this.options.heartbeatIntervalMs);
    this.timer.unref();
  }

  /** One heartbeat at a time; a failure is logged and the next tick tries again. */
  private heartbeatSoon(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    const run = (this.inflight ?? Promise.resolve()).then(() =>
      this.heartbeatOnce().catch((err: unknown) => {
        this.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'heartbeat failed');
      }),
    );
    this.inflight = run;
    return run;
  }
}

/** The control plane's error body (`{code, message}` or `{error:{code, message}}`) as a StacyError. */
function errorFromControlPlane(status: number, text: string, what: string): StacyError {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  const p = parsed as { code?: unknown; message?: unknown; error?: { code?: unknown; message?: unknown } } | undefined;
  const e = p?.error ?? p;
  if (e !== undefined && e !== null && isErrorCode(e.code) && typeof e.message === 'string') return fromWireError({ code: e.code, message: `control plane: ${e.message}` });
  return new StacyError(status >= 500 ? 'unavailable' : 'internal', `control plane answered ${status} to the ${what}`);
}
