/**
 * `stacyvm serve`: load config, start the server, and shut down cleanly on SIGTERM/SIGINT.
 * An invalid config lists every problem and exits 2 before anything starts.
 */
import { ConfigError, loadConfig } from '../config/load.js';
import type { Config } from '../config/types.js';
import { startServer } from './server.js';

/** Seconds a shutdown may take before the process exits anyway. */
const SHUTDOWN_DEADLINE_MS = 30_000;

export async function runServe(configFile: string | undefined): Promise<void> {
  let config: Config;
  try {
    config = loadConfig(configFile === undefined ? {} : { file: configFile });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`error: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const server = await startServer(config);
  let signalled = false;
  const shutdown = (signal: NodeJS.Signals) => {
    if (signalled) return;
    signalled = true;
    server.logger.info({ signal }, 'signal received');
    const deadline = setTimeout(() => {
      server.logger.error('shutdown took too long; exiting');
      process.exit(1);
    }, SHUTDOWN_DEADLINE_MS);
    deadline.unref();
    server.close().then(
      () => process.exit(0),
      (err: unknown) => {
        server.logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}
