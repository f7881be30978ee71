/**
 * SQLite dialect: one better-sqlite3 connection per store, WAL journal, busy timeout, foreign
 * keys. The store clock is the host clock — every process sharing the file runs on this host.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { Kysely, SqliteDialect, sql, type SqliteDatabase } from 'kysely';
import { KyselyStore, type DbErrorKind, type DialectAdapter } from './kysely-store.js';
import { pendingMigrations, schemaMigrationsDdl } from './migrations.js';
import type { Database } from './schema.js';
import type { Store } from './store.js';

export interface SqliteStoreOptions {
  /** Database file, or ':memory:' for a private in-memory database. */
  path: string;
  /** How long a writer waits for another connection's write lock. Default 5000 ms. */
  busyTimeoutMs?: number;
}

/** Opens (creating the file and its directory if needed) a SQLite store; call `migrate()` next. */
export function openSqliteStore(options: SqliteStoreOptions): Store {
  if (options.path !== ':memory:' && options.path !== '') mkdirSync(dirname(options.path), { recursive: true });
  const raw = new BetterSqlite3(options.path);
  raw.pragma(`busy_timeout = ${Math.trunc(options.busyTimeoutMs ?? 5000)}`);
  raw.pragma('journal_mode = WAL');
  // NORMAL is durable across process crashes in WAL mode; only an OS crash can lose the last commits.
  raw.pragma('synchronous = NORMAL');
  raw.pragma('foreign_keys = ON');
  const db = new Kysely<Database>({ dialect: new SqliteDialect({ database: reusingStatements(raw) }) });
  return new KyselyStore(new SqliteAdapter(raw, db));
}

/** How many distinct SQL texts keep their prepared statement; the store issues a few dozen. */
const STATEMENT_CACHE_SIZE = 256;

/**
 * The connection as Kysely sees it, with prepared statements reused by SQL text (least recently
 * used evicted). Kysely prepares every query afresh, and preparing costs about as much as
 * running the small statements this store issues. A statement still being iterated is busy and
 * is never handed out twice: that caller gets a fresh one.
 */
function reusingStatements(raw: BetterSqlite3.Database): SqliteDatabase {
  const cache = new Map<string, BetterSqlite3.Statement>();
  return {
    close: () => raw.close(),
    prepare(text: string) {
      const cached = cache.get(text);
      if (cached !== undefined && !cached.busy) {
        cache.delete(text);
        cache.set(text, cached);
        return cached;
      }
      const stmt = raw.prepare(text);
      if (cached === undefined) {
        cache.set(text, stmt);
        if (cache.size > STATEMENT_CACHE_SIZE) cache.delete(cache.keys().next().value as string);
      }
      return stmt;
    },
  };
}

class SqliteAdapter implements DialectAdapter {
  readonly dialect = 'sqlite' as const;

  constructor(
    private readonly raw: BetterSqlite3.Database,
    readonly db: Kysely<Database>,
  ) {}

  nowExpression() {
    // A literal, not a bound parameter: better-sqlite3 binds JS numbers as REAL.
    return sql<number>`${sql.lit(Date.now())}`;
  }

  now(): Promise<number> {
    return Promise.resolve(Date.now());
  }

  /**
   * Runs synchronously on the raw connection inside BEGIN IMMEDIATE: the write lock is taken
   * before the applied versions are read, so a second process waits (busy timeout) and then
   * sees everything already applied. Being synchronous, it never yields to the event loop while
   * holding the lock, which keeps several stores in one process from blocking each other.
   */
  migrate(): Promise<void> {
    const run = this.raw.transaction(() => {
      this.raw.exec(schemaMigrationsDdl('sqlite'));
      const applied = this.raw.prepare('SELECT version FROM schema_migrations').pluck().all() as number[];
      for (const migration of pendingMigrations(applied)) {
        for (const statement of migration.statements('sqlite')) this.raw.exec(statement);
        this.raw
          .prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)')
          .run(migration.version, migration.name, Date.now());
      }
    });
    try {
      run.immediate();
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    }
  }

  classifyError(err: unknown): DbErrorKind | undefined {
    const code = (err as { code?: unknown } | null)?.code;
    if (code === 'SQLITE_CONSTRAINT_PRIMARYKEY' || code === 'SQLITE_CONSTRAINT_UNIQUE') return 'unique_violation';
    if (code === 'SQLITE_CONSTRAINT_FOREIGNKEY') return 'foreign_key_violation';
    return undefined;
  }

  close(): Promise<void> {
    return this.db.destroy();
  }
}
