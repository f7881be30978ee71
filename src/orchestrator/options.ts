/**
 * How the orchestrator is configured when it is built.
 */
import type { Clock } from '../core/clock.js';
import type { Config } from '../config/types.js';
import type { Provider } from '../providers/provider.js';
import type { Store } from '../store/store.js';
import type { LeaseRecord, WorkerRecord } from '../core/types.js';

/** The subset of a pino logger the orchestrator uses. */
export interface OrchestratorLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/**
 * Reaches providers on remote workers. `provider` throws `remote_worker_rpc_unavailable` when
 * the worker has no rpc_url or cannot be reached.
 */
export interface RemoteWorkers {
  provider(worker: WorkerRecord, provider: string): Promise<Provider>;
  /** Sends `worker.shutdown`: the worker refuses new spawns and reports `draining`. */
  drain(worker: WorkerRecord): Promise<void>;
  /**
   * Sends `worker.renew_lease` with `lease` (holder = the worker), so the worker's fence learns
   * the generation the store now holds and refuses older ones. Throws what the worker or the
   * transport reported (`lease_conflict` when the worker has already seen a newer generation).
   */
  pushLease(worker: WorkerRecord, lease: LeaseRecord): Promise<void>;
  /**
   * Fails every call in flight to the worker now with `remote_worker_rpc_unavailable` carrying
   * `reason`; later calls connect afresh. No-op when nothing is connected to it.
   */
  abandon(workerId: string, reason: string): void;
}

export interface OrchestratorOptions {
  config: Config;
  store: Store;
  /** The providers this process runs, already constructed (the registry's enabled set). */
  providers: ReadonlyMap<string, Provider> | readonly Provider[];
  /**
   * The provider used when a request names none. Defaults to `config.providers.default` unless
   * that is `auto` (which only the provider registry can resolve), then the first provider.
   */
  defaultProvider?: string;
  clock?: Clock;
  logger?: OrchestratorLogger;
  version: string;
  /** How sandboxes on other workers are reached; without it remote placement is refused with 503. */
  remoteWorkers?: RemoteWorkers;
  /** Overrides how diagnostics show the configuration; defaults to the config module's redactConfig. */
  redactConfig?: (config: Config) => Record<string, unknown>;
}
