/**
 * PostgreSQL dialect: a `pg` pool per store, BIGINT parsed to number (epoch ms and counters fit
 * in 53 bits), the store clock read from the server so every API node and worker agrees on
 * lease expiry.
 */
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { KyselyStore, type DbErrorKind, type DialectAdapter } from './kysely-store.js';
import { pendingMigrations, schemaMigrationsDdl } from './migrations.js';
import type { Database } from './schema.js';
import type { Store } from './store.js';

export interface PostgresStoreOptions {
  /** libpq-style URL; `?options=-c search_path=…` selects a schema. */
  dsn: string;
  /** Connections in this store's pool. Default 10. */
  poolSize?: number;
  /** How long to wait for a new connection. Default 10 s. */
  connectTimeoutMs?: number;
}

const INT8_OID = 20;
/** Key of the transaction-scoped advisory lock that serialises migrations ("stacyvm" in ASCII). */
const MIGRATION_LOCK_KEY = 0x737461637976;

/** Server-side clock in epoch ms; clock_timestamp() moves within a transaction, unlike now(). */
const CLOCK_SQL = sql<number>`(extract(epoch from clock_timestamp()) * 1000)::bigint`;

const types = {
  getTypeParser(oid: number, format?: string) {
    if (oid === INT8_OID) return (value: string) => Number(value);
    return pg.types.getTypeParser(oid, format as 'text');
  },
};

/** Opens a PostgreSQL store (connections are made lazily); call `migrate()` next. */
export function openPostgresStore(options: PostgresStoreOptions): Store {
  const pool = new pg.Pool({
    connectionString: options.dsn,
    max: options.poolSize ?? 10,
    // Without a bound, a query waits forever for a server that does not answer.
    connectionTimeoutMillis: options.connectTimeoutMs ?? 10_000,
    types,
  });
  // An idle client losing its connection (server restart) must not crash the process; the
  // pool discards it and the next query reconnects.
  pool.on('error', () => {});
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  return new KyselyStore(new PostgresAdapter(db));
}

class PostgresAdapter implements DialectAdapter {
  readonly dialect = 'postgres' as const;

  constructor(readonly db: Kysely<Database>) {}

  nowExpression() {
    return CLOCK_SQL;
  }

  async now(): Promise<number> {
    const result = await sql<{ now: number }>`SELECT ${CLOCK_SQL} AS now`.execute(this.db);
    return Number(result.rows[0]?.now);
  }

  /** DDL is transactional on PostgreSQL; the advisory lock makes concurrent migrators queue. */
  async migrate(): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      await sql`SELECT pg_advisory_xact_lock(${sql.lit(MIGRATION_LOCK_KEY)})`.execute(trx);
      await sql.raw(schemaMigrationsDdl('postgres')).execute(trx);
      const applied = await sql<{ version: number }>`SELECT version FROM schema_migrations`.execute(trx);
      for (const migration of pendingMigrations(applied.rows.map((r) => r.version))) {
        for (const statement of migration.statements('postgres')) await sql.raw(statement).execute(trx);
        await sql`INSERT INTO schema_migrations (version, name, applied_at) VALUES (${migration.version}, ${migration.name}, ${CLOCK_SQL})`.execute(trx);
      }
    });
  }

  classifyError(err: unknown): DbErrorKind | undefined {
    const code = (err as { code?: unknown } | null)?.code;
    if (code === '23505') return 'unique_violation';
    if (code === '23503') return 'foreign_key_violation';
    return undefined;
  }

  close(): Promise<void> {
    return this.db.destroy();
  }
}
