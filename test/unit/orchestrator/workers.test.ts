/**
 * Runs the worker/placement/lease/reconcile suites on SQLite (in memory) and on PostgreSQL (a
 * scratch database made and dropped by this run at STACYVM_TEST_PG_DSN, one schema per test).
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe } from 'vitest';
import { openPostgresStore } from '../../../src/store/postgres.js';
import { hostSupports } from '../../host.js';
import { sqliteMemory } from './harness.js';
import { workerSuites } from './worker-suites.js';

describe('sqlite', () => {
  workerSuites('sqlite', sqliteMemory);
});

const pgDsn = process.env.STACYVM_TEST_PG_DSN;
const pgRuns = hostSupports('orchestrator on postgres', () =>
  pgDsn ? null : 'STACYVM_TEST_PG_DSN is not set (eval "$(scripts/test-services.sh postgres)")',
);

describe.runIf(pgRuns)('postgres', () => {
  const database = `stacyvm_orch_${randomBytes(6).toString('hex')}`;
  let n = 0;
  const admin = async (dsn: string, sql: string): Promise<void> => {
    const client = new pg.Client({ connectionString: dsn });
    await client.connect();
    try {
      await client.query(sql);
    } finally {
      await client.end();
    }
  };
  const databaseDsn = (): string => {
    const url = new URL(pgDsn as string);
    url.pathname = `/${database}`;
    return url.toString();
  };
  beforeAll(() => admin(pgDsn as string, `CREATE DATABASE ${database}`));
  afterAll(() => admin(pgDsn as string, `DROP DATABASE IF EXISTS ${database} WITH (FORCE)`));
  workerSuites('postgres', async () => {
    const schema = `t${++n}`;
    await admin(databaseDsn(), `CREATE SCHEMA ${schema}`);
    const url = new URL(databaseDsn());
    url.searchParams.set('options', `-c search_path=${schema}`);
    const store = openPostgresStore({ dsn: url.toString() });
    await store.migrate();
    return store;
  });
});
