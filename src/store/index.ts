/** Builds the configured store. Only the composition root and the CLI should call this. */
import { badRequest } from '../core/errors.js';
import { openPostgresStore } from './postgres.js';
import { openSqliteStore } from './sqlite.js';
import type { Store } from './store.js';

export interface OpenStoreOptions {
  driver: 'sqlite' | 'postgres';
  /** SQLite database file (or ':memory:'). */
  path?: string;
  /** PostgreSQL connection URL. */
  dsn?: string;
  /** PostgreSQL pool size. */
  poolSize?: number;
}

/** Opens a store for `driver`; the caller runs `migrate()` before use and `close()` at the end. */
export function openStore(options: OpenStoreOptions): Store {
  switch (options.driver) {
    case 'sqlite':
      if (!options.path) throw badRequest('database.path is required for the sqlite driver');
      return openSqliteStore({ path: options.path });
    case 'postgres':
      if (!options.dsn) throw badRequest('database.dsn is required for the postgres driver');
      return openPostgresStore(options.poolSize === undefined ? { dsn: options.dsn } : { dsn: options.dsn, poolSize: options.poolSize });
    default:
      throw badRequest(`unknown database driver ${JSON.stringify(options.driver as string)}`);
  }
}

export type { Store } from './store.js';
