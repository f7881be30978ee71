/**
 * Runs the store contract against SQLite (temp files) and PostgreSQL (a scratch database made
 * and dropped by this run on the server at STACYVM_TEST_PG_DSN, one schema per test).
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { describe } from 'vitest';
import { hostSupports } from '../host.js';
import { storeContract } from './store.contract.js';

describe('store contract: sqlite', () => {
  let dir = '';
  let n = 0;
  storeContract({
    dialect: 'sqlite',
    setup: async () => {
      dir = await mkdtemp(join(tmpdir(), 'stacyvm-store-'));
    },
    teardown: async () => {
      if (dir) await rm(dir, { recursive: true, force: true });
    },
    fresh: () => Promise.resolve({ driver: 'sqlite', path: join(dir, `db-${++n}`, 'stacyvm.db') }),
  });
});

const pgDsn = process.env.STACYVM_TEST_PG_DSN;
const pgRuns = hostSupports('store contract: postgres', () =>
  pgDsn ? null : 'STACYVM_TEST_PG_DSN is not set (eval "$(scripts/test-services.sh postgres)")',
);

describe.runIf(pgRuns)('store contract: postgres', () => {
  const database = `stacyvm_test_${randomBytes(6).toString('hex')}`;
  let n = 0;
  const admin = async <T>(dsn: string, fn: (c: pg.Client) => Promise<T>): Promise<T> => {
    const client = new pg.Client({ connectionString: dsn });
    await client.connect();
    try {
      return await fn(client);
    } finally {
      await client.end();
    }
  };
  const databaseDsn = (): string => {
    const url = new URL(pgDsn!);
    url.pathname = `/${database}`;
    return url.toString();
  };
  storeContract({
    dialect: 'postgres',
    setup: () => admin(pgDsn!, (c) => c.query(`CREATE DATABASE ${database}`)).then(() => undefined),
    teardown: () => admin(pgDsn!, (c) => c.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`)).then(() => undefined),
    fresh: async () => {
      const schema = `t${++n}`;
      await admin(databaseDsn(), (c) => c.query(`CREATE SCHEMA ${schema}`));
      const url = new URL(databaseDsn());
      url.searchParams.set('options', `-c search_path=${schema}`);
      return { driver: 'postgres', dsn: url.toString() };
    },
  });
});
