/**
 * The composition root: the one place that builds concrete things — store, providers,
 * orchestrator, local worker, HTTP app — wires them together, and tears them down in order.
 */
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { pino, type Logger } from 'pino';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../api/app.js';
import type { WorkerAuth } from '../api/auth.js';
import { redactConfig } from '../config/load.js';
import type { Config } from '../config/types.js';
import { systemClock } from '../core/clock.js';
import { VERSION } from '../core/version.js';
import { createOrchestrator } from '../orchestrator/index.js';
import type { SandboxService } from '../orchestrator/service.js';
import { openStore } from '../store/index.js';
import { LocalWorker } from '../worker/local-worker.js';
import { rpcClientTls, rpcCredentialFor } from '../worker/outbound.js';
import { RemoteWorkerPool } from '../worker/remote-pool.js';
import { WorkerAuthenticator } from '../workerproto/tokens.js';
import { buildProviders } from './providers.js';

/** How long in-flight HTTP requests may take to finish once shutdown begins. */
const HTTP_DRAIN_MS = 10_000;

export interface RunningServer {
  /** Base URL the API listens on, e.g. http://127.0.0.1:7423. */
  url: string;
  app: FastifyInstance;
  /** The orchestrator behind the API, for embedding and benchmarks. */
  service: SandboxService;
  logger: Logger;
  /** Stops accepting requests, stops background work, marks the local worker offline, closes the store. Idempotent. */
  close(): Promise<void>;
}

/** Builds the process logger from config (JSON by default, pretty for humans). */
export function createLogger(config: Config): Logger {
  const level = config.logging.level;
  if (config.logging.format === 'pretty') {
    return pino({ level, transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:standard' } } });
  }
  return pino({ level, base: { service: 'stacyvm' } });
}

/**
 * Opens the store, builds providers, reconciles, registers the local worker and starts
 * listening on config.server. Anything that fails on the way is undone before rethrowing.
 */
export async function startServer(config: Config, options: { logger?: Logger } = {}): Promise<RunningServer> {
  const logger = options.logger ?? createLogger(config);
  const undo: { name: string; run: () => Promise<void> }[] = [];
  const unwind = async () => {
    for (const step of undo.reverse()) {
      try {
        logger.debug({ step: step.name }, 'shutdown step');
        await step.run();
      } catch (err) {
        logger.error({ err, step: step.name }, 'shutdown step failed');
      }
    }
    undo.length = 0;
  };

  try {
    await mkdir(config.dataDir, { recursive: true });
    if (config.database.driver === 'sqlite' && config.database.path !== ':memory:') {
      await mkdir(dirname(config.database.path), { recursive: true });
    }
    const store = openStore({ driver: config.database.driver, path: config.database.path, dsn: config.database.dsn });
    undo.push({ name: 'store', run: () => store.close() });
    await store.migrate();

    const registry = await buildProviders(config, logger);
    undo.push({ name: 'providers', run: () => registry.closeAll() });

    const rpcTls = rpcClientTls(config);
    const remoteWorkers = new RemoteWorkerPool({
      store,
      leaseTtlMs: config.worker.leaseTtlMs,
      credentialFor: (workerId) => rpcCredentialFor(config, workerId),
      ...(rpcTls !== undefined ? { tls: rpcTls } : {}),
    });
    undo.push({ name: 'remote_workers', run: () => remoteWorkers.close() });

    const orchestrator = createOrchestrator({
      config,
      store,
      remoteWorkers,
      providers: registry.list(),
      defaultProvider: registry.defaultName,
      logger: logger.child({ component: 'orchestrator' }),
      version: VERSION,
      redactConfig: (c) => redactConfig(c) as unknown as Record<string, unknown>,
    });

    const localWorker = new LocalWorker({
      store,
      id: config.worker.id,
      providers: registry.names(),
      capacity: {
        maxSandboxes: config.worker.maxSandboxes > 0 ? config.worker.maxSandboxes : config.defaults.maxSandboxes,
        ...(config.defaults.maxSandboxesPerOwner > 0 ? { maxSandboxesPerOwner: config.defaults.maxSandboxesPerOwner } : {}),
        ...(config.server.previewDomain !== '' ? { previewDomain: config.server.previewDomain } : {}),
      },
      heartbeatIntervalMs: config.worker.heartbeatIntervalMs,
      onError: (err) => logger.warn({ err }, 'local worker heartbeat failed'),
    });
    // Registered before reconcile so placement and adoption see a fresh local worker.
    await localWorker.start();
    undo.push({ name: 'local_worker', run: () => localWorker.stop() });

    await orchestrator.start();
    undo.push({ name: 'orchestrator', run: () => orchestrator.stop() });

    const authenticator = new WorkerAuthenticator(config.auth, systemClock);
    const workerAuth: WorkerAuth = {
      async authenticate(workerId, token) {
        const claims = authenticator.authenticate(workerId, token, 'worker:control-plane');
        return { workerId: claims.worker_id, scopes: [...claims.scopes] };
      },
    };

    const app = await buildApp({ service: orchestrator, config, logger: logger.child({ component: 'api' }), workerAuth });
    undo.push({
      name: 'http',
      run: async () => {
        // In-flight requests get a grace period; a client that never hangs up cannot stall shutdown.
        const timer = setTimeout(() => app.server.closeAllConnections(), HTTP_DRAIN_MS);
        try {
          await app.close();
        } finally {
          clearTimeout(timer);
        }
      },
    });
    const address = await app.listen({ host: config.server.host, port: config.server.port });
    const url = address.replace('[::1]', '127.0.0.1');
    logger.info({ url, version: VERSION, providers: registry.names(), default_provider: registry.defaultName, worker_id: config.worker.id }, `stacyvm listening on ${url}`);

    let closing: Promise<void> | undefined;
    return {
      url,
      app,
      service: orchestrator,
      logger,
      close: () => {
        closing ??= (async () => {
          logger.info('shutting down');
          await unwind();
          logger.info('stopped');
        })();
        return closing;
      },
    };
  } catch (err) {
    await unwind();
    throw err;
  }
}
