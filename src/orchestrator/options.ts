/**
 * How the orchestrator is configured when it is built.
 */
import type { Clock } from '../core/clock.js';
import type { Config } from '../config/types.js';
import type { Provider } from '../providers/provider.js';
import type { Store } from '../store/store.js';

/** The subset of a pino logger the orchestrator uses. */
export interface OrchestratorLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
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
  /** Overrides how diagnostics show the configuration; defaults to the config module's redactConfig. */
  redactConfig?: (config: Config) => Record<string, unknown>;
}
